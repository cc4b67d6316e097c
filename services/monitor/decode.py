"""Kafka records of the watched topics -> the core's facts (the monitor's only parsing).

Only what the rules need is taken: chunk metadata (never the payload), heartbeat counters,
proposal and precommit coordinates, the certificates of finalized blocks, transaction digests
and dead-letter reasons. A record that does not decode gives no fact and is counted by topic
(``undecodable``), as every consumer must survive bad input; a finalized block that does not
decode is a ``BlockRejected``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

from protocol.codec import WireError
from protocol.entropy.chain import Checkpoint, ChunkFormatError
from services.monitor.core.facts import (
    BlockRejected,
    CheckpointSeen,
    ChunkSeen,
    DeadLettered,
    Fact,
    HeartbeatSeen,
    PrecommitSeen,
    ProposalSeen,
    QrngAlertSeen,
    TxsIncluded,
    TxSubmitted,
)
from services.monitor.ledger import LedgerView, block_seen
from streams.chain_wire import decode_finalized
from streams.codec import Codec, CodecError, default_codec
from streams.settings import Settings
from streams.topics import CATALOGUE

INPUTS: tuple[str, ...] = (
    "qrng.status", "entropy.raw", "chain.consensus", "chain.blocks", "ledger.tx",
    *(t.name for t in CATALOGUE if t.name.startswith("dlq.")),
)


@dataclass(frozen=True, slots=True)
class Record:
    """A consumed record, independent of the Kafka client that read it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    value: bytes | None


class RecordDecoder:
    def __init__(self, settings: Settings, ledger: LedgerView | None = None,
                 codec: Codec | None = None) -> None:
        self._codec = codec or default_codec()
        self._ledger = ledger
        self._names = {settings.topic(name): name for name in INPUTS}
        self.undecodable: Counter[str] = Counter()

    def topics(self) -> tuple[str, ...]:
        """The full names of the watched topics."""
        return tuple(self._names)

    def names(self) -> dict[str, str]:
        """Full topic name -> catalogue name."""
        return dict(self._names)

    def facts(self, record: Record) -> tuple[Fact, ...]:
        name = self._names.get(record.topic, "")
        try:
            if name == "chain.blocks":
                return self._block(record)
            return self._facts(name, record)
        except (CodecError, ChunkFormatError, KeyError, TypeError, ValueError):
            self.undecodable[name] += 1
            return ()

    def _facts(self, name: str, record: Record) -> tuple[Fact, ...]:
        schema, r = self._codec.decode(record.value)
        match schema:
            case "QrngHeartbeatEmitted":
                return (HeartbeatSeen(r["source_id"], r["at_ms"], r["bytes_per_s"],
                                      r["health_state"], r["rct_failures"], r["apt_failures"],
                                      r["last_seq"]),)
            case "QrngAlertRaised":
                return (QrngAlertSeen(r["source_id"], r["at_ms"], r["kind"], r["test"]),)
            case "EntropyChunkPublished" if not r["private"]:
                return (ChunkSeen(r["source_id"], r["seq"], len(r["payload"]),
                                  r["produced_at_ms"]),)
            case "EntropyCheckpointSigned" if not r["private"]:
                return (CheckpointSeen(r["source_id"], r["last_seq"], r["signed_at_ms"],
                                       self._verify(r)),)
            case "ProposalMade":
                return (ProposalSeen(r["height"], r["round"], r["proposer"].hex(),
                                     record.timestamp_ms),)
            case "VoteCast" if r["vote_type"] == "PRECOMMIT":
                return (PrecommitSeen(r["height"], r["round"], r["validator"].hex(),
                                      r["block_hash"] is not None, record.timestamp_ms),)
            case "TransactionSubmitted":
                return (TxSubmitted(hashlib.sha256(r["tx"]).hexdigest(), r["submitted_at_ms"]),)
            case "MessageDeadLettered" if name.startswith("dlq."):
                return (DeadLettered(name, r["error_type"], r["dead_lettered_at_ms"]),)
        return ()

    def _verify(self, record: dict[str, object]) -> bool | None:
        if self._ledger is None:
            return None
        checkpoint = Checkpoint.from_record(record)
        entry = self._ledger.registry().get(checkpoint.source_id)
        return entry is not None and entry.public_key.verify(checkpoint.message(),
                                                             checkpoint.signature)

    def _block(self, record: Record) -> tuple[Fact, ...]:
        try:
            finalized = decode_finalized(record.value, self._codec)
        except WireError as exc:
            self.undecodable["chain.blocks"] += 1
            if self._ledger is None:
                return (BlockRejected(-1, str(exc), record.timestamp_ms),)
            return self._ledger.rejected(record.offset, -1, str(exc), record.timestamp_ms)
        included = TxsIncluded(finalized.height,
                               tuple(hashlib.sha256(tx).hexdigest()
                                     for tx in finalized.block.body.txs),
                               finalized.finalized_at_ms)
        if self._ledger is None:
            return (block_seen(finalized), included)
        facts = self._ledger.follow(finalized, record.offset)
        return (*facts, included) if facts and not isinstance(facts[0], BlockRejected) else facts
