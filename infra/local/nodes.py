"""Which server processes the embedded cluster is made of (pure: no I/O, unit-tested).

One Kafka and one Cassandra (``kafka_brokers`` = ``cassandra_nodes`` = 1) is the single-node
development cluster, laid out exactly as it always was: ``<state>/kafka`` and
``<state>/cassandra``, nodes named ``kafka`` and ``cassandra``.

More than one is the replicated cluster. Its nodes live in their own folders,
``<state>/kafka-x<n>/kafka-<i>`` and ``<state>/cassandra-x<n>/cassandra-<i>``, on their own ports
(``InfraSettings.replicated_*``), so it never touches the single-node cluster's data or ports;
all nodes of a kind share the one resolved jar folder ``<state>/<kind>/libs``.

Kafka nodes are combined KRaft nodes (broker and controller in one JVM, every node a voter of
a static quorum): three JVMs instead of six on a two-core machine, and a harsher fault model,
since killing a partition leader may kill the active controller with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from infra.local.config import COMPONENTS, LOOPBACK, ComponentLayout, ring_address
from streams.settings import InfraSettings


@dataclass(frozen=True)
class Node:
    """One server process of the embedded cluster."""

    name: str  # "kafka" / "cassandra" (single node) or "kafka-2" / "cassandra-3"
    component: str  # "kafka" or "cassandra"
    index: int  # 1-based; the Kafka node.id, the Cassandra address 127.0.0.<index>
    members: int  # how many nodes its component has
    host: str
    port: int  # the client port: Kafka's PLAINTEXT listener, Cassandra's native port
    internal_port: int  # Kafka's controller listener, Cassandra's storage port
    layout: ComponentLayout
    cluster_home: Path  # the folder of the whole component (holds the Kafka cluster id)

    @property
    def replicated(self) -> bool:
        return self.members > 1

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def role(self) -> str:
        if self.component == "kafka":
            return "broker+controller"
        return "cassandra seed" if self.replicated and self.index == 1 else "cassandra node"


def plan_nodes(infra: InfraSettings, state_dir: Path,
               libs_state_dir: Path | None = None) -> dict[str, list[Node]]:
    """The nodes of each component, node 1 first."""
    libs_root = libs_state_dir or state_dir
    plan: dict[str, list[Node]] = {}
    for component in COMPONENTS:
        if component == "kafka":
            members = infra.kafka_brokers
            endpoints = [(LOOPBACK, port, cport) for port, cport in infra.kafka_broker_ports()]
        else:
            members = infra.cassandra_nodes
            native, storage = infra.cassandra_ports()
            endpoints = [(host, native, storage) for host in infra.cassandra_hosts()]
        if members == 1:
            layout = ComponentLayout.under(state_dir, component, libs_state_dir)
            host, port, internal = endpoints[0]
            plan[component] = [Node(component, component, 1, 1, host, port, internal, layout,
                                    layout.home)]
            continue
        home = state_dir / f"{component}-x{members}"
        libs = libs_root / component / "libs"
        plan[component] = [
            Node(f"{component}-{index}", component, index, members, host, port, internal,
                 ComponentLayout(name=f"{component}-{index}", home=home / f"{component}-{index}",
                                 libs=libs), home)
            for index, (host, port, internal) in enumerate(endpoints, start=1)
        ]
    if infra.cassandra_nodes > 1:
        # The seed must be node 1 (see config.cassandra_ring_yaml).
        assert plan["cassandra"][0].host == ring_address(1)
    return plan
