"""`qustream infra`: the embedded Kafka and Cassandra for development and tests.

One broker and one Cassandra node by default; ``--kafka-brokers 3 --cassandra-nodes 3`` (or
``QUSTREAM_INFRA_KAFKA_BROKERS`` / ``QUSTREAM_INFRA_CASSANDRA_NODES``) select the replicated
cluster, which has its own state folders and ports.
"""

from __future__ import annotations

import json
import time
from enum import StrEnum

import typer
from rich.console import Console
from rich.table import Table

from infra.local import STATE_HELP, ComponentStatus, InfraError, LocalCluster
from infra.local.process import pid_alive, read_pid
from streams.settings import MAX_NODES, Settings, SettingsError, load_settings

app = typer.Typer(
    help=(
        "The embedded development cluster: Apache Kafka (KRaft) and Apache Cassandra run as "
        "local JVM processes from jars resolved from Maven Central (Java 17 and Maven needed). "
        "One broker and one Cassandra node by default; --kafka-brokers 3 --cassandra-nodes 3 "
        "is the replicated cluster (own folders and ports, replication factor 3). State, data "
        "and logs live under the state dir (QUSTREAM_STATE_DIR, default .qustream). Parts "
        "configured as external (QUSTREAM_KAFKA_BOOTSTRAP_SERVERS, "
        "QUSTREAM_CASSANDRA_CONTACT_POINTS) are never started locally."
    ),
    no_args_is_help=True,
)

_out = Console()
_err = Console(stderr=True)


class Component(StrEnum):
    kafka = "kafka"
    cassandra = "cassandra"


_BROKERS_HELP = ("Kafka brokers: 1 (the single-node cluster) or more (the replicated cluster; "
                 "default QUSTREAM_INFRA_KAFKA_BROKERS or 1).")
_NODES_HELP = ("Cassandra nodes: 1 or more (a ring on 127.0.0.1..n; default "
               "QUSTREAM_INFRA_CASSANDRA_NODES or 1).")


def _brokers_option() -> int | None:
    return typer.Option(None, "--kafka-brokers", min=1, max=MAX_NODES, help=_BROKERS_HELP)


def _nodes_option() -> int | None:
    return typer.Option(None, "--cassandra-nodes", min=1, max=MAX_NODES, help=_NODES_HELP)


def _cluster(kafka_brokers: int | None = None,
             cassandra_nodes: int | None = None) -> LocalCluster:
    try:
        settings = load_settings()
    except SettingsError as exc:
        _err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    size = {key: value for key, value in (("kafka_brokers", kafka_brokers),
                                          ("cassandra_nodes", cassandra_nodes))
            if value is not None}
    if size:
        # Built anew (not model_copy) so the replication factors follow the new size.
        settings = Settings(state_dir=settings.state_dir, topic_prefix=settings.topic_prefix,
                            kafka=settings.kafka, cassandra=settings.cassandra,
                            infra=settings.infra.model_copy(update=size))
    return LocalCluster(settings, console=_err)


def _fail(exc: InfraError) -> typer.Exit:
    _err.print(f"[red]error ({type(exc).__name__}):[/] {exc}")
    return typer.Exit(1)


def _table(statuses: list[ComponentStatus]) -> Table:
    colours = {"up": "green", "external": "blue", "starting": "yellow"}
    table = Table(title="QuStream embedded cluster")
    for column in ("node", "role", "pid", "address", "state", "in sync", "data dir"):
        table.add_column(column)
    for status in statuses:
        colour = colours.get(status.state, "red")
        if status.in_sync is None:
            sync = "-"
        else:
            mark = "[green]yes[/]" if status.in_sync else "[red]no[/]"
            sync = f"{mark} ({status.sync_detail})"
        table.add_row(status.node or status.component, status.role, str(status.pid or "-"),
                      status.address, f"[{colour}]{status.state}[/]", sync,
                      str(status.data_dir or "-"))
    return table


def _other_clusters(cluster: LocalCluster) -> list[str]:
    """Folders of running embedded clusters of another size under the same state dir (so
    `status` can say where a replicated cluster is when run without its flags)."""
    mine = {node.cluster_home for node in cluster.nodes()}
    running = []
    for home in sorted(cluster.state_dir.glob("*-x[0-9]*")):
        if home in mine or not home.is_dir():
            continue
        pids = [read_pid(pid_file) for pid_file in home.glob("*/*.pid")]
        if any(pid is not None and pid_alive(pid, str(home)) for pid in pids):
            running.append(home.name)
    return running


def _replicated_hint(cluster: LocalCluster) -> None:
    infra = cluster.settings.infra
    if infra.kafka_brokers == 1 and infra.cassandra_nodes == 1:
        return
    _err.print("Services use this cluster with: "
               f"[bold]export QUSTREAM_INFRA_KAFKA_BROKERS={infra.kafka_brokers} "
               f"QUSTREAM_INFRA_CASSANDRA_NODES={infra.cassandra_nodes}[/] "
               "(topics and keyspaces then get replication factor "
               f"{cluster.settings.kafka.replication_factor}/"
               f"{cluster.settings.cassandra.replication_factor}; see docs/replicated-cluster.md)")


