"""`qustream infra`: the embedded single-node Kafka and Cassandra for development and tests."""

from __future__ import annotations

import json
import time
from enum import StrEnum

import typer
from rich.console import Console
from rich.table import Table

from infra.local import STATE_HELP, ComponentStatus, InfraError, LocalCluster
from streams.settings import SettingsError, load_settings

app = typer.Typer(
    help=(
        "The embedded development cluster: a single-node Apache Kafka (KRaft) and Apache "
        "Cassandra run as local JVM processes from jars resolved from Maven Central (Java 17 and "
        "Maven needed). State, data and logs live under the state dir (QUSTREAM_STATE_DIR, "
        "default .qustream). Parts configured as external (QUSTREAM_KAFKA_BOOTSTRAP_SERVERS, "
        "QUSTREAM_CASSANDRA_CONTACT_POINTS) are never started locally."
    ),
    no_args_is_help=True,
)

_out = Console()
_err = Console(stderr=True)


class Component(StrEnum):
    kafka = "kafka"
    cassandra = "cassandra"


def _cluster() -> LocalCluster:
    try:
        return LocalCluster(load_settings(), console=_err)
    except SettingsError as exc:
        _err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc


def _fail(exc: InfraError) -> typer.Exit:
    _err.print(f"[red]error ({type(exc).__name__}):[/] {exc}")
    return typer.Exit(1)


def _table(statuses: list[ComponentStatus]) -> Table:
    colours = {"up": "green", "external": "blue", "starting": "yellow"}
    table = Table(title="QuStream embedded cluster")
    for column in ("component", "pid", "port", "state", "address", "data dir"):
        table.add_column(column)
    for status in statuses:
        colour = colours.get(status.state, "red")
        table.add_row(status.component, str(status.pid or "-"), str(status.port or "-"),
                      f"[{colour}]{status.state}[/]", status.address,
                      str(status.data_dir or "-"))
    return table


@app.command()
def up(
    only: Component | None = typer.Option(
        None, "--only", help="Start just this component (default: both)."),
) -> None:
    """Start Kafka and Cassandra (or just one) and wait until they answer.

    Already-running servers are left alone; crashed or killed ones are restarted on their
    existing data. The first run resolves jars from Maven Central, which takes a minute or two.
    """
    cluster = _cluster()
    components = (only.value,) if only else ("kafka", "cassandra")
    try:
        statuses = cluster.up(components)
    except InfraError as exc:
        raise _fail(exc) from exc
    _out.print(_table(statuses))


@app.command()
def down() -> None:
    """Stop the local servers gracefully (SIGTERM, then SIGKILL after a grace time).

    Their data is kept: the next `up` continues where they left off.
    """
    cluster = _cluster()
    try:
        statuses = cluster.down()
    except InfraError as exc:
        raise _fail(exc) from exc
    _out.print(_table(statuses))


_STATUS_HELP = (
    "Show each server's pid, port, state and data dir.\n\nStates: "
    + "; ".join(f"{state}: {meaning}" for state, meaning in STATE_HELP.items())
    + ".\n\nExits with 0 when every component is up (or external), 3 otherwise."
)


@app.command(help=_STATUS_HELP)
def status(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    statuses = _cluster().status()
    if as_json:
        typer.echo(json.dumps([s.to_dict() for s in statuses], indent=2))
    else:
        _out.print(_table(statuses))
    if not all(s.is_up for s in statuses):
        raise typer.Exit(3)


@app.command()
def logs(
    component: Component = typer.Argument(..., help="kafka or cassandra."),
    lines: int = typer.Option(50, "-n", "--lines", help="How many of the last lines to show."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new lines."),
) -> None:
    """Print the last lines of a server's log (its console output)."""
    cluster = _cluster()
    path = cluster.logs(component.value)
    if not path.exists():
        _err.print(f"no log yet at {path} (has `qustream infra up` run with this state dir?)")
        raise typer.Exit(1)
    for line in cluster.tail(component.value, lines):
        typer.echo(line)
    if not follow:
        return
    with open(path, errors="replace") as handle:
        handle.seek(0, 2)
        try:
            while True:
                line = handle.readline()
                if line:
                    typer.echo(line, nl=False)
                else:
                    time.sleep(0.3)
        except KeyboardInterrupt:
            return


@app.command()
def reset(
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Stop the local servers and DELETE their data (topics, keyspaces). Jars are kept."""
    cluster = _cluster()
    if not yes:
        typer.confirm(f"Delete all embedded Kafka and Cassandra data under {cluster.state_dir}?",
                      abort=True)
    try:
        cluster.reset()
    except InfraError as exc:
        raise _fail(exc) from exc
