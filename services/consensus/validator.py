"""The validator node: one process per validator key, with its block builder inside.

Inputs (one consumer, assigned, never a consumer group: every node reads everything; one
``streams.runloop.RunLoop`` dispatches each record to the handler of its topic):
``chain.consensus`` (the round messages), ``chain.blocks`` (catch-up and fork alarm),
``chain.evidence``, ``ledger.tx`` (the mempool) and ``entropy.raw`` (the entropy pool).
The block builder of DESIGN.md section 3 is the part of this node that keeps the pool, mempool
and evidence (``BuilderState``) and proposes when the core says this key is the round's
proposer: proposing and voting share the one double-sign guard, so they live in one process.

Restart: the node takes the newest verified state snapshot and folds the rest of
``chain.blocks`` (verifying every block; ``snapshots.start_follower``) into its chain, then reads
``chain.consensus`` from the offset right after the precommit that completed the last finalized
block (every message of later heights is behind it: a validator only moves on after reading a
quorum of precommits from the log), and replays it through the core with its persisted
``SignerState``: what it signed before is re-sent byte-identical, nothing conflicting is signed.
``chain.evidence``, ``ledger.tx`` and ``entropy.raw`` are read from log times the chain state
gives (``input_start_times``), not from their beginning.

Commit order of the output edge (signature -> ``chain.consensus``): the core returns the new
signer state with each signed message; ``SignGuard.persist`` fsyncs it (on the guard's own
thread, ``GuardOutbox``, while the node goes on with the records after it); then the message is
produced: as soon as it is durable, at the latest at the end of the batch or tick (idempotent
producer, acks=all, linger 0; the run loop serves its delivery reports every turn and flushes it
on exit). Inputs are never committed: the position is re-derived from ``chain.blocks`` on start.

A poll's consecutive votes reach the core as runs (``ConsensusDriver.feed_votes``,
``state_machine.handle_votes``: the same states and outputs as one vote at a time, each output
dispatched with its own record); while a message of the node's own waits for the guard, the runs
are short (``OUTBOX_RUN``), so it still leaves a few votes after it is durable.

Timeouts run on the local monotonic clock and enter the core as ``TimeoutFired``. After a
decision the node waits ``block_interval_ms`` from the log time of the decision (so a
replaying node does not wait), and the commit window (``node.py``), before starting the next
height.

Every input is hostile until checked (each refusal is dead-lettered with its reason): the
mempool admits only what can pay and fits its rules (``mempool.py``), the evidence pool only
evidence that proves a double vote (``evidence_pool.py``), the entropy pool only chunks a signed
checkpoint covers — chunks held as candidates and then decided against by a checkpoint are
dead-lettered as ``losing_branch``, a source whose chain cannot be joined as
``unjoinable_chain`` — and the registry behind it follows the ledger after every block. A
``BlockFinalized`` that conflicts with an applied block without a valid certificate is
dead-lettered, never a reason to stop.
"""

from __future__ import annotations

import gc
import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.chain import ChainState
from protocol.codec import WireError
from protocol.commit import CommitFlag, record_sign_bytes
from protocol.entropy.chain import Chunk
from protocol.follow import BlockFollower, FollowError
from protocol.keys import SigningKey
from protocol.messages import Vote
from protocol.proposal import Proposal
from services.block_builder.pool import UnjoinableChainError
from services.block_builder.runtime import BlockBuilder, BuilderOptions, BuildInputs
from services.consensus.core.signer import SignerState
from services.consensus.core.state_machine import (
    BlockLogic,
    Broadcast,
    ConsensusConfig,
    Decided,
    EvidenceDetected,
    MessageRejected,
    Output,
    ProposalReceived,
    RejectionKind,
    TimeoutParams,
    VoteReceived,
)
from services.consensus.evidence_pool import EvidencePool, EvidenceRejectedError
from services.consensus.guard import GuardOutbox, SignGuard
from services.consensus.mempool import FUTURE_TTL_HEIGHTS, Mempool, MempoolRejectedError
from services.consensus.node import CONSUMER_LATENCY, ConsensusDriver, now_ms
from services.consensus.snapshots import StartReport, start_follower
from services.consensus.verification import VoteVerifier
from services.ledger.core.chain_spec import ChainSpec, source_registry
from services.ledger.core.state import LedgerState
from streams.chain_wire import decode_evidence_record, decode_finalized, encode_consensus
from streams.codec import CodecError, default_codec
from streams.dlq import DeadLetters
from streams.instance_lock import InstanceLock
from streams.kafka import KafkaProducer, Position, Record, make_consumer, make_producer
from streams.settings import Settings
from streams.signature_pool import Triple