@app.command()
def up(
    only: Component | None = typer.Option(
        None, "--only", help="Start just this component (default: both)."),
    kafka_brokers: int | None = _brokers_option(),
    cassandra_nodes: int | None = _nodes_option(),
) -> None:
    """Start Kafka and Cassandra (or just one) and wait until they answer.

    Already-running servers are left alone; crashed or killed ones are restarted on their
    existing data. The first run resolves jars from Maven Central, which takes a minute or two.
    With --kafka-brokers 3 --cassandra-nodes 3 it starts the replicated cluster: three combined
    KRaft brokers and a three-node Cassandra ring (started one node after another), with their
    own state folders and ports (QUSTREAM_INFRA_REPLICATED_*).
    """
    cluster = _cluster(kafka_brokers, cassandra_nodes)
    components = (only.value,) if only else ("kafka", "cassandra")
    try:
        statuses = cluster.up(components)
    except InfraError as exc:
        raise _fail(exc) from exc
    _out.print(_table(statuses))
    _replicated_hint(cluster)


@app.command()
def down(
    kafka_brokers: int | None = _brokers_option(),
    cassandra_nodes: int | None = _nodes_option(),
) -> None:
    """Stop the local servers gracefully (SIGTERM, then SIGKILL after a grace time).

    Their data is kept: the next `up` continues where they left off. Pass the same
    --kafka-brokers / --cassandra-nodes as to `up` to stop the replicated cluster.
    """
    cluster = _cluster(kafka_brokers, cassandra_nodes)
    try:
        statuses = cluster.down()
    except InfraError as exc:
        raise _fail(exc) from exc
    _out.print(_table(statuses))


_STATUS_HELP = (
    "Show every node: its role, pid, address, state, whether it is in sync, and its data dir.\n\n"
    "In sync: a broker is registered and in the ISR of every partition it holds a replica of; a "
    "Cassandra node is up, gossiped NORMAL by every node, and no node holds hints for it.\n\n"
    "States: " + "; ".join(f"{state}: {meaning}" for state, meaning in STATE_HELP.items())
    + ".\n\nExits with 0 when every node is up (or external) and in sync, 3 when one is not "
    "up, 4 when all are up but one is not in sync yet."
)


@app.command(help=_STATUS_HELP)
def status(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    kafka_brokers: int | None = _brokers_option(),
    cassandra_nodes: int | None = _nodes_option(),
) -> None:
    cluster = _cluster(kafka_brokers, cassandra_nodes)
    statuses = cluster.status(sync=True)
    if as_json:
        typer.echo(json.dumps([s.to_dict() for s in statuses], indent=2))
    else:
        _out.print(_table(statuses))
        for other in _other_clusters(cluster):
            size = other.rsplit("-x", 1)[1]
            flag = "--kafka-brokers" if other.startswith("kafka") else "--cassandra-nodes"
            _err.print(f"note: a {other.split('-x')[0]} cluster of {size} nodes runs under "
                       f"{cluster.state_dir / other} (`qustream infra status {flag} {size}`)")
    if not all(s.is_up for s in statuses):
        raise typer.Exit(3)
    if any(s.in_sync is False for s in statuses):
        raise typer.Exit(4)


@app.command()
def logs(
    component: Component = typer.Argument(..., help="kafka or cassandra."),
    lines: int = typer.Option(50, "-n", "--lines", help="How many of the last lines to show."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new lines."),
    node: int = typer.Option(1, "--node", min=1, help="Which node of a replicated cluster."),
    kafka_brokers: int | None = _brokers_option(),
    cassandra_nodes: int | None = _nodes_option(),
) -> None:
    """Print the last lines of a server's log (its console output)."""
    cluster = _cluster(kafka_brokers, cassandra_nodes)
    try:
        path = cluster.logs(component.value, node)
    except InfraError as exc:
        raise _fail(exc) from exc
    if not path.exists():
        _err.print(f"no log yet at {path} (has `qustream infra up` run with this state dir?)")
        raise typer.Exit(1)
    for line in cluster.tail(component.value, lines, node):
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
    kafka_brokers: int | None = _brokers_option(),
    cassandra_nodes: int | None = _nodes_option(),
) -> None:
    """Stop the local servers and DELETE their data (topics, keyspaces). Jars are kept."""
    cluster = _cluster(kafka_brokers, cassandra_nodes)
    if not yes:
        typer.confirm(f"Delete all embedded Kafka and Cassandra data under {cluster.state_dir}?",
                      abort=True)
    try:
        cluster.reset()
    except InfraError as exc:
        raise _fail(exc) from exc
