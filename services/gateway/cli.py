"""``qustream gateway``: run the HTTP API and manage its API keys.

    qustream gateway run --port 8080 --genesis G [--no-keys] [--no-users]
                         [--retain-blocks N] [--block-store/--no-block-store]
                         [--ssl-certfile C --ssl-keyfile K [--ssl-ca-certs CA]]
    qustream gateway api-key create --scopes read,keys,users   # prints the key once
    qustream gateway api-key list | revoke KEY_ID
    qustream gateway delivery-key                              # the public key clients pin

Keys are stored hashed in ``<state_dir>/gateway/api-keys.json`` (``--keys-file`` or
``QUSTREAM_GATEWAY_KEYS_FILE`` to change): the same file for ``run`` and ``api-key``, and for the
demo's gateway. With ``--ssl-ca-certs`` clients must present a certificate signed by that CA
(mTLS). The server listens on loopback unless ``--host`` says otherwise (``--host 0.0.0.0`` for
every interface, as the Helm chart does inside its pod). Key deliveries are signed with
``<state_dir>/gateway/delivery-key.json`` (``--delivery-key``; made on first use, ML-DSA-65);
give every replica the same file, or pin each replica's key.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(help="The HTTP gateway (API, key delivery, user records).",
                  no_args_is_help=True)
keys_app = typer.Typer(help="API keys (stored hashed).", no_args_is_help=True)
app.add_typer(keys_app, name="api-key")

KEYS_FILE = typer.Option(None, "--keys-file", envvar="QUSTREAM_GATEWAY_KEYS_FILE",
                         help="API key store (default <state_dir>/gateway/api-keys.json).")


def default_keys_file(settings: Any) -> Path:
    """The API key store every gateway command (and the demo) uses by default."""
    return Path(settings.state_dir) / "gateway" / "api-keys.json"


DELIVERY_KEY = typer.Option(None, "--delivery-key", envvar="QUSTREAM_GATEWAY_DELIVERY_KEY",
                            help="Key deliveries are signed with (default "
                                 "<state_dir>/gateway/delivery-key.json; made on first use).")


def _delivery_key(option: Path | None) -> Path:
    if option is not None:
        return option
    from streams.settings import load_settings

    return load_settings().state_dir / "gateway" / "delivery-key.json"


def _keys_file(option: Path | None) -> Path:
    if option is not None:
        return option
    from streams.settings import load_settings

    return default_keys_file(load_settings())


@app.command()
def run(
    port: int = typer.Option(8080, "--port"),
    host: str = typer.Option("127.0.0.1", "--host",
                             help="Address to listen on: loopback by default; 0.0.0.0 for "
                                  "every interface (keep /metrics and /healthz internal)."),
    genesis: Path | None = typer.Option(None, "--genesis", envvar="QUSTREAM_GENESIS",
                                        help="Genesis file (default: the demo's)."),
    keys_file: Path | None = KEYS_FILE,
    serve_keys: bool = typer.Option(True, "--keys/--no-keys", help="Serve POST /v1/keys."),
    serve_users: bool = typer.Option(True, "--users/--no-users", help="Serve user records."),
    retain: int = typer.Option(5000, "--retain-blocks", help="Blocks kept in memory."),
    block_store: bool | None = typer.Option(
        None, "--block-store/--no-block-store",
        help="Serve blocks older than the window from the block store in Cassandra (`qustream "
             "blocks project` fills it), chain.blocks for what it lacks. Default: on when "
             "the gateway uses Cassandra anyway (user records or key payments)."),
    ssl_certfile: Path | None = typer.Option(None, "--ssl-certfile"),
    ssl_keyfile: Path | None = typer.Option(None, "--ssl-keyfile"),
    ssl_ca_certs: Path | None = typer.Option(None, "--ssl-ca-certs",
                                             help="Require client certificates (mTLS)."),
    key_refresh_s: float = typer.Option(1.0, "--api-key-refresh-s", min=0.0,
                                        help="Re-read the API key file at most this often: a "
                                             "revoked key stops working within this delay."),
    delivery_key: Path | None = DELIVERY_KEY,
    inclusion_timeout_s: float = typer.Option(
        20.0, "--inclusion-timeout-s", min=0.0,
        help="How long a key request waits for its payment's block before 503 "
             "payment-pending (the client resends it)."),
    public: bool = typer.Option(True, "--public/--no-public",
                                help="Serve beacon and chain reads without an API key."),
    public_rps: float = typer.Option(20.0, "--public-rps", min=0.0,
                                     help="Keyless reads per second per client address."),
    public_burst: int = typer.Option(40, "--public-burst", min=1),
    public_streams: int = typer.Option(2, "--public-streams", min=1,
                                       help="Keyless event streams per client address."),
    block_interval_ms: int = typer.Option(
        1000, "--block-interval-ms", min=1,
        help="The chain's nominal block interval (expected times and health, until recent "
             "blocks show the real one)."),
    heartbeat_s: float = typer.Option(15.0, "--heartbeat-s", min=0.05,
                                      help="Heartbeat events on idle event streams."),
) -> None:
    """Serve the API with one worker (scale with replicas, not workers)."""
    import uvicorn

    from services.gateway.api import build_gateway, create_app
    from services.gateway.public import PublicReads
    from services.ledger.genesis_cli import genesis_path
    from streams.settings import load_settings
    from streams.telemetry import setup_telemetry

    settings = load_settings()
    setup_telemetry("gateway")
    gateway = build_gateway(settings, genesis_path(genesis), _keys_file(keys_file),
                            keys=serve_keys, users=serve_users, retain=retain,
                            key_refresh_s=key_refresh_s,
                            delivery_key=_delivery_key(delivery_key),
                            inclusion_timeout_s=inclusion_timeout_s,
                            block_interval_ms=block_interval_ms,
                            block_store=(serve_keys or serve_users) if block_store is None
                            else block_store)
    gateway.public = PublicReads(public, public_rps, public_burst, public_streams)
    gateway.heartbeat_s = heartbeat_s
    typer.echo(f"QuStream gateway on http://{host}:{port} (chain {gateway.view.chain_id})")
    uvicorn.run(create_app(gateway), host=host, port=port, log_level="warning",
                access_log=False, ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
                ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
                ssl_ca_certs=str(ssl_ca_certs) if ssl_ca_certs else None,
                ssl_cert_reqs=ssl.CERT_REQUIRED if ssl_ca_certs else ssl.CERT_NONE)


@app.command("delivery-key")
def delivery_key_command(delivery_key: Path | None = DELIVERY_KEY) -> None:
    """Print the public key key deliveries are signed with (what SDK clients pin as
    gateway_keys); makes the key if there is none yet."""
    from services.gateway.api import load_delivery_key

    typer.echo(load_delivery_key(_delivery_key(delivery_key)).public_key.to_text())


@keys_app.command("create")
def create(
    scopes: str = typer.Option("read", "--scopes", help="Comma-separated: read,keys,users."),
    label: str = typer.Option("", "--label"),
    rate: float = typer.Option(50.0, "--rate", help="Requests per second."),
    burst: int = typer.Option(100, "--burst"),
    key_bytes_per_day: int = typer.Option(1_048_576, "--key-bytes-per-day"),
    max_streams: int = typer.Option(4, "--max-streams", min=1,
                                    help="Event streams (SSE) the key may hold open at once."),
    keys_file: Path | None = KEYS_FILE,
) -> None:
    """Create a key and print it (only its hash is stored)."""
    from services.gateway.auth import ApiKeyError, ApiKeyStore

    try:
        key = ApiKeyStore(_keys_file(keys_file)).create(
            tuple(s.strip() for s in scopes.split(",") if s.strip()), label=label,
            rate_per_s=rate, burst=burst, key_bytes_per_day=key_bytes_per_day,
            max_streams=max_streams)
    except ApiKeyError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scopes") from exc
    typer.echo(key)


@keys_app.command("list")
def list_keys(keys_file: Path | None = KEYS_FILE) -> None:
    """Key ids, scopes and limits (never the keys)."""
    from services.gateway.auth import ApiKeyStore

    for record in ApiKeyStore(_keys_file(keys_file)).records():
        typer.echo(json.dumps({"key_id": record.key_id, "scopes": list(record.scopes),
                               "rate_per_s": record.rate_per_s, "burst": record.burst,
                               "max_streams": record.max_streams, "label": record.label}))


@keys_app.command("revoke")
def revoke(key_id: str, keys_file: Path | None = KEYS_FILE) -> None:
    """Revoke a key: running gateways refuse it within a second (their refresh interval),
    open event streams included."""
    from services.gateway.auth import ApiKeyStore

    if not ApiKeyStore(_keys_file(keys_file)).revoke(key_id):
        raise typer.BadParameter(f"no key {key_id}")
    typer.echo(f"revoked {key_id}")
