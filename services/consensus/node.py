"""What the validator and the tally share: driving the pure consensus core from Kafka records.

``ConsensusDriver`` owns one ``ConsensusState`` and one ``BlockFollower`` (the applied chain).
It turns records of ``chain.consensus`` into core inputs, keeps messages of heights the core
cannot buffer yet (two or more ahead; the core itself buffers height + 1), feeds local
timeouts, applies decisions and starts the next height. Subclasses say what to do with the
outputs (sign and send, or write the finalized block).

Why a plain run loop (``streams.runloop``) and not Faust here (issue 5, item 4):
``chain.consensus`` has one partition by design, so there is no parallelism for Faust's agents
to exploit; every message needs a signature check and a step of a synchronous pure state
machine, and the latency target (p99 <= 300 ms over three Kafka hops: proposal, prevotes,
precommits) leaves little room for an asyncio/aiokafka layer plus changelog writes. The state
that Faust tables would hold (vote sets, pools) is rebuilt by replaying the inputs:
``chain.blocks`` gives the applied chain and the offset where the last height was decided,
``chain.consensus`` from there gives the current height's messages. The measured numbers are
in ``bench/finality.py``.

Commit window (what the next block's ``last_commit`` holds). The core decides, and the tally
certifies, at the precommit that completes +2/3 — so that certificate names only the first
quorum, and a healthy validator whose precommit comes a moment later is recorded ABSENT there.
Liveness accounting and rewards must not read that race. So, as CometBFT does in its
``timeout_commit``, a node that decided keeps counting precommits of the deciding round and
starts the next height only once every validator's precommit is in or ``commit_window_ms`` has
passed (measured from the log time of the deciding record, so a replaying node does not wait;
never before the block interval). Validators the decided block's own ``last_commit`` records as
absent (down, or late beyond the window at the previous height) are awaited only
``absent_window_ms``: one validator that is down costs each height that shorter wait, while a
healthy validator that was late once is awaited the full window again as soon as it is back in
a certificate (``awaited_precommits``); the proposer then carries ``commit_for_next_height``: the
decision's certificate with every later precommit for the block, or for nil, of that round
added (the ledger counts a nil precommit as signed, as Cosmos does).

Why this still verifies and stays deterministic: every added record is a precommit whose
signature the core verified, for the decided block (or nil) in the certificate's own round, so
``verify_commit`` accepts the extended certificate exactly when it accepts the decision's (the
COMMIT power only grows). Which late precommits a proposer saw depends on its timing, but the
choice is made once, inside the proposed block, and fixed by consensus on that block: every
reader of the chain sees the same ``last_commit`` bytes. The tally's own certificate in
``BlockFinalized`` is unchanged — still the precommits counted at the log offset that completes
the quorum — so every tally instance reading the same log writes the same bytes; validators and
the audit accept any valid +2/3 certificate as ``last_commit`` (``protocol.chain``).

Bounded buffers: messages of heights the core cannot take yet are kept only for height + 2, at
most ``MAX_LATER_PER_SENDER`` per claimed sender (their set is not known yet, so they cannot be
verified here); farther ones are dropped and counted. A ``BlockFinalized`` at an applied height
with another hash is a fork alarm only when its certificate verifies against that height's set
(``protocol.follow.conflict_error``); otherwise it raises ``UnverifiedConflictError`` for the
caller to dead-letter.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from protocol.block import Block
from protocol.check import check_commit
from protocol.codec import WireError
from protocol.commit import CommitCertificate, CommitFlag
from protocol.finalized import FinalizedRecord
from protocol.follow import BlockFollower, FollowError, ForkError, conflict_error
from protocol.messages import Vote, VoteType
from protocol.proposal import Proposal
from services.consensus.core.state_machine import (
    BlockLogic,
    CommitReceived,
    ConsensusConfig,
    ConsensusState,
    Decided,
    Event,
    MessageRejected,
    Output,
    ProposalReceived,
    RejectionKind,
    ScheduleTimeout,
    StartHeight,
    Step,
    TimeoutFired,
    VoteReceived,
    all_precommits_in,
    commit_for_next_height,
    handle,
    handle_votes,
    initial_state,
    precommits_in,
)
from streams.chain_wire import decode_consensus
from streams.codec import Codec
from streams.dlq import DeadLetters
from streams.errors import KafkaOperationError
from streams.kafka import KafkaConsumer, KafkaProducer, Position, Record
from streams.runloop import RunLoop, by_topic

log = logging.getLogger(__name__)

MAX_LATER = 20_000  # messages kept for height + 2, which the core cannot buffer yet
MAX_LATER_PER_SENDER = 64
MAX_FINALIZED_PER_HEIGHT = 4  # BlockFinalized candidates kept for a height not reached yet
# A height undecided this long is reported in the log, and again each time as long again has
# passed: what the node has counted and what it read last, for the operator to compare with
# the other nodes' reports (a silent node otherwise says nothing while it waits for votes).
STALL_REPORT_S = 20.0
MAX_STARTS_PER_INPUT = 64  # heights one input may start in a row (``_start_height``)

# The consumer settings of the validator and the tally. A fetch is answered as soon as one byte
# is there (fetch.min.bytes 1), so the wait only bounds an empty fetch: a short one adds nothing
# to latency but turns every idle consumer into a loop of empty fetches over all its partitions
# (every 5 ms from each node at 5 ms): broker and client CPU that the nodes' signature checks
# need when they share a machine (docs/performance.md, finality).
CONSUMER_LATENCY: dict[str, Any] = {"fetch.wait.max.ms": 500, "fetch.min.bytes": 1}


def now_ms() -> int:
    return int(time.time() * 1000)


def awaited_precommits(block: Block) -> frozenset[bytes] | None:
    """The validators whose precommits the full commit window awaits after ``block``: those its
    ``last_commit`` records as signed (for the block or nil); None (no ``last_commit``, height
    1) means everyone. The others were absent at the previous height: down, or late by more than the
    window; they get ``absent_window_ms``, so a validator that is down does not slow every
    height by the full window, while a healthy one that was late once is awaited again as soon
    as it is back in a certificate."""
    commit = block.body.last_commit
    if commit is None:
        return None
    return frozenset(record.validator_address for record in commit.signatures
                     if record.flag is not CommitFlag.ABSENT)


class ConsensusDriver:
    """Feeds the core; subclasses implement ``logic``, ``on_outputs`` and ``on_decided``.

    ``use_timeouts`` False (the tally) ignores the core's timeouts: an observer's round does
    not matter for deciding, and leaving the clock out keeps its output a function of the log.
    """

    use_timeouts = True

    def __init__(self, config: ConsensusConfig, follower: BlockFollower,
                 block_interval_ms: int = 0, commit_window_ms: int = 0,
                 absent_window_ms: int | None = None) -> None:
        self.config = config
        self.follower = follower
        self.block_interval_ms = block_interval_ms
        self.commit_window_ms = commit_window_ms
        self.absent_window_ms = (commit_window_ms if absent_window_ms is None
                                 else min(absent_window_ms, commit_window_ms))
        chain = follower.chain
        self.state: ConsensusState = initial_state(
            chain.tip.height, chain.validators, follower.priorities, self.initial_signer())
        self._timers: list[tuple[float, int, TimeoutFired]] = []
        self._sequence = itertools.count()
        self._later: list[Event] = []
        self._later_senders: dict[bytes, int] = {}
        self._start_at: float | None = 0.0  # monotonic time to start the next height
        self._starting = False  # inside _start_height (a decision then flags the next start)
        self._start_again = False
        self._commit_until = 0.0  # monotonic end of the commit window of the decided height
        self._absent_until = 0.0  # ... for validators absent from the previous certificate
        self._awaited: frozenset[bytes] = frozenset()  # present in the previous certificate
        self._finalized: dict[int, list[FinalizedRecord]] = {}
        # the record of each proposal fed, by (height, round): an invalid block is judged when
        # a rule fires, which may be on a later input, and is dead-lettered with its own record
        self._proposal_records: dict[tuple[int, int], Record] = {}
        self.rejected: dict[str, int] = {}
        self._source: Record | None = None
        self._progress_at = time.monotonic()  # the last decision (or the start)
        self._stall_reported_at = 0.0
        self._consumer: KafkaConsumer | None = None  # while ``run_loop`` runs
        self._consensus_topic: str | None = None
        self._consensus_next: int | None = None  # offset after the last consensus record read
        self._consensus_read_at = time.monotonic()
        self.stop_event = threading.Event()

    # -- hooks

    def initial_signer(self) -> Any:
        return None

    def logic(self) -> BlockLogic:
        raise NotImplementedError

    def on_outputs(self, outputs: Sequence[Output], source: Record | None) -> None:
        """Called with every non-empty output batch before decisions are applied."""

    def on_decided(self, decision: Decided, source: Record | None) -> None:
        """Called after the decided block was applied to ``self.follower``."""

    def on_rejected(self, rejection: MessageRejected, source: Record | None) -> None:
        """A message the core refused for a reason other than being stale."""

    # -- the loop

    def stop(self) -> None:
        self.stop_event.set()

    @property
    def consensus_resume_offset(self) -> int:
        """Where ``chain.consensus`` is read from: right after the message that completed the
        last finalized block (every message of later heights is behind it)."""
        last = self.follower.last
        return 0 if last is None else last.consensus_offset + 1

    def run_loop(self, consumer: KafkaConsumer,
                 handlers: Mapping[str, Callable[[Record], None]]
                 | Callable[[Sequence[Record]], None],
                 producer: KafkaProducer, *, tick: Callable[[], float],
                 after_batch: Callable[[], object] | None = None,
                 duration_s: float | None = None, consensus_topic: str | None = None) -> None:
        """Feed the core from ``consumer`` (one handler per topic, or one for each polled
        batch) until ``stop`` or ``duration_s``; the consumer is closed and the producer flushed
        on the way out. With ``consensus_topic`` (partition 0 assigned to ``consumer``) a
        stalled height also checks that the consumer still fetches it (``_refetch_if_stuck``)."""
        log.info("%s starting at height %d", consumer.name, self.follower.next_height)
        handle = by_topic(handlers) if isinstance(handlers, Mapping) else handlers
        self._consumer, self._consensus_topic = consumer, consensus_topic
        try:
            RunLoop(consumer, handle, producer=producer, tick=tick,
                    after_batch=after_batch, stop_event=self.stop_event).run(duration_s=duration_s)
        finally:
            self._consumer = None
            consumer.close()

    # -- inputs

    @property
    def height(self) -> int:
        return self.state.height

    def decode_input(self, record: Record, codec: Codec,
                     dead_letters: DeadLetters) -> Proposal | Vote | None:
        """The proposal or vote a ``chain.consensus`` record carries; None when it is
        malformed (then it was dead-lettered)."""
        self._consensus_next, self._consensus_read_at = record.offset + 1, time.monotonic()
        try:
            return decode_consensus(record.value, self.config.chain_id, codec)
        except WireError as exc:
            dead_letters.send(record, exc)
            return None

    def feed(self, event: Event, source: Record | None = None) -> None:
        """Hand one input to the core (or keep it until its height is near)."""
        if isinstance(event, ProposalReceived | VoteReceived):
            message: Proposal | Vote = (
                event.proposal if isinstance(event, ProposalReceived) else event.vote)
            if message.height < self.state.height:
                return  # late message of a decided height: nothing to do
            if message.height >= self.state.height + 2:
                self._keep_for_later(event, message)
                return
        if source is not None:
            self._source = source
            if isinstance(event, ProposalReceived):
                self._proposal_records.setdefault(
                    (event.proposal.height, event.proposal.round), source)
                while len(self._proposal_records) > 1_000:
                    del self._proposal_records[next(iter(self._proposal_records))]
        state, outputs = handle(self.config, self.logic(), self.state, event)
        self.state = state
        if not outputs:  # most votes of a large network: counted, nothing to do
            return
        # Inputs the core replays from its own buffer (at StartHeight) are attributed to the
        # record being handled when the height started: the same for every reader of the log.
        self._dispatch(outputs, source if source is not None else self._source)

    def feed_votes(self, votes: Sequence[tuple[Vote, Record]]) -> int:
        """Hand consecutive votes (each with its record) to the core as ``feed`` would, one by
        one, up to and including the first that has outputs (dispatched, attributed to its
        record); returns how many were handled. Votes of the height being decided and the next
        go to the core as runs (``handle_votes``: one state built per run, not per vote)."""
        vote, source = votes[0]
        low, high = self.state.height, self.state.height + 1
        if not low <= vote.height <= high:
            self.feed(VoteReceived(vote), source)
            return 1
        end = 1
        while end < len(votes) and low <= votes[end][0].height <= high:
            end += 1
        state, outputs, used = handle_votes(self.config, self.logic(), self.state,
                                            [vote for vote, _ in votes[:end]])
        self.state = state
        self._source = votes[used - 1][1]
        if outputs:
            self._dispatch(outputs, self._source)
        return used

    def _keep_for_later(self, event: Event, message: Proposal | Vote) -> None:
        """Hold a message of height + 2 (module doc); anything farther is dropped."""
        sender = (message.proposer_address if isinstance(message, Proposal)
                  else message.validator_address)
        held = self._later_senders.get(sender, 0)
        if (message.height == self.state.height + 2 and len(self._later) < MAX_LATER
                and held < MAX_LATER_PER_SENDER):
            self._later.append(event)
            self._later_senders[sender] = held + 1
        else:
            self.rejected["too_far_ahead"] = self.rejected.get("too_far_ahead", 0) + 1

    def feed_finalized(self, record: FinalizedRecord) -> None:
        """A block from ``chain.blocks``: lets a node that is behind catch up (the core checks
        the certificate against the current set). Raises ``FollowError`` for a record to
        dead-letter: a conflicting block nobody signed (module doc), or a certificate for the
        height being decided that does not verify; a verified fork is logged as an alarm."""
        follower = self.follower
        if record.height < follower.next_height:
            known = follower.hashes.get(record.height)
            if known is not None and known != record.block.hash:
                error = conflict_error(record, known, follower.sets.get(record.height))
                if not isinstance(error, ForkError):
                    raise error
                log.error("FORK ALARM: %s", error)
                self.rejected["fork"] = self.rejected.get("fork", 0) + 1
            return
        if record.height == follower.next_height:
            finding = check_commit(self.config.chain_id, follower.chain.validators, record.block,
                                   record.commit, self.config.check)
            if finding is not None:
                raise FollowError(f"block {record.height}: {finding.reason}")
        candidates = self._finalized.setdefault(record.height, [])
        if len(candidates) < MAX_FINALIZED_PER_HEIGHT and record not in candidates:
            candidates.append(record)
        while len(self._finalized) > 1_000:
            del self._finalized[min(self._finalized)]
        self._try_commit()

    def _try_commit(self) -> None:
        height = self.state.height
        for record in list(self._finalized.get(height, ())):
            if self.state.height != height or self.state.step in (Step.NEW, Step.COMMITTED):
                return
            self.feed(CommitReceived(record.block, record.commit))

    def _dispatch(self, outputs: Sequence[Output], source: Record | None) -> None:
        self.on_outputs(outputs, source)
        for output in outputs:
            if isinstance(output, ScheduleTimeout):
                if not self.use_timeouts:
                    continue
                deadline = time.monotonic() + output.duration_ms / 1000
                heapq.heappush(self._timers, (deadline, next(self._sequence), TimeoutFired(
                    output.height, output.round, output.step)))
            elif isinstance(output, Decided):
                self._apply(output, source)
            elif isinstance(output, MessageRejected):
                self._rejected(output, source)

    def _rejected(self, rejection: MessageRejected, source: Record | None) -> None:
        event = rejection.event
        if isinstance(event, ProposalReceived | VoteReceived):
            message = event.proposal if isinstance(event, ProposalReceived) else event.vote
            if (message.height < self.state.height
                    or rejection.kind is RejectionKind.FUTURE_BUFFER_FULL):
                return
            if rejection.kind is RejectionKind.INVALID_BLOCK:
                source = self._proposal_records.get((message.height, message.round), source)
            self.rejected["message"] = self.rejected.get("message", 0) + 1
            self.on_rejected(rejection, source)
        elif isinstance(event, CommitReceived):
            return  # a commit we no longer need, or one that does not verify: never trusted
        else:
            log.warning("core refused %s: %s", type(event).__name__, rejection.reason)

    def _apply(self, decision: Decided, source: Record | None) -> None:
        if decision.height != self.follower.next_height:
            return
        self._finalized.pop(decision.height, None)
        self.follower.apply(decision.block, decision.commit)
        self.on_decided(decision, source)
        delay = self.start_delay_s(decision, source)
        now = time.monotonic()
        self._commit_until = now + self.commit_window_s(decision, source)
        self._absent_until = now + self.commit_window_s(decision, source,
                                                        self.absent_window_ms)
        self._progress_at = now
        awaited = awaited_precommits(decision.block)
        self._awaited = (frozenset(v.address for v in self.state.validators.validators)
                         if awaited is None else awaited)
        if delay <= 0 and self._commit_closed(now):
            self._start_at = None
            self._start_height()  # no interval (tally, replay): start within this input
        else:
            self._start_at = now + max(delay, 0.0)

    def start_delay_s(self, decision: Decided, source: Record | None) -> float:
        return self.block_interval_ms / 1000

    def commit_window_s(self, decision: Decided, source: Record | None,
                        window_ms: int | None = None) -> float:
        """How long precommits of the decided height are still awaited (module doc)."""
        window_ms = self.commit_window_ms if window_ms is None else window_ms
        if window_ms <= 0:
            return 0.0
        logged_ms = source.timestamp_ms if source is not None else now_ms()
        return max(0.0, (logged_ms + window_ms - now_ms()) / 1000)

    def _commit_closed(self, now: float) -> bool:
        if now >= self._commit_until or all_precommits_in(self.state):
            return True
        return now >= self._absent_until and precommits_in(self.state, self._awaited)

    def tick(self) -> float:
        """Fire due timers and a due height start; returns seconds until the next timer."""
        now = time.monotonic()
        if (self._start_at is not None and now >= self._start_at
                and self._commit_closed(now)):
            self._start_at = None
            self._start_height()
        while self._timers and self._timers[0][0] <= now:
            _, _, fired = heapq.heappop(self._timers)
            if fired.height == self.state.height:
                before = self.state.round
                self.feed(fired)
                if self.state.height == fired.height and self.state.round > before:
                    # what an operator reads when a height does not decide in round 0
                    log.info("height %d: round %d %s timed out, round %d", fired.height,
                             fired.round, fired.step.name.lower(), self.state.round)
        if now - max(self._progress_at, self._stall_reported_at) >= STALL_REPORT_S:
            self._stall_reported_at = now
            log.warning("%s", self.stall_report(now))
            self._refetch_if_stuck(now)
        waits = [0.05]
        if self._timers:
            waits.append(self._timers[0][0] - now)
        if self._start_at is not None:
            waits.append(self._start_wait(now))
        return max(0.0, min(waits))

    def stall_report(self, now: float) -> str:
        """One line on an undecided height: round, step, what was counted in this round and
        when the next height may start or the next timer fires, and the last consensus record
        read (what ``_refetch_if_stuck`` judges)."""
        state = self.state
        counted = {vote_type.name.lower(): len(state.votes.get(state.round, vote_type).votes)
                   for vote_type in (VoteType.PREVOTE, VoteType.PRECOMMIT)}
        read = ("nothing" if self._consensus_next is None
                else f"offset {self._consensus_next - 1}, "
                     f"{now - self._consensus_read_at:.0f} s ago")
        timer = (f"{self._timers[0][0] - now:.1f} s" if self._timers else "none")
        start = ("-" if self._start_at is None else f"{self._start_at - now:.1f} s")
        return (f"height {state.height} undecided for {now - self._progress_at:.0f} s: round "
                f"{state.round} step {state.step.name.lower()}, proposal "
                f"{'seen' if state.round in state.proposals else 'none'}, prevotes "
                f"{counted['prevote']}/{len(state.validators)}, precommits "
                f"{counted['precommit']}/{len(state.validators)}, next timer {timer}, height "
                f"start {start}, last consensus input {read}")

    def _refetch_if_stuck(self, now: float) -> None:
        """Nothing read from ``chain.consensus`` for ``STALL_REPORT_S`` while the topic holds
        records past this node's position: the consumer's fetcher is stuck (a partition can
        stay in a fetch state that never fetches; a node that decides only through
        ``chain.blocks`` then votes nowhere, and once its votes are needed the chain halts
        without a timeout ever firing). Seeking to the position restarts the fetch; it is
        logged, and it re-reads nothing that was handled."""
        consumer, topic = self._consumer, self._consensus_topic
        if consumer is None or topic is None or now - self._consensus_read_at < STALL_REPORT_S:
            return
        position = (self.consensus_resume_offset if self._consensus_next is None
                    else self._consensus_next)
        try:
            end = consumer.watermarks(topic, 0, timeout_s=5.0)[1]
            if end <= position:
                return  # read to the end: the others are silent, not this consumer stuck
            log.warning("%s: nothing read from %s for %.0f s while it holds offsets %d..%d: "
                        "fetching from %d again", consumer.name, topic,
                        now - self._consensus_read_at, position, end - 1, position)
            consumer.seek(Position(topic, 0, position))
        except KafkaOperationError as exc:
            log.warning("%s: checking the fetch of %s failed: %s", consumer.name, topic, exc)

    def _start_wait(self, now: float) -> float:
        """Seconds until the next height may start without another input: the start time and,
        while the commit window is open, its next deadline still ahead (the absent validators'
        then everyone's). A precommit that closes the window arrives as an input, which ends
        the poll anyway; waiting on a deadline already passed would spin the loop."""
        start_at = self._start_at if self._start_at is not None else now
        if self._commit_closed(now):
            return start_at - now
        deadline = min(t for t in (self._absent_until, self._commit_until) if t > now)
        return max(start_at, deadline) - now

    def _start_height(self) -> None:
        """Start the next height, and the ones that decide as they start (on inputs the core
        had buffered, as a tally catching up has; a lone validator deciding its own proposal):
        in a loop, not a recursion per height, within this input as before, but at most
        ``MAX_STARTS_PER_INPUT`` (then the next tick goes on), so a lone validator without a
        block interval still returns to its run loop."""
        if self._starting:
            self._start_again = True  # decided while starting: the loop below starts the next
            return
        self._starting = True
        try:
            for _ in range(MAX_STARTS_PER_INPUT):
                self._start_again = False
                self._start_next_height()
                if not self._start_again:
                    return
            self._start_at = time.monotonic()
        finally:
            self._starting = False

    def _start_next_height(self) -> None:
        chain = self.follower.chain
        if self.state.step is not Step.NEW and self.state.height == chain.tip.height:
            return
        extended = commit_for_next_height(self.state)
        if (extended is not None and chain.last_commit is not None
                and extended is not chain.last_commit
                and (extended.height, extended.block_hash) == (chain.last_commit.height,
                                                               chain.last_commit.block_hash)):
            # the next block carries every precommit the window collected (module doc)
            self.follower.chain = dataclasses.replace(chain, last_commit=extended)
        self.feed(StartHeight(chain.tip.height, chain.validators, chain.next_validators))
        self._timers = [t for t in self._timers if t[2].height >= self.state.height]
        heapq.heapify(self._timers)
        later, self._later, self._later_senders = self._later, [], {}
        for event in later:
            self.feed(event)
        self._try_commit()

    def decided_block(self) -> tuple[Block, CommitCertificate] | None:
        decision = self.state.decision
        return None if decision is None else (decision.block, decision.commit)
