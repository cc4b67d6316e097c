"""Fault injection on the embedded replicated cluster (for the fault tests and bench.failover):
which broker to kill, and waiting until a killed node is back in sync.

Kafka places the coordinator of a transactional id (or consumer group) on the leader of one
partition of ``__transaction_state`` (``__consumer_offsets``): partition =
``Utils.abs(id.hashCode()) % partitions``, with Java's ``String.hashCode``. That is reproduced
here so a test can kill exactly the broker that holds a given coordinator.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from infra.local.cluster import ComponentStatus, LocalCluster
from infra.local.errors import InfraError
from infra.local.process import port_open

TRANSACTION_STATE_TOPIC = "__transaction_state"
GROUP_OFFSETS_TOPIC = "__consumer_offsets"


def java_string_hash(text: str) -> int:
    """Java's ``String.hashCode`` (over UTF-16 code units, 32-bit signed overflow)."""
    value = 0
    encoded = text.encode("utf-16-be")
    for index in range(0, len(encoded), 2):
        value = (31 * value + int.from_bytes(encoded[index:index + 2], "big")) & 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def coordinator_partition(key: str, partitions: int) -> int:
    """Kafka's ``Utils.abs(key.hashCode()) % partitions`` (abs of MIN_VALUE is 0 there)."""
    hashed = java_string_hash(key)
    return (0 if hashed == -(1 << 31) else abs(hashed)) % partitions


def _metadata(bootstrap: str, topic: str | None = None, timeout_s: float = 10) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=timeout_s)


def partition_leader(bootstrap: str, topic: str, partition: int = 0,
                     timeout_s: float = 30) -> int:
    """The broker id leading ``topic[partition]`` (waits while it has no leader)."""
    deadline = time.monotonic() + timeout_s
    while True:
        meta = _metadata(bootstrap, topic).topics.get(topic)
        if meta is not None and partition in meta.partitions:
            leader = meta.partitions[partition].leader
            if leader >= 0:
                return int(leader)
        if time.monotonic() > deadline:
            raise InfraError(f"{topic}[{partition}] has no leader after {timeout_s:.0f}s")
        time.sleep(0.5)


def transaction_coordinator(bootstrap: str, transactional_id: str,
                            timeout_s: float = 30) -> int:
    """The broker id holding the transaction coordinator of ``transactional_id`` (the
    transaction state topic exists once any transactional producer started)."""
    partitions = len(_metadata(bootstrap, TRANSACTION_STATE_TOPIC)
                     .topics[TRANSACTION_STATE_TOPIC].partitions)
    return partition_leader(bootstrap, TRANSACTION_STATE_TOPIC,
                            coordinator_partition(transactional_id, partitions), timeout_s)


def group_coordinator(bootstrap: str, group: str, timeout_s: float = 30) -> int:
    """The broker id holding the coordinator of consumer group ``group``."""
    partitions = len(_metadata(bootstrap, GROUP_OFFSETS_TOPIC)
                     .topics[GROUP_OFFSETS_TOPIC].partitions)
    return partition_leader(bootstrap, GROUP_OFFSETS_TOPIC,
                            coordinator_partition(group, partitions), timeout_s)


def wait_in_sync(cluster: LocalCluster, components: Sequence[str] = ("kafka", "cassandra"),
                 timeout_s: float = 300) -> list[ComponentStatus]:
    """Wait until every node of ``components`` is up and in sync (a restarted broker back in
    every ISR, a restarted Cassandra node with its hints replayed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = cluster.status(components, sync=True)
        if all(s.state == "external" or (s.state == "up" and s.in_sync) for s in statuses):
            return statuses
        if time.monotonic() > deadline:
            lagging = [f"{s.node}: {s.state} {s.sync_detail}" for s in statuses
                       if not (s.state == "up" and s.in_sync)]
            raise InfraError(f"not in sync after {timeout_s:.0f}s: {'; '.join(lagging)}")
        time.sleep(1)


def free_port_block(count: int, hosts: Sequence[str] = ("127.0.0.1",), *, start: int,
                    stop: int = 28000, step: int = 20) -> int:
    """The first ``base`` in [start, stop) such that base..base+count-1 answer on none of
    ``hosts`` (a cluster started right after takes them; tests pick ``start`` from their
    checkout's path, below the ephemeral range and the single-node test clusters' ports)."""
    for base in range(start, stop - count, step):
        if not any(port_open(base + offset, host, timeout_s=0.1)
                   for offset in range(count) for host in hosts):
            return base
    raise InfraError(f"no {count} free ports in {start}..{stop}")
