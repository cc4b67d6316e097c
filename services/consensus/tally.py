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
its own output. On start it takes the newest verified snapshot and folds the rest of
``chain.blocks`` (verifying every block; ``services.consensus.snapshots``) and reads
``chain.consensus`` from right after the ``consensus_offset`` of the last block. Each decision
is written in one ``streams.transactions.TransactionalBatch`` (``transactional.id`` per
instance, so a zombie of the same instance is fenced) together with the evidence and dead
letters collected since the previous one, and, after every ``snapshot_interval_blocks``
heights, the state snapshot's chunks on ``chain.snapshots``: step 1 begin, step 2 produce
them, step 3 flush, step 6 commit (no offsets join it, steps 4 and 5 are empty: the position is
the output). Evidence
and dead letters between decisions are written the same way after each polled batch. A crash
before the commit aborts it and the restarted tally decides that height again from the log; an
abortable error keeps the outputs pending and the next batch writes them again. Evidence may
be written twice across a restart; it is identified by its hash.

Why a plain run loop and not Faust: see ``services/consensus/node.py``.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from protocol.block import Block
from protocol.finalized import FinalizedRecord
from protocol.proposal import Proposal
from services.consensus.core import state_machine as sm
from services.consensus.node import CONSUMER_LATENCY, ConsensusDriver
from services.consensus.snapshots import SnapshotWriter, read_chunks, start_follower
from services.ledger.core.chain_spec import ChainSpec
from streams.chain_wire import encode_evidence, encode_finalized, height_key
from streams.codec import default_codec
from streams.dlq import DeadLetters
from streams.kafka import Position, Record, make_consumer, make_producer
from streams.settings import Settings
from streams.transactions import PendingOutputs, TransactionalBatch

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
        self.batch = TransactionalBatch(self.producer)
        self._pending = PendingOutputs()
        self.dlq = DeadLetters(self._pending, settings.topic("dlq.chain"), f"tally-{instance}")
        chunks = read_chunks(settings, self.dlq.send)
        follower, self.start_report = start_follower(
            settings, spec, settings.state_dir / f"tally-{instance}", on_skip=self.dlq.send,
            chunks=chunks)
        self.spec_app = spec.app
        self.snapshots = SnapshotWriter(lambda state: state.params.snapshot_interval_blocks,
                                        f"tally-{instance}", chunks)
        super().__init__(sm.ConsensusConfig(spec.chain_id, None), follower, 0)
        self._proposed_at: dict[bytes, int] = {}
        self._evidence_seen: set[bytes] = set()
        self.written = 0
        self._flush()

    def logic(self) -> _Observer:
        return _Observer()

    def on_outputs(self, outputs: Sequence[sm.Output], source: Record | None) -> None:
        for output in outputs:
            if isinstance(output, sm.EvidenceDetected):
                key = output.evidence.hash()
                if key not in self._evidence_seen:
                    self._evidence_seen.add(key)
                    self._pending.produce(
                        self.settings.topic("chain.evidence"),
                        encode_evidence(self.config.chain_id, output.evidence, self.codec),
                        output.evidence.validator_address)

    def on_rejected(self, rejection: sm.MessageRejected, source: Record | None) -> None:
        if source is not None:
            self.dlq.send(source, rejection.kind, rejection.reason)

    def on_decided(self, decision: sm.Decided, source: Record | None) -> None:
        assert source is not None
        record = FinalizedRecord(
            chain_id=self.config.chain_id,
            block=decision.block,
            commit=decision.commit,
            state_hash=self.follower.chain.tip.app_hash,
            consensus_offset=source.offset,
            proposed_at_ms=self._proposed_at.get(decision.block.hash, source.timestamp_ms),
            finalized_at_ms=source.timestamp_ms,
        )
        self.follower.last = record
        self._pending.produce(self.settings.topic("chain.blocks"),
                              encode_finalized(record, self.codec), height_key(record.height))
        for key, value in self.snapshots.records_after(self.follower, self.spec_app):
            self._pending.produce(self.settings.topic("chain.snapshots"), value, key)
        self._proposed_at = {}
        self._flush()
        self.written += 1

    def _flush(self) -> None:
        """Write everything pending in one transactional batch (see the module doc); on an
        abort it stays pending for the next call."""
        if self._pending and self.batch.run(self._pending.write_to):
            self._pending.clear()

    def _consensus(self, source: Record) -> None:
        decoded = self.decode_input(source, self.codec, self.dlq)
        if decoded is None:
            return
        if isinstance(decoded, Proposal):
            self._proposed_at.setdefault(decoded.block_hash, source.timestamp_ms)
            self.feed(sm.ProposalReceived(decoded), source)
        else:
            self.feed(sm.VoteReceived(decoded), source)

    def run(self, duration_s: float | None = None) -> None:
        topic = self.settings.topic("chain.consensus")
        consumer = make_consumer(self.settings, f"tally-{self.instance}-{time.time_ns()}",
                                 **CONSUMER_LATENCY)
        consumer.assign([Position(topic, 0, self.consensus_resume_offset)])
        # after each batch: evidence and dead letters collected between decisions
        self.run_loop(consumer, {topic: self._consensus}, self.producer, tick=self.tick,
                      after_batch=self._flush, duration_s=duration_s, consensus_topic=topic)


def run_tally(settings: Settings, genesis: Path, instance: str = "0",
              duration_s: float | None = None) -> Tally:
    tally = Tally(settings, ChainSpec.load(genesis), instance)
    signal.signal(signal.SIGTERM, lambda *_: tally.stop())
    signal.signal(signal.SIGINT, lambda *_: tally.stop())
    tally.run(duration_s)
    return tally
