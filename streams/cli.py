"""The ``qustream`` command.

Each role of the network contributes its own Typer sub-application in its own module; this file
only lists them, so that ``qustream --help`` explains the whole system and a missing optional part
never breaks the others. Sub-modules must not connect to anything at import time.

Errors and exit status, for every command (README, "The qustream command"):

- 0: done, and (for a check) everything holds;
- 1: a check found something wrong, or what was asked for does not exist (an audit divergence,
  topic drift, no block at that height, a rejected command);
- 2: the command could not run: bad usage or input, an unreadable file, a server it could not
  reach. Any ``QuStreamError`` that reaches this root is printed as one line on stderr
  (``qustream: error: ...``) with status 2; ``--debug`` (or ``QUSTREAM_DEBUG=1``) shows the
  traceback instead, and the Kafka client's own log lines.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

import typer

from protocol.errors import QuStreamError

EXIT_OK = 0
EXIT_FOUND_PROBLEM = 1
EXIT_COULD_NOT_RUN = 2

app = typer.Typer(
    name="qustream",
    help=(
        "QuStream: quantum randomness from QRNG hardware, through Apache Kafka, into a "
        "verifiable chain of randomness finalized by proof-of-stake validators, with private "
        "key delivery and a sharded user database in Apache Cassandra.\n\n"
        "With no cluster configured, commands use the embedded single-node Kafka and Cassandra "
        "that `qustream infra up` starts (state under .qustream/). Configure an external cluster "
        "with QUSTREAM_KAFKA_BOOTSTRAP_SERVERS / QUSTREAM_CASSANDRA_CONTACT_POINTS or a TOML file "
        "given by --config or QUSTREAM_CONFIG.\n\n"
        "Exit status: 0 ok; 1 a check found something wrong or what was asked for does not "
        "exist; 2 the command could not run (bad input, a server out of reach: one line on "
        "stderr, the traceback with --debug)."
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
    ("blocks", "services.block_store.cli", "app", "group"),
    ("tx", "services.ledger.tx_cli", "app", "group"),
    ("users", "services.shard_writer.cli", "app", "group"),
    ("gateway", "services.gateway.cli", "app", "group"),
    ("beacon", "sdk.beacon_cli", "app", "group"),
    ("monitor", "services.monitor.cli", "app", "group"),
    ("alerts", "services.monitor.alerts_cli", "app", "group"),
    ("audit", "services.audit.cli", "audit", "command"),
    ("export", "services.audit.cli", "export", "command"),
    ("state", "services.audit.cli", "state", "command"),
    ("demo", "services.demo", "demo", "command"),
)


def debugging() -> bool:
    """True when ``--debug`` or ``QUSTREAM_DEBUG=1`` asks for tracebacks and client logs."""
    return os.environ.get("QUSTREAM_DEBUG", "") not in ("", "0")


@app.callback()
def _root(
    config: Path | None = typer.Option(
        None, "--config", envvar="QUSTREAM_CONFIG", help="TOML config file (see README)."
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Show tracebacks and the Kafka client's own log lines "
                               "(also QUSTREAM_DEBUG=1; passed on to the demo's services)."),
) -> None:
    if config is not None:
        os.environ["QUSTREAM_CONFIG"] = str(config)
    if debug:
        os.environ["QUSTREAM_DEBUG"] = "1"
    # librdkafka logs every failed connection attempt and the Cassandra driver each failed
    # connection with its traceback; the same conditions reach the user translated
    # (streams.kafka, shard_writer.store), so the libraries' own lines show only when debugging.
    logging.getLogger("streams.kafka.librdkafka").setLevel(
        logging.DEBUG if debugging() else logging.CRITICAL)
    logging.getLogger("cassandra").setLevel(logging.DEBUG if debugging() else logging.CRITICAL)


_registered: set[str] = set()


def _register(only: str | None = None) -> None:
    """Add the parts to ``app``: the one named ``only`` when it is one of them, else all.

    A command run as a service (each of the demo's validators, the tests' networks) imports
    only its own part: importing every part costs about half a second of start-up each time."""
    wanted = {name for name, *_ in _PARTS}
    if only in wanted:
        wanted = {only}
    for name, module_name, attribute, kind in _PARTS:
        if name not in wanted or name in _registered:
            continue
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
        _registered.add(name)


def command_name(argv: list[str]) -> str | None:
    """The command a ``qustream`` command line names (``chain`` in ``qustream --debug chain
    head``); None when it names none (``qustream --help``) or asks for shell completion."""
    if os.environ.get("_QUSTREAM_COMPLETE"):
        return None
    words = iter(argv)
    for word in words:
        if word == "--config":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def error_line(exc: BaseException) -> str:
    """An error as the one line the CLI prints (its message, whitespace folded)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def run(application: typer.Typer, argv: list[str]) -> None:
    """Run a Typer application as ``qustream``: a ``QuStreamError`` becomes one line on stderr
    and exit status 2 (re-raised when debugging)."""
    try:
        application(args=argv, prog_name="qustream")
    except QuStreamError as exc:
        if debugging():
            raise
        print(f"qustream: error: {error_line(exc)}", file=sys.stderr)
        sys.exit(EXIT_COULD_NOT_RUN)


def dump_stacks_on_sigusr1() -> None:
    """``kill -USR1 <pid>`` writes every thread's stack to stderr (the service's log under a
    supervisor) and the process goes on: what an operator asks of a node that went silent."""
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)


def main(argv: list[str] | None = None) -> None:
    from streams.supervisor import die_with_parent

    dump_stacks_on_sigusr1()
    die_with_parent()  # a service of a supervisor (the demo) ends when the supervisor does
    argv = argv if argv is not None else sys.argv[1:]
    _register(command_name(argv))
    run(app, argv)


if __name__ == "__main__":
    main()
