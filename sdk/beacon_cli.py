"""``qustream beacon``: verified pulses from gateways, by height, by time, in ranges, in the future.

Every pulse printed was verified here (``sdk.beacon``): its header's certificate against the
validator set this command trusts (the genesis set by default, or a light client's saved
checkpoint), its randomness re-derived from the previous pulse and its entropy references, and
the per-source SP 800-90B health of those references (printed under each pulse). No
API key is needed (beacon reads are public); ``--url`` may be given several times (failover).
Times are milliseconds since the epoch or ISO 8601 (``2026-11-29T10:00:00Z``).

Exit status: 0 ok; 1 the pulse does not exist (not yet: the expected time is printed; or before
genesis); 2 the command could not run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console

from protocol.pulse_index import InvalidTimeError, parse_time_ms
from sdk.beacon import BeaconClient, Pulse
from sdk.errors import BeforeGenesisError, PulseNotYetError
from sdk.subscriber import TrustedCheckpoint

app = typer.Typer(help="Verified beacon pulses from gateways: by height, by time, ranges, "
                       "future pulses.", no_args_is_help=True)

URLS = typer.Option(["http://127.0.0.1:8080"], "--url", envvar="QUSTREAM_GATEWAY_URL",
                    help="Gateway base URL; repeat for failover.")
API_KEY = typer.Option(None, "--api-key", envvar="QUSTREAM_API_KEY",
                       help="Optional: beacon reads are public (a key lifts the per-address "
                            "rate limit).")
GENESIS = typer.Option(None, "--genesis", envvar="QUSTREAM_GENESIS",
                       help="Genesis file: trust its validator set (default: the demo's).")
CHECKPOINT = typer.Option(None, "--checkpoint",
                          help="A light client's saved checkpoint to trust instead.")
AS_JSON = typer.Option(False, "--json", help="Print JSON.")


def _client(urls: list[str], api_key: str | None, genesis: Path | None,
            checkpoint: Path | None) -> BeaconClient:
    if checkpoint is not None:
        return BeaconClient(urls, checkpoint=TrustedCheckpoint.load(checkpoint), api_key=api_key)
    if genesis is None:
        from streams.settings import load_settings

        genesis = load_settings().state_dir / "demo" / "genesis.json"
    if not genesis.exists():
        raise typer.BadParameter(f"no genesis file at {genesis}: give --genesis or --checkpoint")
    return BeaconClient(urls, checkpoint=TrustedCheckpoint.from_genesis(genesis),
                        api_key=api_key)


def _time(text: str) -> int:
    try:
        return parse_time_ms(text)
    except InvalidTimeError as exc:
        raise typer.BadParameter(str(exc)) from exc


def _document(pulse: Pulse) -> dict[str, object]:
    return {"height": pulse.height, "time_ms": pulse.time_ms, "chain_id": pulse.chain_id,
            "randomness": pulse.randomness.hex(), "block_hash": pulse.block_hash.hex(),
            "status": int(pulse.status), "random": pulse.is_random, "verified": True,
            "health": [source.to_json() for source in pulse.health]}


def _print(pulses: list[Pulse], as_json: bool) -> None:
    console = Console()
    for pulse in pulses:
        if as_json:
            print(json.dumps(_document(pulse)), flush=True)
        else:
            mark = "" if pulse.is_random else "  [red]NOT RANDOM[/]"
            console.print(f"height {pulse.height:>7}  time_ms {pulse.time_ms}  randomness "
                          f"{pulse.randomness.hex()}  verified{mark}")
            for source in pulse.health:
                console.print(f"  health {source.describe()}", highlight=False, markup=False)


def _run(ask: Callable[[BeaconClient], list[Pulse]], urls: list[str], api_key: str | None,
         genesis: Path | None, checkpoint: Path | None, as_json: bool) -> None:
    client = _client(urls, api_key, genesis, checkpoint)
    errors = Console(stderr=True)
    try:
        _print(ask(client), as_json)
    except PulseNotYetError as exc:
        errors.print(f"[yellow]{exc.detail}[/]")
        raise typer.Exit(1) from exc
    except BeforeGenesisError as exc:
        errors.print(f"[yellow]{exc.detail}[/]")
        raise typer.Exit(1) from exc
    finally:
        client.close()


@app.command()
def latest(urls: list[str] = URLS, api_key: str | None = API_KEY, genesis: Path | None = GENESIS,
           checkpoint: Path | None = CHECKPOINT, as_json: bool = AS_JSON) -> None:
    """The latest random pulse."""
    _run(lambda c: [c.latest()], urls, api_key, genesis, checkpoint, as_json)


@app.command()
def get(height: int = typer.Argument(..., min=1),
        wait: float = typer.Option(0.0, "--wait", min=0.0, max=60.0,
                                   help="Seconds to wait for a future pulse."),
        urls: list[str] = URLS, api_key: str | None = API_KEY, genesis: Path | None = GENESIS,
        checkpoint: Path | None = CHECKPOINT, as_json: bool = AS_JSON) -> None:
    """The pulse of HEIGHT."""
    _run(lambda c: [c.at_height(height, wait_s=wait)], urls, api_key, genesis, checkpoint,
         as_json)


@app.command()
def at(moment: str = typer.Argument(..., metavar="TIME"),
       urls: list[str] = URLS, api_key: str | None = API_KEY, genesis: Path | None = GENESIS,
       checkpoint: Path | None = CHECKPOINT, as_json: bool = AS_JSON) -> None:
    """The first pulse at or after TIME."""
    _run(lambda c: [c.at_or_after(_time(moment))], urls, api_key, genesis, checkpoint, as_json)


@app.command("next")
def next_pulse(moment: str = typer.Argument(..., metavar="TIME"),
               urls: list[str] = URLS, api_key: str | None = API_KEY,
               genesis: Path | None = GENESIS, checkpoint: Path | None = CHECKPOINT,
               as_json: bool = AS_JSON) -> None:
    """The first pulse strictly after TIME."""
    _run(lambda c: [c.next(_time(moment))], urls, api_key, genesis, checkpoint, as_json)


@app.command()
def previous(moment: str = typer.Argument(..., metavar="TIME"),
             urls: list[str] = URLS, api_key: str | None = API_KEY,
             genesis: Path | None = GENESIS, checkpoint: Path | None = CHECKPOINT,
             as_json: bool = AS_JSON) -> None:
    """The last pulse strictly before TIME."""
    _run(lambda c: [c.previous(_time(moment))], urls, api_key, genesis, checkpoint, as_json)


@app.command("range")
def pulse_range(first: int = typer.Argument(..., min=1), last: int = typer.Argument(..., min=1),
                urls: list[str] = URLS, api_key: str | None = API_KEY,
                genesis: Path | None = GENESIS, checkpoint: Path | None = CHECKPOINT,
                as_json: bool = AS_JSON,
                workers: int = typer.Option(1, "--workers", min=1, max=64, help=(
                    "Verify pages on this many processes, fetching ahead (long ranges are "
                    "CPU-bound on the client)."))) -> None:
    """Pulses FIRST..LAST, each page verified with one certificate and hash links."""
    _run(lambda c: c.range(first, last, workers=workers), urls, api_key, genesis, checkpoint,
         as_json)


@app.command()
def prove(height: int = typer.Argument(..., min=1),
          head: int | None = typer.Option(None, "--head", min=2,
                                          help="Prove against this head (default: the "
                                               "gateway's)."),
          urls: list[str] = URLS, api_key: str | None = API_KEY, genesis: Path | None = GENESIS,
          checkpoint: Path | None = CHECKPOINT, as_json: bool = AS_JSON) -> None:
    """The pulse of HEIGHT proven against a later head: that head's certificate and an
    O(log n) path into its history root, however old the pulse."""
    _run(lambda c: [c.pulse_with_proof(height, head)], urls, api_key, genesis, checkpoint,
         as_json)


@app.command()
def wait(height: int | None = typer.Option(None, "--height", min=1),
         moment: str | None = typer.Option(None, "--time", help="ms or ISO 8601"),
         timeout: float = typer.Option(600.0, "--timeout", min=0.0, help="Seconds."),
         urls: list[str] = URLS, api_key: str | None = API_KEY, genesis: Path | None = GENESIS,
         checkpoint: Path | None = CHECKPOINT, as_json: bool = AS_JSON) -> None:
    """Wait for a future pulse (of --height, or the first at or after --time) and print it."""
    if (height is None) == (moment is None):
        raise typer.BadParameter("give exactly one of --height or --time")
    if height is not None:
        target = height
        _run(lambda c: [c.wait_for_height(target, timeout)], urls, api_key, genesis,
             checkpoint, as_json)
    else:
        assert moment is not None
        when = _time(moment)
        _run(lambda c: [c.wait_for_time(when, timeout)], urls, api_key, genesis, checkpoint,
             as_json)


@app.command()
def health(urls: list[str] = URLS, api_key: str | None = API_KEY,
           genesis: Path | None = GENESIS, checkpoint: Path | None = CHECKPOINT) -> None:
    """The latest pulse's age against the expected period (exit 1 when stale)."""
    from sdk.errors import UnavailableError

    client = _client(urls, api_key, genesis, checkpoint)
    try:
        print(json.dumps(client.health()))
    except UnavailableError as exc:
        print(json.dumps({"healthy": False, "detail": exc.detail, **exc.extra}))
        raise typer.Exit(1) from exc
    finally:
        client.close()
