"""The tally: turns ``chain.consensus`` into the public chain on ``chain.blocks``.

It runs the consensus core as an observer (no key): every proposal and vote is checked against
the validator set of its height (signature, membership, proposer), conflicting votes become
``DuplicateVoteEvidence``, and a block is decided when +2/3 of the power precommitted it in one
round (L49) and its proposal was seen. The tally never judges blocks: honest precommitters did.

Determinism: the certificate is the set of precommits of the deciding round that the core has
counted at the log offset where the quorum is first reached, in validator order; the log times
written are those of the proposal and of that precommit. ``chain.consensus`` has one partition,
so every tally instance sees the same order and writes the same ``BlockFinalized`` bytes (a
restarted instance can differ only in precommits of Byzantine validators sent before the previous
height ended, which it does not replay; the block is the same, so consumers deduplicate by height
and hash, and a different hash at one height is a fork alarm — see ``follower.py``).

Exactly once per height (the edge ``chain.consensus -> chain.blocks``): the tally's position is
its own output. On start it folds ``chain.blocks`` (verifying every block) and reads
``chain.consensus`` from right after the ``consensus_offset`` of the last block. Each decision
is written in a Kafka transaction (``transactional.id`` per instance, so a zombie of the same
instance is fenced) together with the evidence and dead letters produced since the previous
one; a crash before the commit aborts it and the restarted tally decides that height again from
the log. Evidence may be written twice across a restart; it is identified by its hash.

Why a confluent-kafka loop and not Faust: see ``services/consensus/node.py``.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Message, TopicPartition

from services.block_builder.core.block import Block
from services.consensus.core.messages import Proposal
from services.consensus.core.state_machine import (
    ConsensusConfig,
    Decided,
    EvidenceDetected,
    MessageRejected,
    Output,
    ProposalReceived,
    VoteReceived,
)
from services.consensus.follower import BlockFollower, ChainSpec, catch_up
from services.consensus.node import ConsensusDriver
from services.consensus.node import drain as _drain
from services.consensus.wire import (
    FinalizedRecord,
    WireError,
    decode_consensus,
    encode_evidence,
    encode_finalized,
    height_key,
)
from streams.codec import default_codec
from streams.dlq import DeadLetters
from streams.kafka import make_consumer, make_producer, run_transaction
from streams.settings import Settings

log = logging.getLogger(__name__)


class _Observer:
    """The tally's ``BlockLogic``: never proposes, accepts every block (see module doc)."""

    def propose(self, height: int, round: int) -> Block:
        raise AssertionError("an observer never proposes")

    def validate(self, block: Block) -> str | None:
        return None


