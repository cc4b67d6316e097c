"""The topic catalogue: the one source of truth for every topic of DESIGN.md section 3.

Names are relative (``chain.blocks``) and prefixed at run time (default ``qs.``). The Helm chart's
KafkaTopic resources are generated from and checked against this catalogue.

Retention is only as good as the segments behind it: Kafka deletes whole closed segments, and
rolls a segment only when it reaches ``segment.bytes`` or, on the next append, is older than
``segment.ms`` (default 7 days, 1 GiB). So every topic with a finite retention gets a
``segment.ms`` of at most ``1 / SEGMENT_FRACTION`` of it: no record outlives its retention by
more than that segment time plus the broker's ``log.retention.check.interval.ms``, at any write
rate. Dead-letter topics are sized for the largest message they wrap plus the envelope.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DAY_MS = 24 * 3600 * 1000
FOREVER = -1
MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # 1 MiB chunks plus headers; blocks carry many digests
DEFAULT_MESSAGE_BYTES = 1024 * 1024
SEGMENT_FRACTION = 10  # segment.ms <= retention.ms / SEGMENT_FRACTION
MAX_SEGMENT_MS = DAY_MS  # long retentions still roll daily: deletion in day-sized steps
FOREVER_SEGMENT_MS = 7 * DAY_MS  # Kafka's default; kept explicit so drift is reported
SEGMENT_BYTES = 128 * 1024 * 1024  # finite retention: fine-grained deletion at high rates
FOREVER_SEGMENT_BYTES = 1024 * 1024 * 1024  # Kafka's default; nothing is deleted anyway
# What MessageDeadLettered adds around the original key and value: the reason (capped by
# streams.dlq.MAX_REASON_BYTES) in the record and in a header, the key again as the DLQ key,
# names, numbers, the Avro header and Kafka's record overhead.
DLQ_ENVELOPE_BYTES = 64 * 1024
# users.snapshots: a segment is compacted only once rolled (see the catalogue entry)
SNAPSHOT_SEGMENT_BYTES = 64 * 1024 * 1024
SNAPSHOT_SEGMENT_MS = 3600 * 1000


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
    max_message_bytes: int = DEFAULT_MESSAGE_BYTES
    extra: tuple[tuple[str, str], ...] = field(default=())
    dead_letters_of: tuple[str, ...] = ()  # a DLQ: the topics whose messages it wraps
    # A writer writes it in Kafka transactions: each commit marker takes an offset no consumer
    # receives, so consecutive records may be offsets apart (a reader that checks its delivery
    # for holes, as the monitor does, must not take those for lost records).
    transactional: bool = False

    @property
    def segment_ms(self) -> int:
        if self.retention_ms == FOREVER:
            return FOREVER_SEGMENT_MS
        return max(1, min(MAX_SEGMENT_MS, self.retention_ms // SEGMENT_FRACTION))

    @property
    def segment_bytes(self) -> int:
        return FOREVER_SEGMENT_BYTES if self.retention_ms == FOREVER else SEGMENT_BYTES

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
            "segment.ms": str(self.segment_ms),
            "segment.bytes": str(self.segment_bytes),
            "unclean.leader.election.enable": "false",
        }
        configs.update(dict(self.extra))
        return configs


_DATA: tuple[TopicSpec, ...] = (
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
              retention_ms=FOREVER, max_message_bytes=MAX_MESSAGE_BYTES, transactional=True),
    # Compacted: every chunk of every kept snapshot (the tally tombstones the older ones).
    TopicSpec("chain.snapshots", 1, "height + chunk", "tally", ("StateSnapshotChunk",),
              retention_ms=FOREVER, cleanup_policy="compact",
              max_message_bytes=MAX_MESSAGE_BYTES, transactional=True),
    TopicSpec("chain.evidence", 1, "validator id", "tally / validators",
              ("DuplicateVoteEvidenceFound",), retention_ms=FOREVER, transactional=True),
    TopicSpec("ledger.tx", 6, "account", "gateway / clients", ("TransactionSubmitted",),
              retention_ms=FOREVER),
    TopicSpec("users.commands", 12, "user id", "gateway", ("UserCommandIssued",),
              retention_ms=7 * DAY_MS),
    TopicSpec("users.events", 12, "user id", "user command handler", ("UserEventRecorded",),
              retention_ms=FOREVER, transactional=True),
    TopicSpec("users.replies", 12, "user id", "user command handler",
              ("UserCommandAccepted", "UserCommandRejected"), retention_ms=DAY_MS,
              transactional=True),
    # Compacted: the newest snapshot of each users.events partition, in pieces keyed
    # "<partition>/<piece>" (services/shard_writer/snapshots.py). One partition, so a key's place
    # is the same for every client; small segments, so what a restart reads beyond the live
    # snapshots (the active segment and what the cleaner has not reached) stays small.
    TopicSpec("users.snapshots", 1, "users.events partition / piece", "user command handler",
              ("UserPartitionSnapshotted",), retention_ms=FOREVER, cleanup_policy="compact",
              extra=(("segment.bytes", str(SNAPSHOT_SEGMENT_BYTES)),
                     ("segment.ms", str(SNAPSHOT_SEGMENT_MS))), transactional=True),
    # Compacted: the latest event per rule + subject stays (the open alerts after a restart);
    # a day of history is kept before compaction for `qustream alerts list --all`.
    TopicSpec("alerts", 1, "rule + subject", "monitor", ("AlertRaised", "AlertResolved"),
              retention_ms=FOREVER, cleanup_policy="compact",
              extra=(("min.compaction.lag.ms", str(DAY_MS)),)),
    # The changelog of the monitor's Faust table: its windows and positions, one key per piece.
    TopicSpec("monitor.state", 1, "state piece", "monitor", (), retention_ms=FOREVER,
              cleanup_policy="compact", max_message_bytes=MAX_MESSAGE_BYTES),
)


def _dead_letters(name: str, writer: str, wraps: tuple[str, ...],
                  transactional: bool = False) -> TopicSpec:
    """A DLQ whose max.message.bytes holds the largest message of the topics it wraps."""
    largest = max(t.max_message_bytes for t in _DATA if t.name in wraps)
    return TopicSpec(name, 1, "original key", writer, ("MessageDeadLettered",),
                     retention_ms=30 * DAY_MS, max_message_bytes=largest + DLQ_ENVELOPE_BYTES,
                     dead_letters_of=wraps, transactional=transactional)


CATALOGUE: tuple[TopicSpec, ...] = (
    *_DATA,
    _dead_letters("dlq.entropy", "entropy consumers",
                  ("entropy.raw", "entropy.private", "qrng.status")),
    _dead_letters("dlq.chain", "consensus consumers",
                  ("chain.consensus", "chain.blocks", "chain.evidence", "chain.snapshots"),
                  transactional=True),  # the tally's dead letters, in its transaction
    _dead_letters("dlq.ledger", "ledger consumers", ("ledger.tx",)),
    _dead_letters("dlq.users", "user consumers",
                  ("users.commands", "users.events", "users.replies", "users.snapshots"),
                  transactional=True),  # the command handler's, in its transaction
    _dead_letters("dlq.monitor", "monitor", ("alerts", "monitor.state")),
)

BY_NAME: dict[str, TopicSpec] = {spec.name: spec for spec in CATALOGUE}


def spec(name: str) -> TopicSpec:
    try:
        return BY_NAME[name]
    except KeyError as exc:
        raise KeyError(f"no topic {name!r} in the catalogue") from exc
