"""The ``qustream`` command.

Each role of the network contributes its own Typer sub-application in its own module; this file
only lists them, so that ``qustream --help`` explains the whole system and a missing optional part
never breaks the others. Sub-modules must not connect to anything at import time.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import typer

app = typer.Typer(
    name="qustream",
    help=(
        "QuStream: quantum randomness from QRNG hardware, through Apache Kafka, into a "
        "verifiable chain of randomness finalized by proof-of-stake validators, with private "
        "key delivery and a sharded user database in Apache Cassandra.\n\n"
        "With no cluster configured, commands use the embedded single-node Kafka and Cassandra "
        "that `qustream infra up` starts (state under .qustream/). Configure an external cluster "
        "with QUSTREAM_KAFKA_BOOTSTRAP_SERVERS / QUSTREAM_CASSANDRA_CONTACT_POINTS or a TOML file "
        "given by --config or QUSTREAM_CONFIG."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# (name, module, attribute, kind): kind "group" adds a Typer sub-app, "command" a single command.
_PARTS: tuple[tuple[str, str, str, str], ...] = (
    ("infra", "infra.cli", "app", "group"),
    ("topics", "streams.topics_cli", "app", "group"),
    ("keys", "streams.keys_cli", "app", "group"),
    ("qrng", "services.qrng_ingest.cli", "app", "group"),
    ("genesis", "services.ledger.genesis_cli", "app", "group"),
    ("chain", "services.consensus.chain_cli", "app", "group"),
    ("validator", "services.consensus.validator_cli", "app", "group"),
    ("tally", "services.consensus.tally_cli", "app", "group"),
    ("tx", "services.ledger.tx_cli", "app", "group"),
    ("users", "services.shard_writer.cli", "app", "group"),
    ("gateway", "services.gateway.cli", "app", "group"),
    ("monitor", "services.monitor.cli", "app", "group"),
    ("alerts", "services.monitor.alerts_cli", "app", "group"),
    ("audit", "services.audit.cli", "audit", "command"),
    ("export", "services.audit.cli", "export", "command"),
    ("state", "services.audit.cli", "state", "command"),
    ("demo", "services.demo", "demo", "command"),
)


@app.callback()
def _root(
    config: Path | None = typer.Option(
        None, "--config", envvar="QUSTREAM_CONFIG", help="TOML config file (see README)."
    ),
) -> None:
    if config is not None:
        import os

        os.environ["QUSTREAM_CONFIG"] = str(config)


def _register() -> None:
    for name, module_name, attribute, kind in _PARTS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # that part of the network is not built yet
            raise
        target = getattr(module, attribute)
        if kind == "group":
            app.add_typer(target, name=name)
        else:
            app.command(name)(target)


def main(argv: list[str] | None = None) -> None:
    _register()
    app(args=argv if argv is not None else sys.argv[1:], prog_name="qustream")


if __name__ == "__main__":
    main()