class Tally(ConsensusDriver):
    use_timeouts = False

    def __init__(self, settings: Settings, spec: ChainSpec, instance: str = "0") -> None:
        self.settings = settings
        self.instance = instance
        self.codec = default_codec()
        # Prefixed like the topics: tallies of different chains on one cluster must not fence
        # each other, and the Helm chart's ACLs grant transactional ids by the topic prefix.
        self.producer = make_producer(settings,
                                      transactional_id=f"{settings.topic_prefix}tally.{instance}",
                                      **{"linger.ms": 0})
        self._pending: list[tuple[str, bytes | None, bytes]] = []
        self.dlq = DeadLetters(_Collector(self._pending), settings.topic("dlq.chain"),
                               f"tally-{instance}")
        skipped: list[tuple[Message, Exception]] = []
        follower = catch_up(settings, BlockFollower.start(spec),
                            on_skip=lambda m, e: skipped.append((m, e)))
        for message, error in skipped:
            self.dlq.send_message(message, str(error), type(error).__name__)
        super().__init__(ConsensusConfig(spec.chain_id, None), follower, 0)
        self._proposed_at: dict[bytes, int] = {}
        self._evidence_seen: set[bytes] = set()
        self._stop = False
        self.written = 0
        self._flush()

    def logic(self) -> _Observer:
        return _Observer()

    def on_outputs(self, outputs: Sequence[Output], source: Any) -> None:
        for output in outputs:
            if isinstance(output, EvidenceDetected):
                key = output.evidence.hash()
                if key not in self._evidence_seen:
                    self._evidence_seen.add(key)
                    self._pending.append((
                        self.settings.topic("chain.evidence"),
                        output.evidence.validator_address,
                        encode_evidence(self.config.chain_id, output.evidence, self.codec)))

    def on_rejected(self, rejection: MessageRejected, source: Any) -> None:
        if isinstance(source, _Logged):
            self.dlq.send_message(source.message, rejection.reason, "rejected_by_core")

    def on_decided(self, decision: Decided, source: Any) -> None:
        assert isinstance(source, _Logged)
        record = FinalizedRecord(
            chain_id=self.config.chain_id,
            block=decision.block,
            commit=decision.commit,
            state_hash=self.follower.chain.tip.app_hash,
            consensus_offset=int(source.message.offset() or 0),
            proposed_at_ms=self._proposed_at.get(decision.block.hash, source.timestamp_ms),
            finalized_at_ms=source.timestamp_ms,
        )
        self.follower.last = record
        self._pending.append((self.settings.topic("chain.blocks"), height_key(record.height),
                              encode_finalized(record, self.codec)))
        self._proposed_at = {}
        self._flush()
        self.written += 1

    def _flush(self) -> None:
        """Write everything pending in one transaction (see the module doc); a transaction
        that a broker failure aborts is written again (``run_transaction``)."""
        if not self._pending:
            return

        def fill() -> None:
            for topic, key, value in self._pending:
                self.producer.produce(topic, value=value, key=key)

        run_transaction(self.producer, fill, what="tally transaction")
        self._pending.clear()

    def _consensus(self, message: Message) -> None:
        source = _Logged(message)
        try:
            decoded = decode_consensus(message.value(), self.config.chain_id, self.codec)
        except WireError as exc:
            self.dlq.send_message(message, str(exc), "malformed")
            return
        if isinstance(decoded, Proposal):
            self._proposed_at.setdefault(decoded.block_hash, source.timestamp_ms)
            self.feed(ProposalReceived(decoded), source)
        else:
            self.feed(VoteReceived(decoded), source)

    def stop(self) -> None:
        self._stop = True

    def run(self, duration_s: float | None = None) -> None:
        topic = self.settings.topic("chain.consensus")
        consumer = make_consumer(self.settings, f"tally-{self.instance}-{time.time_ns()}",
                                 **{"fetch.wait.max.ms": 5, "fetch.min.bytes": 1})
        last = self.follower.last
        consumer.assign([TopicPartition(topic, 0, 0 if last is None else
                                        last.consensus_offset + 1)])
        started = time.monotonic()
        log.info("tally %s starting at height %d", self.instance, self.follower.next_height)
        try:
            while not self._stop:
                if duration_s is not None and time.monotonic() - started > duration_s:
                    break
                self.tick()
                for message in _drain(consumer, 0.05):
                    if not message.error():
                        self._consensus(message)
                if len(self._pending) > 0 and not self._stop:
                    self._flush()  # evidence and dead letters between decisions
        finally:
            consumer.close()
            self._flush()
            self.producer.flush(10)


@dataclass(frozen=True, slots=True)
class _Logged:
    message: Message

    @property
    def timestamp_ms(self) -> int:
        return int(self.message.timestamp()[1])


@dataclass(frozen=True, slots=True)
class _Collector:
    """A ``DeadLetters`` producer that queues records for the next transaction."""

    pending: list[tuple[str, bytes | None, bytes]]

    def produce(self, topic: str, value: bytes | None = None, key: Any = None,
                **kwargs: Any) -> None:
        assert value is not None
        self.pending.append((topic, key, value))


def run_tally(settings: Settings, genesis: Path, instance: str = "0",
              duration_s: float | None = None) -> Tally:
    tally = Tally(settings, ChainSpec.load(genesis), instance)
    signal.signal(signal.SIGTERM, lambda *_: tally.stop())
    signal.signal(signal.SIGINT, lambda *_: tally.stop())
    tally.run(duration_s)
    return tally
