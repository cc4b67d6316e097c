"""The topic catalogue: the one source of truth for every topic of DESIGN.md section 3.

Names are relative (``chain.blocks``) and prefixed at run time (default ``qs.``). The Helm chart's
KafkaTopic resources are generated from and checked against this catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DAY_MS = 24 * 3600 * 1000
FOREVER = -1
MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # 1 MiB chunks plus headers; blocks carry many digests


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str  # without prefix
    partitions: int
    key: str  # what the message key is
    writer: str  # the one kind of writer
    schemas: tuple[str, ...]  # Avro schema names allowed on it
    retention_ms: int = 7 * DAY_MS
    cleanup_policy: str = "delete"
    min_insync_replicas: int = 2
    max_message_bytes: int = 1024 * 1024
    extra: tuple[tuple[str, str], ...] = field(default=())

    def configs(self, replication_factor: int) -> dict[str, str]:
        """Topic configs for a cluster with the given replication factor.

        min.insync.replicas can never exceed the replication factor, so a single-node
        development cluster gets 1; production (factor 3) gets the catalogue's value.
        """
        configs = {
            "retention.ms": str(self.retention_ms),
            "cleanup.policy": self.cleanup_policy,
            "min.insync.replicas": str(min(self.min_insync_replicas, replication_factor)),
            "max.message.bytes": str(self.max_message_bytes),
            "unclean.leader.election.enable": "false",
        }
        configs.update(dict(self.extra))
        return configs


CATALOGUE: tuple[TopicSpec, ...] = (
    TopicSpec("entropy.raw", 6, "source id", "qrng_ingest",
              ("EntropyChunkPublished", "EntropyCheckpointSigned"),
              retention_ms=7 * DAY_MS, max_message_bytes=MAX_MESSAGE_BYTES),
    TopicSpec("entropy.private", 6, "source id", "qrng_ingest",
              ("EntropyChunkPublished", "EntropyCheckpointSigned"),
              retention_ms=3600 * 1000, max_message_bytes=MAX_MESSAGE_BYTES),
    TopicSpec("qrng.status", 3, "source id", "qrng_ingest",
              ("QrngHeartbeatEmitted", "QrngAlertRaised"), retention_ms=7 * DAY_MS),
    TopicSpec("chain.consensus", 1, "none (one partition)", "validator nodes",
              ("ProposalMade", "VoteCast"), retention_ms=FOREVER,
              max_message_bytes=MAX_MESSAGE_BYTES),
    TopicSpec("chain.blocks", 1, "height", "tally", ("BlockFinalized",),
              retention_ms=FOREVER, max_message_bytes=MAX_MESSAGE_BYTES),
    TopicSpec("chain.evidence", 1, "validator id", "tally / validators",
              ("DuplicateVoteEvidenceFound",), retention_ms=FOREVER),
    TopicSpec("ledger.tx", 6, "account", "gateway / clients", ("TransactionSubmitted",),
              retention_ms=FOREVER),
    TopicSpec("users.commands", 12, "user id", "gateway", ("UserCommandIssued",),
              retention_ms=7 * DAY_MS),
    TopicSpec("users.events", 12, "user id", "user command handler", ("UserEventRecorded",),
              retention_ms=FOREVER),
    TopicSpec("users.replies", 12, "user id", "user command handler",
              ("UserCommandAccepted", "UserCommandRejected"), retention_ms=DAY_MS),
    TopicSpec("dlq.entropy", 1, "original key", "entropy consumers", ("MessageDeadLettered",),
              retention_ms=30 * DAY_MS, max_message_bytes=MAX_MESSAGE_BYTES),
    TopicSpec("dlq.chain", 1, "original key", "consensus consumers", ("MessageDeadLettered",),
              retention_ms=30 * DAY_MS, max_message_bytes=MAX_MESSAGE_BYTES),
    TopicSpec("dlq.ledger", 1, "original key", "ledger consumers", ("MessageDeadLettered",),
              retention_ms=30 * DAY_MS),
    TopicSpec("dlq.users", 1, "original key", "user consumers", ("MessageDeadLettered",),
              retention_ms=30 * DAY_MS),
    # Compacted: the latest event per rule + subject stays (the open alerts after a restart);
    # a day of history is kept before compaction for `qustream alerts list --all`.
    TopicSpec("alerts", 1, "rule + subject", "monitor", ("AlertRaised", "AlertResolved"),
              retention_ms=FOREVER, cleanup_policy="compact",
              extra=(("min.compaction.lag.ms", str(DAY_MS)),)),
    # The changelog of the monitor's Faust table: its windows and positions, one key per piece.
    TopicSpec("monitor.state", 1, "state piece", "monitor", (), retention_ms=FOREVER,
              cleanup_policy="compact", max_message_bytes=MAX_MESSAGE_BYTES),
)

BY_NAME: dict[str, TopicSpec] = {spec.name: spec for spec in CATALOGUE}


def spec(name: str) -> TopicSpec:
    try:
        return BY_NAME[name]
    except KeyError as exc:
        raise KeyError(f"no topic {name!r} in the catalogue") from exc
