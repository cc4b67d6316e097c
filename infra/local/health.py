"""Is a node answering, and is it in sync? Probes of the embedded cluster through the clients.

Readiness: a broker is ready when it answers a metadata request listing itself as a registered
broker; a Cassandra node when it answers CQL on its own address.

In sync, Kafka: the broker is registered (not fenced) and each partition it holds a replica of
has it in its ISR (under-replicated partitions are what a restarted broker still has to catch up).
In sync, Cassandra: the driver sees the node up, every node that answers gossips it as NORMAL,
and none holds hints for it (``system_views.gossip_info`` and ``system_views.pending_hints``,
Cassandra 4.1+, read from every live node since virtual tables are node-local): once the hints
are replayed, the node has every write it missed while down.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from infra.local.config import CASSANDRA_DATACENTER
from infra.local.nodes import Node


@dataclass(frozen=True)
class NodeSync:
    """Whether a node holds everything it should; ``detail`` says what is missing."""

    in_sync: bool
    detail: str


def _quiet_logger() -> logging.Logger:
    quiet = logging.getLogger("infra.local.probe")
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    return quiet


def _kafka_metadata(bootstrap: str, timeout_s: float) -> Any:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": _quiet_logger(),
                            "socket.timeout.ms": int(timeout_s * 1000)}
    admin = AdminClient(conf)
    try:
        return admin.list_topics(timeout=timeout_s)
    except KafkaException:
        return None


def kafka_ready(node: Node) -> bool:
    """The broker answers on its own listener and is registered in the cluster's metadata."""
    metadata = _kafka_metadata(node.address, 3)
    return metadata is not None and node.index in metadata.brokers


def kafka_sync(nodes: Sequence[Node], timeout_s: float = 5) -> dict[str, NodeSync]:
    """In-sync state of every broker, from one metadata request to any live broker."""
    metadata = _kafka_metadata(",".join(node.address for node in nodes), timeout_s)
    if metadata is None:
        return {node.name: NodeSync(False, "no broker answers") for node in nodes}
    return kafka_verdicts(metadata, nodes)


def kafka_verdicts(metadata: Any, nodes: Sequence[Node]) -> dict[str, NodeSync]:
    """Per broker, from a metadata answer (``brokers``, ``topics`` -> ``partitions`` with
    ``leader``, ``replicas``, ``isrs``, as confluent-kafka returns it)."""
    replicas: Counter[int] = Counter()
    lagging: Counter[int] = Counter()
    leaders: Counter[int] = Counter()
    for topic in metadata.topics.values():
        for partition in topic.partitions.values():
            leaders[partition.leader] += 1
            for replica in partition.replicas:
                replicas[replica] += 1
                lagging[replica] += replica not in partition.isrs
    out: dict[str, NodeSync] = {}
    for node in nodes:
        if node.index not in metadata.brokers:
            out[node.name] = NodeSync(False, "not registered (down or fenced)")
            continue
        held = replicas[node.index]
        behind = lagging[node.index]
        out[node.name] = NodeSync(
            behind == 0, f"leads {leaders[node.index]}, {held - behind}/{held} replicas in ISR")
    return out


def _cassandra_cluster(hosts: Sequence[str], port: int, *, only: str | None = None) -> Any:
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import (
        DCAwareRoundRobinPolicy,
        WhiteListRoundRobinPolicy,
    )

    policy = (WhiteListRoundRobinPolicy([only]) if only is not None
              else DCAwareRoundRobinPolicy(local_dc=CASSANDRA_DATACENTER))
    profile = ExecutionProfile(load_balancing_policy=policy, request_timeout=5)
    return Cluster(list(hosts), port=port, connect_timeout=3, control_connection_timeout=3,
                   execution_profiles={EXEC_PROFILE_DEFAULT: profile}, protocol_version=5)


def cassandra_ready(node: Node) -> bool:
    """The node answers CQL on its own address (it serves CQL only once it joined the ring)."""
    from infra.local.process import port_open

    if not port_open(node.port, node.host):
        return False
    cluster = _cassandra_cluster([node.host], node.port, only=node.host)
    try:
        session = cluster.connect()
        return session.execute("SELECT release_version FROM system.local").one() is not None
    except Exception:  # any failure means: not ready yet
        return False
    finally:
        cluster.shutdown()


def cassandra_sync(nodes: Sequence[Node]) -> dict[str, NodeSync]:
    """In-sync state of every Cassandra node (see the module docstring)."""
    cluster = _cassandra_cluster([node.host for node in nodes], nodes[0].port)
    try:
        try:
            session = cluster.connect()
        except Exception:  # NoHostAvailable and friends: nothing answers
            return {node.name: NodeSync(False, "no node answers") for node in nodes}
        hosts = {host.address: host for host in cluster.metadata.all_hosts()}
        gossip: dict[str, dict[str, str]] = {}
        hints: Counter[str] = Counter()
        for address, host in hosts.items():
            if not host.is_up:
                continue
            try:
                views = session.execute("SELECT address, status, status_with_port "
                                        "FROM system_views.gossip_info", host=host)
                gossip[address] = {str(row.address): str(row.status_with_port or row.status
                                                         or "") for row in views}
                for row in session.execute(
                        "SELECT address, files FROM system_views.pending_hints", host=host):
                    hints[str(row.address)] += int(row.files or 0)
            except Exception:  # the node went away between the two questions
                continue
    finally:
        cluster.shutdown()
    out: dict[str, NodeSync] = {}
    for node in nodes:
        host = hosts.get(node.host)
        if host is None or not host.is_up:
            out[node.name] = NodeSync(False, "down")
            continue
        statuses = {seen.get(node.host, "unknown") for seen in gossip.values()}
        not_normal = sorted(s for s in statuses if not s.startswith("NORMAL"))
        if not_normal:
            out[node.name] = NodeSync(False, f"gossip says {', '.join(not_normal)}")
        elif hints[node.host]:
            out[node.name] = NodeSync(False, f"{hints[node.host]} hint files to replay")
        else:
            out[node.name] = NodeSync(True, "NORMAL, no hints pending")
    return out