log = logging.getLogger(__name__)

PRODUCER_LATENCY: dict[str, Any] = {"linger.ms": 0}
MAX_PENDING_CHUNK_RECORDS = 8192  # records of chunks held as candidates (for the DLQ)
MAX_PROPOSAL_TIMES = 64  # (height, round)s whose proposal's arrival is remembered (``_arrived``)
# Votes counted in one run while a message of the node's own waits for the guard: it leaves
# after the run during which it became durable (``handle_batch``).
OUTBOX_RUN = 8


@dataclass(frozen=True, slots=True)
class NodeOptions:
    timeouts: TimeoutParams = field(default_factory=lambda: TimeoutParams(
        propose_ms=1500, propose_delta_ms=500, prevote_ms=500, prevote_delta_ms=250,
        precommit_ms=500, precommit_delta_ms=250))
    block_interval_ms: int = 1000
    commit_window_ms: int = 1000  # awaits late precommits for the next last_commit (node.py)
    absent_window_ms: int = 300  # ... of validators absent from the previous last_commit
    builder: BuilderOptions = field(default_factory=BuilderOptions)
    from_genesis: bool = False  # fold chain.blocks from genesis, ignoring state snapshots
    entropy_lookback_ms: int = 600_000  # entropy.raw read from this long before the last
    # block on start (0: the whole topic); see ``input_start_times``


CLOCK_SKEW_MS = 60_000  # log times (the writers' clocks) against block times (proposers')


def input_start_times(chain: ChainState[Any], options: NodeOptions) -> dict[str, int]:
    """The log time from which a node starting at ``chain`` reads each input (issue 17: never
    the whole history), each less ``CLOCK_SKEW_MS``; an input missing here is read whole:

    - ``chain.evidence``: the block time of the oldest height of the evidence window (evidence
      of an older offence is refused anyway, and none is written before its offence);
    - ``ledger.tx``: the block time ``FUTURE_TTL_HEIGHTS`` heights back (or the window's
      oldest): a transaction not included by then either executed, went stale, or would have
      left the mempool; its sender resubmits;
    - ``entropy.raw``: ``options.entropy_lookback_ms`` before the last block (0: whole): chunks
      are included within seconds of their checkpoint, so the chunks the chain expects next
      are in that span (a source whose are not is reported unjoinable, as before).

    At genesis everything is read whole."""
    tip = chain.tip
    if tip.height <= 1 or not chain.history:
        return {}
    oldest = chain.history[0].time_ms
    ttl = chain.record_of(tip.height - 1 - FUTURE_TTL_HEIGHTS)
    starts = {"chain.evidence": oldest - CLOCK_SKEW_MS,
              "ledger.tx": (ttl.time_ms if ttl is not None else oldest) - CLOCK_SKEW_MS}
    if options.entropy_lookback_ms > 0:
        starts["entropy.raw"] = tip.previous_time_ms - options.entropy_lookback_ms - CLOCK_SKEW_MS
    return {name: max(0, at) for name, at in starts.items()}


