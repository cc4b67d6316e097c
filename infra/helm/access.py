"""Which chart role writes and reads which topic, derived from the topic catalogue.

The catalogue's ``writer`` field names the one kind of writer of each topic in prose
("tally / validators"); ``WRITER_ROLES`` translates each such phrase into the chart's roles (one
Kubernetes workload and one KafkaUser per role). A catalogue phrase missing here is an error, so
a new topic cannot reach the chart without someone deciding who may write it.

Readers are not in the catalogue; ``READER_ROLES`` lists what each role consumes (DESIGN.md
section 1 and 3) so each KafkaUser gets Read only where it needs it.
"""

from __future__ import annotations

from collections.abc import Iterable

from protocol.errors import QuStreamError
from streams.topics import CATALOGUE, TopicSpec

ROLES: tuple[str, ...] = (
    "qrng", "validator", "tally", "gateway", "users-handler", "shard-writer", "block-store",
    "monitor",
)

WRITER_ROLES: dict[str, tuple[str, ...]] = {
    "qrng_ingest": ("qrng",),
    # Proposals and votes both come from the validator node (its block builder runs inside).
    "validator nodes": ("validator",),
    "tally": ("tally",),
    "tally / validators": ("tally", "validator"),
    # Clients submit through the gateway; nothing outside the cluster holds Kafka credentials.
    "gateway / clients": ("gateway",),
    "gateway": ("gateway",),
    "user command handler": ("users-handler",),
    "entropy consumers": ("validator", "gateway"),
    "consensus consumers": ("validator", "tally", "block-store"),
    "ledger consumers": ("validator", "tally"),
    "user consumers": ("users-handler", "shard-writer"),
    "monitor": ("monitor",),
}

READER_ROLES: dict[str, tuple[str, ...]] = {
    "entropy.raw": ("validator", "monitor"),
    "entropy.private": ("gateway",),
    "qrng.status": ("gateway", "monitor"),
    "chain.consensus": ("validator", "tally", "monitor"),
    "chain.blocks": ("validator", "tally", "gateway", "block-store", "monitor"),
    "chain.evidence": ("validator",),
    "chain.snapshots": ("validator", "tally", "gateway", "block-store"),
    "ledger.tx": ("validator", "monitor"),
    "users.commands": ("users-handler",),
    "users.events": ("users-handler", "shard-writer"),
    # The handler reads back its own replies (the rejections it remembers) and snapshots when
    # it takes over a partition.
    "users.replies": ("gateway", "users-handler"),
    "users.snapshots": ("users-handler",),
    "dlq.entropy": ("monitor",),
    "dlq.chain": ("monitor",),
    "dlq.ledger": ("monitor",),
    "dlq.users": ("monitor",),
    "dlq.monitor": (),
    "alerts": ("monitor",),
    "monitor.state": ("monitor",),
}


class UnmappedWriterError(QuStreamError, KeyError):
    """A catalogue topic names a writer the chart has no role for."""


def writer_roles(topic: TopicSpec) -> tuple[str, ...]:
    """The chart roles allowed to write ``topic`` (its catalogue ``writer`` field, translated)."""
    try:
        return WRITER_ROLES[topic.writer]
    except KeyError as exc:
        raise UnmappedWriterError(
            f"topic {topic.name!r}: writer {topic.writer!r} has no chart role in "
            "infra/helm/access.py WRITER_ROLES"
        ) from exc


def reader_roles(topic: TopicSpec) -> tuple[str, ...]:
    return READER_ROLES.get(topic.name, ())


def topics_written_by(role: str, catalogue: Iterable[TopicSpec] = CATALOGUE) -> set[str]:
    """Unprefixed names of the topics ``role`` may write."""
    return {t.name for t in catalogue if role in writer_roles(t)}
