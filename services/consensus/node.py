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
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from protocol.block import Block
from protocol.codec import WireError
from protocol.commit import CommitCertificate
from protocol.finalized import FinalizedRecord
from protocol.follow import BlockFollower
from protocol.messages import Vote
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
    handle,
    initial_state,
)
from streams.chain_wire import decode_consensus
from streams.codec import Codec
from streams.dlq import DeadLetters
from streams.kafka import KafkaConsumer, KafkaProducer, Record
from streams.runloop import RunLoop, by_topic

log = logging.getLogger(__name__)

MAX_LATER = 20_000  # messages kept for heights the core cannot buffer yet


def now_ms() -> int:
    return int(time.time() * 1000)


class ConsensusDriver:
    """Feeds the core; subclasses implement ``logic``, ``on_outputs`` and ``on_decided``.

    ``use_timeouts`` False (the tally) ignores the core's timeouts: an observer's round does
    not matter for deciding, and leaving the clock out keeps its output a function of the log.
    """

    use_timeouts = True

    def __init__(self, config: ConsensusConfig, follower: BlockFollower,
                 block_interval_ms: int = 0) -> None:
        self.config = config
        self.follower = follower
        self.block_interval_ms = block_interval_ms
        chain = follower.chain
        self.state: ConsensusState = initial_state(
            chain.tip.height, chain.validators, follower.priorities, self.initial_signer())
        self._timers: list[tuple[float, int, TimeoutFired]] = []
        self._sequence = itertools.count()
        self._later: list[Event] = []
        self._start_at: float | None = 0.0  # monotonic time to start the next height
        self._finalized: dict[int, FinalizedRecord] = {}
        self.rejected: dict[str, int] = {}
        self._source: Record | None = None
        self.stop_event = threading.Event()

    # -- hooks

    def initial_signer(self) -> Any:
        return None

    def logic(self) -> BlockLogic:
        raise NotImplementedError

    def on_outputs(self, outputs: Sequence[Output], source: Record | None) -> None:
        """Called with every output batch before decisions are applied."""

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
                 duration_s: float | None = None) -> None:
        """Feed the core from ``consumer`` (one handler per topic, or one for each polled
        batch) until ``stop`` or ``duration_s``; the consumer is closed and the producer flushed
        on the way out."""
        log.info("%s starting at height %d", consumer.name, self.follower.next_height)
        handle = by_topic(handlers) if isinstance(handlers, Mapping) else handlers
        try:
            RunLoop(consumer, handle, producer=producer, tick=tick,
                    after_batch=after_batch, stop_event=self.stop_event).run(duration_s=duration_s)
        finally:
            consumer.close()

    # -- inputs

    @property
    def height(self) -> int:
        return self.state.height

    def decode_input(self, record: Record, codec: Codec,
                     dead_letters: DeadLetters) -> Proposal | Vote | None:
        """The proposal or vote a ``chain.consensus`` record carries; None when it is
        malformed (then it was dead-lettered)."""
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
                if len(self._later) < MAX_LATER:
                    self._later.append(event)
                return
        if source is not None:
            self._source = source
        state, outputs = handle(self.config, self.logic(), self.state, event)
        self.state = state
        # Inputs the core replays from its own buffer (at StartHeight) are attributed to the
        # record being handled when the height started: the same for every reader of the log.
        self._dispatch(outputs, source if source is not None else self._source)

    def feed_finalized(self, record: FinalizedRecord) -> None:
        """A block from ``chain.blocks``: lets a node that is behind catch up (the core checks
        the certificate against the current set)."""
        if record.height < self.follower.next_height:
            known = self.follower.hashes.get(record.height)
            if known is not None and known != record.block.hash:
                log.error("FORK ALARM: height %d finalized %s, applied %s", record.height,
                          record.block.hash.hex(), known.hex())
                self.rejected["fork"] = self.rejected.get("fork", 0) + 1
            return
        self._finalized[record.height] = record
        if len(self._finalized) > 1_000:
            del self._finalized[min(self._finalized)]
        self._try_commit()

    def _try_commit(self) -> None:
        record = self._finalized.get(self.state.height)
        if record is not None and self.state.step not in (Step.NEW, Step.COMMITTED):
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
        if delay <= 0:
            self._start_at = None
            self._start_height()  # no interval (tally, replay): start within this input
        else:
            self._start_at = time.monotonic() + delay

    def start_delay_s(self, decision: Decided, source: Record | None) -> float:
        return self.block_interval_ms / 1000

    def tick(self) -> float:
        """Fire due timers and a due height start; returns seconds until the next timer."""
        now = time.monotonic()
        if self._start_at is not None and now >= self._start_at:
            self._start_at = None
            self._start_height()
        while self._timers and self._timers[0][0] <= now:
            _, _, fired = heapq.heappop(self._timers)
            if fired.height == self.state.height:
                self.feed(fired)
        waits = [0.05]
        if self._timers:
            waits.append(self._timers[0][0] - now)
        if self._start_at is not None:
            waits.append(self._start_at - now)
        return max(0.0, min(waits))

    def _start_height(self) -> None:
        chain = self.follower.chain
        if self.state.step is not Step.NEW and self.state.height == chain.tip.height:
            return
        self.feed(StartHeight(chain.tip.height, chain.validators))
        self._timers = [t for t in self._timers if t[2].height >= self.state.height]
        heapq.heapify(self._timers)
        later, self._later = self._later, []
        for event in later:
            self.feed(event)
        self._try_commit()

    def decided_block(self) -> tuple[Block, CommitCertificate] | None:
        decision = self.state.decision
        return None if decision is None else (decision.block, decision.commit)