class ValidatorNode(ConsensusDriver):
    """``producer`` and ``follower`` are made from ``settings`` unless given: a benchmark or a
    test hands in a recording producer and a follower at genesis, and drives the node through
    ``handle_batch`` and ``tick`` without a broker. ``verify_workers`` processes verify the
    signatures of each polled batch ahead of the core (``services.consensus.verification``);
    0 verifies in this process."""

    def __init__(self, settings: Settings, spec: ChainSpec, key: SigningKey, guard_path: Path,
                 options: NodeOptions = NodeOptions(), *, producer: KafkaProducer | None = None,
                 follower: BlockFollower[LedgerState] | None = None,
                 verify_workers: int = 0) -> None:
        # First, while this process may still have a single thread: the workers fork then.
        self.verifier = VoteVerifier(verify_workers)
        self.settings = settings
        self.key = key
        self.options = options
        # One process per key and state directory: the guard file is read once, at start, so
        # two processes would each guard only against itself (``streams.instance_lock``).
        self.instance = InstanceLock(
            guard_path.with_name(guard_path.name + ".lock"), f"validator {key.address.hex()}",
            "two processes signing with one key can sign two different votes in one round "
            "(double signing, which the chain slashes)")
        self.guard = SignGuard(guard_path, key.address)
        self.outbox: GuardOutbox[Proposal | Vote] = GuardOutbox(self.guard)
        self.name = f"validator-{key.address.hex()[:12]}"
        self.producer = producer or make_producer(settings, **PRODUCER_LATENCY)
        self.dlq_chain = DeadLetters(self.producer, settings.topic("dlq.chain"), self.name)
        self.dlq_entropy = DeadLetters(self.producer, settings.topic("dlq.entropy"), self.name)
        self.dlq_ledger = DeadLetters(self.producer, settings.topic("dlq.ledger"), self.name)
        self.start_report: StartReport | None = None
        if follower is None:
            follower, self.start_report = start_follower(settings, spec, guard_path.parent,
                                                         on_skip=self.dlq_chain.send,
                                                         full=options.from_genesis)
        self._sources = follower.chain.app_state.qrng_sources
        self.builder = BlockBuilder.for_registry(source_registry(follower.chain.app_state),
                                                 follower.chain, options.builder)
        # One for the node, not one per message: it binds the builder to ``_build_inputs``,
        # which reads the chain tip, the pools and the clock when a block is built or checked.
        self._logic = self.builder.logic(self._build_inputs)
        self.mempool = Mempool()
        self.evidence = EvidencePool()
        self._pending_chunks: dict[tuple[str, bytes], Record] = {}  # candidates' records
        super().__init__(ConsensusConfig(spec.chain_id, key, options.timeouts,
                                         check=self.verifier), follower,
                         options.block_interval_ms, options.commit_window_ms,
                         options.absent_window_ms)
        self._deferred: list[tuple[float, ProposalReceived, Record]] = []
        self._proposal_at: dict[tuple[int, int], float] = {}  # ``_arrived``
        topic = settings.topic
        self._handlers: dict[str, Callable[[Record], None]] = {
            topic("chain.consensus"): self._consensus,
            topic("chain.blocks"): self._blocks,
            topic("chain.evidence"): self._evidence,
            topic("ledger.tx"): self._transaction,
            topic("entropy.raw"): self._entropy,
        }
        self.codec = default_codec()
        self.sent = 0
        self.decided_heights = 0

    def initial_signer(self) -> SignerState:
        return self.guard.load()

    def logic(self) -> BlockLogic:
        return self._logic

    def _build_inputs(self) -> BuildInputs:
        return BuildInputs(self.follower.chain, self.follower.app, self.mempool.candidates(),
                           self.evidence.pending(), now_ms(), self.key.address, self.verifier)

    # -- outputs

    def on_outputs(self, outputs: Sequence[Output], source: Record | None) -> None:
        messages = [o.message for o in outputs if isinstance(o, Broadcast)]
        for message in messages:
            if isinstance(message, Proposal):
                self._arrived(message)  # its own: it reaches this node when made
            # its own signature, met again in the next block's last commit: known, not verified
            self.verifier.remember(self.key.public_key,
                                   message.sign_bytes(self.config.chain_id), message.signature)
        if messages:
            self.outbox.hold(self.state.signer, messages)  # leave once durable (``_send_durable``)
        for output in outputs:
            if isinstance(output, EvidenceDetected):
                try:
                    self.evidence.add(output.evidence, self.follower.chain)
                except EvidenceRejectedError as exc:  # outside the window by now
                    log.info("%s: own evidence not kept: %s", self.name, exc)

    def _send_durable(self, wait: bool) -> None:
        """Produce what the guard made durable (``GuardOutbox``); ``wait``: all of it. Called
        after every record of a batch (not waiting), at the end of a batch and of a tick."""
        messages = self.outbox.ready(wait)
        if not messages:
            return
        topic = self.settings.topic("chain.consensus")
        for message in messages:
            self.producer.produce(topic, encode_consensus(self.config.chain_id, message,
                                                          self.codec))
            self.sent += 1
        self.producer.poll(0)

    def on_rejected(self, rejection: MessageRejected, source: Record | None) -> None:
        if rejection.kind is RejectionKind.INVALID_BLOCK:
            # a node that refuses what the others accept is the first thing an operator looks
            # for when a height does not decide: say it where they look first, too
            log.warning("%s refused the block of a proposal: %s", self.name, rejection.reason)
        if source is not None:
            self.dlq_chain.send(source, rejection.kind, rejection.reason)

    def _arrived(self, proposal: Proposal) -> None:
        """Remember when the first proposal of a (height, round) reached this node, so the
        decision's log line can say how long deciding took from there: the span CometBFT logs
        from "Received proposal" to "Finalizing commit" (``bench.finality`` reads both). Only
        the height being decided and the next, at most ``MAX_PROPOSAL_TIMES`` (a flood of
        unverified proposals can only cost the figure, never memory)."""
        key = (proposal.height, proposal.round)
        if (0 <= proposal.height - self.follower.next_height <= 1
                and key not in self._proposal_at
                and len(self._proposal_at) < MAX_PROPOSAL_TIMES):
            self._proposal_at[key] = time.monotonic()

    def on_decided(self, decision: Decided, source: Record | None) -> None:
        arrived = self._proposal_at.pop((decision.height, decision.round), None)
        self._proposal_at = {k: at for k, at in self._proposal_at.items()
                             if k[0] > decision.height}
        since = ("" if arrived is None else
                 f", {(time.monotonic() - arrived) * 1000:.1f} ms after its proposal reached "
                 "this node")
        log.info("%s decided height %d round %d%s", self.name, decision.height, decision.round,
                 since)
        self.decided_heights += 1
        # Answers of this height stay: its late precommits come back in the next proposal.
        self.verifier.forget_before(decision.height)
        chain = self.follower.chain
        sources = chain.app_state.qrng_sources
        registry = None if sources is self._sources else source_registry(chain.app_state)
        self._sources = sources
        self.builder.advance(chain, registry)  # the registry follows the ledger, per height
        self._dead_letter_discarded(None)
        self.mempool.prune(decision.block.body.txs, chain.app_state, chain.tip.height)
        self.evidence.prune(chain, decision.block.body.evidence)

    def start_delay_s(self, decision: Decided, source: Record | None) -> float:
        logged_ms = source.timestamp_ms if source is not None else now_ms()
        return max(0.0, (logged_ms + self.block_interval_ms - now_ms()) / 1000)

    # -- inputs

    def _consensus(self, source: Record) -> None:
        self._feed_consensus(source, self.decode_input(source, self.codec, self.dlq_chain))

    def _feed_consensus(self, source: Record, decoded: Proposal | Vote | None) -> None:
        if decoded is None:
            return
        if isinstance(decoded, Proposal):
            self._arrived(decoded)
            event = ProposalReceived(decoded)
            if self.builder.missing(decoded.block.body.entropy):
                wait = self.options.builder.entropy_wait_ms / 1000
                self._deferred.append((time.monotonic() + wait, event, source))
                return
            self.feed(event, source)
        else:
            self.feed(VoteReceived(decoded), source)

    def _entropy(self, message: Record) -> None:
        try:
            schema, record = self.codec.decode(message.value)
        except CodecError as exc:
            self.builder.pool.count_rejection("malformed")
            self.dlq_entropy.send(message, exc)
            return
        try:
            accepted = self.builder.accept_entropy(schema, record)
        except UnjoinableChainError as exc:
            log.warning("%s: %s", self.name, exc)
            self.dlq_entropy.send(message, exc)
            for chunk in exc.verified:
                self._pending_chunks.pop((chunk.source_id, chunk.chunk_digest), None)
            accepted = None
        except ValueError as exc:  # EntropyRejectedError, or a record that is no chunk
            self.dlq_entropy.send(message, exc)
            return
        if isinstance(accepted, Chunk):  # a candidate until a checkpoint decides
            self._pending_chunks[(accepted.source_id, accepted.chunk_digest)] = message
            while len(self._pending_chunks) > MAX_PENDING_CHUNK_RECORDS:
                del self._pending_chunks[next(iter(self._pending_chunks))]
            return
        if accepted is not None:
            for chunk in accepted.verified:
                self._pending_chunks.pop((chunk.source_id, chunk.chunk_digest), None)
        self._dead_letter_discarded(message)

    def _dead_letter_discarded(self, source: Record | None) -> None:
        """Chunks held as candidates and then decided against (forged branches, or a source
        that left the registry): their own records go to the DLQ."""
        for chunk, error in self.builder.pool.take_discarded():
            record = self._pending_chunks.pop((chunk.source_id, chunk.chunk_digest), None)
            if record is not None:
                self.dlq_entropy.send(record, error)
            elif source is not None:
                log.info("%s: discarded %s without its record", self.name, error)

    def _transaction(self, message: Record) -> None:
        chain = self.follower.chain
        try:
            self.mempool.admit(message.value, chain.app_state, chain.tip.height)
        except MempoolRejectedError as exc:
            self.dlq_ledger.send(message, exc)

    def _blocks(self, message: Record) -> None:
        try:
            self.feed_finalized(decode_finalized(message.value, self.codec))
        except (WireError, FollowError) as exc:
            self.dlq_chain.send(message, exc)

    def _evidence(self, message: Record) -> None:
        try:
            item = decode_evidence_record(message.value, self.config.chain_id, self.codec)
            self.evidence.add(item, self.follower.chain)
        except (WireError, EvidenceRejectedError) as exc:
            self.dlq_chain.send(message, exc)

    def _tick(self) -> float:
        """Timers of the core and deferred proposals whose entropy arrived (or waited long
        enough); returns the seconds until the next timer."""
        wait = self.tick()
        self._release_deferred()
        self._send_durable(wait=True)
        return wait

    def _release_deferred(self) -> None:
        if not self._deferred:
            return
        now = time.monotonic()
        keep = []
        for deadline, event, source in self._deferred:
            if now >= deadline or not self.builder.missing(event.proposal.block.body.entropy):
                self.feed(event, source)
            else:
                keep.append((deadline, event, source))
        self._deferred = keep

    # -- the loop

    def handle_batch(self, records: Sequence[Record]) -> None:
        """One polled batch, in log order. Its consensus records are decoded first (the
        malformed ones dead-lettered then); with verification workers their signatures are
        sent ahead (module doc of ``services.consensus.verification``). Then every record is
        handled, consecutive votes as runs (``feed_votes``)."""
        consensus = self.settings.topic("chain.consensus")
        decoded: dict[int, Proposal | Vote | None] = {}
        for index, record in enumerate(records):
            if record.topic == consensus:
                message = self.decode_input(record, self.codec, self.dlq_chain)
                decoded[index] = message
                if message is not None and self.verifier.workers:
                    self.verifier.expect(self._triples(message), message.height)
        self.verifier.flush()
        index = 0
        while index < len(records):
            message = decoded.get(index)
            if isinstance(message, Vote):
                votes: list[tuple[Vote, Record]] = []
                while isinstance(message, Vote):
                    votes.append((message, records[index + len(votes)]))
                    message = decoded.get(index + len(votes))
                while votes:
                    # While a message of its own waits for the guard, short runs: it leaves
                    # a few votes after it became durable, not at the end of the batch.
                    handled = self.feed_votes(votes[:OUTBOX_RUN] if self.outbox else votes)
                    index += handled
                    del votes[:handled]
                    if self.outbox:
                        self._send_durable(wait=False)
                continue
            if index in decoded:
                self._feed_consensus(records[index], message)
            else:
                self._handlers[records[index].topic](records[index])
            index += 1
            if self.outbox:
                self._send_durable(wait=False)
        self._send_durable(wait=True)

    def tick(self) -> float:
        wait = super().tick()
        self._send_durable(wait=True)
        return wait

    def _triples(self, message: Proposal | Vote) -> list[Triple]:
        """What the core will ask about ``message``: its signature and, for a proposal, the
        signatures of the last commit its block carries (own votes come back verified)."""
        chain = self.follower.chain
        if message.height == chain.tip.height:
            validators = chain.validators
        elif message.height == chain.tip.height + 1:
            validators = chain.next_validators
        else:
            return []  # a decided height (dropped), or too far ahead to guess the set
        chain_id = self.config.chain_id
        if isinstance(message, Vote):
            voter = validators.get(message.validator_address)
            if voter is None or voter.address == self.key.address:
                return []
            return [(voter.public_key, message.sign_bytes(chain_id), message.signature)]
        proposer = validators.get(message.proposer_address)
        triples = [] if proposer is None else [
            (proposer.public_key, message.sign_bytes(chain_id), message.signature)]
        commit = message.block.body.last_commit
        previous = chain.record_of(message.height - 1)
        if commit is not None and previous is not None and len(commit.signatures) == len(
                previous.validators):
            triples.extend(
                (validator.public_key, record_sign_bytes(chain_id, commit, record),
                 record.signature)
                for record, validator in zip(commit.signatures, previous.validators.validators,
                                             strict=True)
                if record.flag is not CommitFlag.ABSENT)
        return triples

    def settle(self) -> None:
        """Wait until the verification workers answered everything sent (benchmarks)."""
        self.verifier.settle()

    def close(self) -> None:
        """Stop the verification workers, close the guard file and let the next process of this
        key in (``run`` does it on the way out)."""
        self.verifier.close()
        self.outbox.close()
        self.guard.close()
        self.instance.release()

    def assignments(self) -> list[Position]:
        """Where each input is read from: ``chain.consensus`` and ``chain.blocks`` from the
        follower's position, the others from the log time ``input_start_times`` gives (the
        first record at or after it, found by Kafka's time index, never by a scan; the end of
        a partition with nothing that late; its beginning without a time)."""
        s = self.settings
        parts = [
            Position(s.topic("chain.consensus"), 0, self.consensus_resume_offset),
            Position(s.topic("chain.blocks"), 0, self.follower.last_offset + 1),
        ]
        starts = input_start_times(self.follower.chain, self.options)
        consumer = make_consumer(s, f"{self.name}-meta")
        try:
            for name in ("chain.evidence", "ledger.tx", "entropy.raw"):
                topic = s.topic(name)
                for partition in consumer.partitions(topic):
                    at = starts.get(name)
                    offset = 0 if at is None else consumer.offset_for_time(topic, partition, at)
                    if offset is None:
                        offset = consumer.watermarks(topic, partition)[1]
                    parts.append(Position(topic, partition, offset))
        finally:
            consumer.close()
        return parts

    def run(self, duration_s: float | None = None) -> None:
        freeze_startup_heap()
        consumer = make_consumer(self.settings, f"{self.name}-{time.time_ns()}",
                                 **CONSUMER_LATENCY)
        consumer.assign(self.assignments())
        try:
            self.run_loop(consumer, self.handle_batch, self.producer, tick=self._tick,
                          duration_s=duration_s,
                          consensus_topic=self.settings.topic("chain.consensus"))
        finally:
            self.close()


def freeze_startup_heap() -> None:
    """Take what start-up loaded (chain state, validator sets, keys, caches) out of the cyclic
    garbage collector's view (``gc.freeze``, which CPython's docs suggest for long-lived
    processes), so a full collection walks what the node allocated since, not everything: one
    took about 40 ms in a 64-validator node, every few dozen heights (``bench.validator_scale``).
    Frozen objects are still freed by reference counting; ``gc.unfreeze`` undoes it."""
    gc.collect()
    gc.freeze()


def run_validator(settings: Settings, genesis: Path, key_path: Path, state_dir: Path,
                  options: NodeOptions = NodeOptions(), duration_s: float | None = None, *,
                  verify_workers: int = 0) -> ValidatorNode:
    """Build and run a validator until SIGTERM/SIGINT (or ``duration_s``)."""
    key = SigningKey.load(key_path)
    node = ValidatorNode(settings, ChainSpec.load(genesis), key,
                         state_dir / f"signer-{key.address.hex()}.json", options,
                         verify_workers=verify_workers)
    signal.signal(signal.SIGTERM, lambda *_: node.stop())
    signal.signal(signal.SIGINT, lambda *_: node.stop())
    node.run(duration_s)
    return node
