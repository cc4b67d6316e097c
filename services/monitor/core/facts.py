"""What the monitor learns from the topics: one small immutable fact per input record.

The shell decodes each Kafka record (Avro, the chain wire format) into one fact and hands it to
the core with its ``Position``; the core never sees bytes on the wire. Addresses are lowercase
hex strings, times are milliseconds since the Unix epoch (UTC), taken from the events
themselves, never from a clock.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Position:
    """Where a record was read: topic (full name), partition and offset."""

    topic: str
    partition: int
    offset: int

    @property
    def key(self) -> str:
        return f"{self.topic}:{self.partition}"


# ---------------------------------------------------------------- QRNG sources


@dataclass(frozen=True, slots=True)
class HeartbeatSeen:
    """``QrngHeartbeatEmitted``: counters are totals since the ingest process started."""

    source_id: str
    at_ms: int
    bytes_per_s: float
    health_state: str  # STARTUP, HEALTHY, QUARANTINED, STALLED
    rct_failures: int
    apt_failures: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class QrngAlertSeen:
    """``QrngAlertRaised`` as the ingest server reported it about itself."""

    source_id: str
    at_ms: int
    kind: str  # HEALTH_FAILURE, RATE_BELOW_FLOOR, STALLED, RECOVERED
    test: str | None


@dataclass(frozen=True, slots=True)
class ChunkSeen:
    """The metadata of one ``EntropyChunkPublished`` of the public pool (no payload)."""

    source_id: str
    seq: int
    size: int
    produced_at_ms: int


@dataclass(frozen=True, slots=True)
class CheckpointSeen:
    """``EntropyCheckpointSigned``; ``verified`` is None when no key is known for the source
    (the monitor runs without a genesis), False when the signature does not verify."""

    source_id: str
    last_seq: int
    signed_at_ms: int
    verified: bool | None


# ---------------------------------------------------------------- chain


@dataclass(frozen=True, slots=True)
class ProposalSeen:
    height: int
    round: int
    proposer: str
    at_ms: int  # log time of the record


@dataclass(frozen=True, slots=True)
class PrecommitSeen:
    height: int
    round: int
    validator: str
    for_block: bool  # False: a precommit for nil
    at_ms: int


@dataclass(frozen=True, slots=True)
class BlockSeen:
    """A ``BlockFinalized`` with what its certificates say.

    ``validators`` is the set of the height (every entry of the commit certificate, in its
    canonical order); ``signed`` those whose precommit for the block is in it.
    ``previous_signed`` are the COMMIT entries of the previous height's certificate carried in
    the block (``last_commit``), which may hold precommits that arrived after the quorum.
    ``round_proposers`` names, for each round before the deciding one, the validator whose
    turn it was to propose (empty when the monitor does not follow the ledger)."""

    height: int
    round: int
    proposer: str
    block_time_ms: int
    proposed_at_ms: int
    finalized_at_ms: int
    validators: tuple[str, ...]
    signed: tuple[str, ...]
    previous_signed: tuple[str, ...]
    round_proposers: tuple[str, ...]
    double_signers: tuple[str, ...]  # validators named by duplicate-vote evidence in the block
    tx_digests: tuple[str, ...]
    pulse_status: int = 0  # protocol.pulse status of the block's randomness (0: all good)


@dataclass(frozen=True, slots=True)
class BlockRejected:
    """A ``BlockFinalized`` that does not verify against the followed chain (fork, gap,
    invalid certificate or state hash)."""

    height: int
    reason: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class ValidatorStatusSeen:
    """The ledger's record of a validator after block ``height`` (monitor with genesis)."""

    validator: str
    height: int
    at_ms: int
    tokens: int
    jailed: bool
    tombstoned: bool


# ---------------------------------------------------------------- mempool and dead letters


@dataclass(frozen=True, slots=True)
class TxSubmitted:
    digest: str  # SHA-256 of the canonical signed transaction, hex
    at_ms: int


@dataclass(frozen=True, slots=True)
class TxsIncluded:
    """The transactions of a finalized block (the mempool's view of ``BlockSeen``)."""

    height: int
    digests: tuple[str, ...]
    at_ms: int


@dataclass(frozen=True, slots=True)
class DeadLettered:
    """A ``MessageDeadLettered`` on one of the ``dlq.*`` topics."""

    dlq: str  # catalogue name without prefix, e.g. "dlq.chain"
    reason: str  # the error type the consumer gave (a short stable code)
    at_ms: int


SourceFact = HeartbeatSeen | QrngAlertSeen | ChunkSeen | CheckpointSeen
ChainFact = ProposalSeen | PrecommitSeen | BlockSeen | BlockRejected | ValidatorStatusSeen
Fact = SourceFact | ChainFact | TxSubmitted | TxsIncluded | DeadLettered
