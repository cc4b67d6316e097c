"""The user command handler: ``users.commands`` -> ``users.events`` (the Kafka -> Kafka edge).

Guarantee: Kafka transactions. A batch's events, replies, dead letters and the consumed command
offsets are committed atomically, and every downstream consumer reads ``read_committed``, so a
command is applied exactly once however often the handler dies.

Commit order of one batch (``CommandHandler.process``): the run loop polls at most
``max_batch`` commands, then one ``streams.transactions.TransactionalBatch`` runs its steps:

1. begin;
2. produce the outputs: per command, against a *working copy* of the per-user state: size
   check, decode, signature, idempotency, ``decide``; its event to ``users.events`` (same key,
   same partition number as the command), or its rejection to ``users.replies``, or the
   original bytes to ``dlq.users`` with the typed reason (a forged signature is also answered
   with a rejection, so whoever waits for the command learns it at once; it is not remembered
   against the idempotency key, which would let a forger block the genuine command);
3. flush: the events' offsets are now known;
4. one ``UserCommandAccepted`` reply per accepted command, naming its event's offset (for
   read-your-own-writes); a repeated command (same idempotency key and content) is answered
   here too, with the offset of its user's latest event, which is at or after the event the
   command produced the first time: reading at that position sees the command's effect;
5. the next command offsets join the transaction with the group metadata (a zombie of an older
   group generation is fenced here);
6. commit; only now does the working copy become the state.

On an abortable error the transaction is aborted, the working copy dropped and the consumer
rewound to the batch's first offsets; a retriable error of steps 5-6 (the transaction or group
coordinator moving to another broker) repeats that step; a step 5 that hangs (librdkafka can
wait for a dead group coordinator forever) replaces the producer, whose ``init_transactions``
aborts the transaction (it was never committed: step 6 had not started), and the batch is
rewound; a fatal error (fenced producer) ends the process.

Lag: step 5 commits the consumer's position where it stepped over the command writer's
transaction markers, and a turn without commands commits a position that moved past markers
alone in an offsets-only transaction (``TransactionalBatch.commit_idle_positions``), so a
caught-up handler's group lag, against the log end offset, reads 0.

State (``core.partition``): on assignment of command partition ``p`` the state of its users is
the fold of ``users.events`` partition ``p`` (``read_committed``, until its end) and of the
rejections already answered on ``users.replies`` partition ``p``: so "a repeated idempotency key
returns the first outcome" holds across restarts (rejections of authenticated commands, the
newest ``MAX_REJECTIONS`` per partition; accepted commands within the last ``COMMAND_WINDOW``
commands of a user). A batch works on a ``BatchState`` over the partition's state (what it
touches, not a copy of it). A stable ``transactional.id`` per instance (``--instance-id``) makes
a restarted instance abort its predecessor's open transaction before it rebuilds.

Snapshots (``snapshots``, ``core.snapshot``), so a restart costs the users, not the events:

- written with committed state only (a batch's working copy folds in after step 6), each in a
  transaction of its own, after a turn once a partition folded at least
  ``max(snapshot_every, its users)`` events since its last snapshot (so writing them costs a
  bounded share of the events, and a restart folds about that many at most), and for every
  partition with anything new when it is revoked or the handler closes. A snapshot so never
  covers an event that did not commit, and a kill at any instant leaves the previous one the
  newest;
- on assignment, the newest complete snapshot of each partition is assembled and checked (its
  digest, strict decoding, a state shaped like a fold); the events (of all the partitions in one
  read, as the replies: a read has a fixed cost, a consumer and its metadata) are then read from
  ``events_offset - 1``: that record must be the snapshot's newest event (so a snapshot of
  another log, or one that holds more or less than it claims, is refused), the rest must follow
  each user's version (``evolve`` refuses an event applied twice), and the replies are read from
  ``replies_offset``. A snapshot that fails any of this is logged, dead-lettered with its reason
  (``snapshot_rejected``), and the next older one or the full fold from offset 0 is used;
- ``--full`` (``full_rebuild``) ignores the snapshots and folds from offset 0, as before them.

A snapshot may keep a rejection whose reply the replies topic's retention has since deleted, and
the full fold would not: either answer to a resend of that command is allowed (``decide``
prevents a second application either way).
"""

from __future__ import annotations

import argparse
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics

from protocol.errors import OperationError
from services.shard_writer.core import (
    Accepted,
    AlreadyApplied,
    Command,
    CommandRejectedError,
    Event,
    ForgedSignatureError,
    IdempotencyKeyReusedError,
    Limits,
    MalformedCommandError,
    authenticate,
    command_digest,
    command_from_record,
    decide,
    event_from_record,
    event_to_record,
    evolve,
)
from services.shard_writer.core.partition import (
    BatchState,
    PartitionState,
    Rejection,
    remembered,
    remembered_code,
)
from services.shard_writer.core.snapshot import SnapshotError, assemble, check_newest
from services.shard_writer.core.user import EventOrderError
from services.shard_writer.snapshots import Candidate, Loaded, SnapshotStore
from streams.codec import CodecError, default_codec
from streams.dlq import DeadLetters, error_type
from streams.errors import KafkaOperationError
from streams.kafka import (
    Delivery,
    KafkaConsumer,
    KafkaProducer,
    Position,
    Record,
    make_consumer,
    make_producer,
    read_to_end,
)
from streams.runloop import LoopService, RunLoop
from streams.settings import Settings, load_settings
from streams.transactions import TransactionalBatch

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 256 * 1024  # a record is at most 64 KiB of ciphertext; base64 + envelope
SNAPSHOT_EVERY = 10_000  # events per partition between snapshots (at least: module doc)


class HandlerError(OperationError):
    """The command handler cannot continue (fenced, or Kafka failed fatally)."""


@dataclass(frozen=True, slots=True)
class _Repeat:
    """A repeated command, answered after the flush (its user's latest offset is known then)."""

    command: Command
    partition: int
    digest: bytes
    version: int


@dataclass
class Folded:
    """What ``CommandHandler.fold`` read: events folded per partition, replies read, and the
    partitions whose snapshot the log refused (with why)."""

    events: Counter[int] = field(default_factory=Counter)
    replies: int = 0
    failed: dict[int, SnapshotError] = field(default_factory=dict)


@dataclass
class HandlerStats:
    accepted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    dead_lettered: Counter[str] = field(default_factory=Counter)
    # what assignments cost: records read from users.events and users.replies (after the
    # snapshot, or from offset 0) and from users.snapshots
    rebuilt_events: int = 0
    rebuilt_replies: int = 0
    snapshot_records: int = 0
    snapshots_loaded: int = 0
    snapshots_rejected: int = 0
    snapshots_written: int = 0


class CommandHandler(LoopService):
    """Build with ``CommandHandler.create``; ``run`` until ``stop``."""

    def __init__(self, settings: Settings, consumer: KafkaConsumer, producer: KafkaProducer, *,
                 group_id: str, max_batch: int = 500, limits: Limits | None = None,
                 clock: Callable[[], int] | None = None,
                 new_producer: Callable[[], KafkaProducer] | None = None,
                 snapshot_every: int = SNAPSHOT_EVERY, full_rebuild: bool = False,
                 snapshots: SnapshotStore | None = None) -> None:
        self.settings = settings
        self.commands_topic = settings.topic("users.commands")
        self.events_topic = settings.topic("users.events")
        self.replies_topic = settings.topic("users.replies")
        self.consumer = consumer
        self.producer = producer
        self.group_id = group_id
        self.max_batch = max_batch
        self.limits = limits or Limits()
        self.clock = clock or (lambda: int(time.time() * 1000))
        self.codec = default_codec()
        self.dead_letters = DeadLetters(producer, settings.topic("dlq.users"), "users.handler")
        self.batch = TransactionalBatch(producer, consumer, new_producer=new_producer,
                                        on_replaced=self._use_producer)
        self.partitions: dict[int, PartitionState] = {}
        self.snapshots = snapshots or SnapshotStore(settings)
        self.snapshot_every = snapshot_every
        self.full_rebuild = full_rebuild
        # per partition: events folded since its newest snapshot, and the (events, replies)
        # offsets that snapshot covers
        self._unsnapshotted: dict[int, int] = {}
        self._snapshot_at: dict[int, tuple[int, int]] = {}
        # per users.replies partition, the offset after the newest reply delivered
        self._replies_end: dict[int, int] = {}
        self.stats = HandlerStats()
        meter = metrics.get_meter("qustream.users.handler")
        self._outcomes = meter.create_counter("qustream_user_commands",
                                              description="user commands by outcome")
        self.loop = RunLoop(consumer, self.process, max_records=max_batch, poll_s=0.5,
                            fill=True, after_batch=self._after_turn)
        self._busy = False

    @classmethod
    def create(cls, settings: Settings, *, instance_id: str = "0", group_id: str | None = None,
               max_batch: int = 500, limits: Limits | None = None,
               snapshot_every: int = SNAPSHOT_EVERY, full_rebuild: bool = False,
               snapshots: SnapshotStore | None = None,
               **consumer_overrides: Any) -> CommandHandler:
        group = group_id or settings.topic("users.handler")

        # Kafka's default transaction timeout: a transaction must outlive a broker failover.
        # When the group coordinator's broker dies, send_offsets_to_transaction can wait until
        # that broker is back (librdkafka issues 5511, 5456): the batch replaces a producer
        # stuck there (``TransactionalBatch``); a restarted handler aborts its predecessor's
        # open transaction at once (init_transactions), whatever this value.
        def new_producer() -> KafkaProducer:
            return make_producer(settings, transactional_id=f"{group}.{instance_id}",
                                 **{"transaction.timeout.ms": 60_000})

        consumer = make_consumer(settings, group, **{"group.instance.id": f"{group}.{instance_id}",
                                                     **consumer_overrides})
        handler = cls(settings, consumer, new_producer(), group_id=group, max_batch=max_batch,
                      limits=limits, new_producer=new_producer, snapshot_every=snapshot_every,
                      full_rebuild=full_rebuild, snapshots=snapshots)
        consumer.subscribe([handler.commands_topic], on_assign=handler._on_assign,
                           on_revoke=handler._on_revoke)
        return handler

    # --- state rebuild -----------------------------------------------------------------------

    def _read(self, topic: str, start: Mapping[int, int]) -> Iterator[Record]:
        """Every committed record of the partitions of ``start`` from their offset there to
        their end, in one read (one reader for all of them, not one each)."""
        if not start:
            return
        try:
            yield from read_to_end(self.settings, topic, f"{self.group_id}.rebuild",
                                   sorted(start), start=start)
        except KafkaOperationError as exc:
            raise HandlerError(f"cannot rebuild from {topic}{sorted(start)}: {exc}") from exc

    def fold(self, states: Mapping[int, PartitionState], *,
             continuing: Collection[int] = ()) -> Folded:
        """Fold into each state of ``states`` (by partition) the records that follow its
        offsets: the events from ``events_offset`` and the replies from ``replies_offset``.
        A partition in ``continuing`` was restored from a snapshot: its events are read from
        ``events_offset - 1``, which must be the snapshot's newest event, and an event that
        does not follow its user fails the snapshot rather than the handler (module doc). The
        states are folded into, not copied; a failed one is left half-folded (drop it)."""
        folded = Folded()
        unchecked = {p: s.events_offset - 1 for p, s in states.items()
                     if p in continuing and s.events_offset > 0}
        start = {p: unchecked.get(p, s.events_offset) for p, s in states.items()}
        for record in self._read(self.events_topic, start):
            partition = record.partition
            if partition in folded.failed:
                continue
            state = states[partition]
            try:
                event = event_from_record(
                    self.codec.decode(record.value, expected="UserEventRecorded").record)
            except (CodecError, ValueError) as exc:
                raise HandlerError(f"unreadable event at {self.events_topic}[{partition}]@"
                                   f"{record.offset}: {exc}") from exc
            try:
                if unchecked.pop(partition, None) is not None:
                    check_newest(state, event, record.offset)
                    continue
                folded.events[partition] += 1
                state.apply(event, record.offset)
            except SnapshotError as exc:
                folded.failed[partition] = exc
            except EventOrderError as exc:
                if partition not in continuing:
                    raise
                folded.failed[partition] = SnapshotError(
                    f"the log does not continue the snapshot: {exc}")
        for partition, newest in unchecked.items():
            folded.failed[partition] = SnapshotError(
                f"the log ends before offset {newest}, the snapshot's newest event")
        replies = {p: s.replies_offset for p, s in states.items() if p not in folded.failed}
        for record in self._read(self.replies_topic, replies):
            folded.replies += 1
            states[record.partition].apply_reply(record.offset, self._rejection(record))
        self.stats.rebuilt_events += sum(folded.events.values())
        self.stats.rebuilt_replies += folded.replies
        return folded

    def _rejection(self, reply: Record) -> tuple[tuple[str, str], Rejection] | None:
        """What a reply read back adds to the remembered rejections (``remembered_code``)."""
        try:
            decoded = self.codec.decode(reply.value)
        except CodecError:
            return None
        r = decoded.record
        if decoded.schema != "UserCommandRejected" or not remembered_code(r["code"]):
            return None
        return (r["user_id"], r["command_id"]), Rejection(r["command_digest"], r["code"],
                                                          r["reason"])

    def rebuild(self, partition: int, snapshot: PartitionState | None = None) -> PartitionState:
        """The state of ``partition``: the fold from offset 0, or ``snapshot`` (folded into)
        with what follows it; ``SnapshotError`` when the log does not continue it."""
        state = snapshot or PartitionState()
        folded = self.fold({partition: state}, continuing=() if snapshot is None else
                           (partition,))
        if partition in folded.failed:
            raise folded.failed[partition]
        return state

    def _restore(self, partitions: Sequence[int], loaded: Loaded | None
                 ) -> dict[int, PartitionState]:
        """Each partition's newest snapshot that checks out, with the log after it folded in,
        or the full fold when none does; refused ones are dead-lettered (module doc). All
        partitions are folded together; those whose snapshot the log refuses, again with the
        next one."""
        left = {p: list(loaded.candidates.get(p, [])) if loaded else [] for p in partitions}
        rejected = [] if loaded is None else [self._refused(None, record, exc)
                                              for record, exc in loaded.rejected]
        restored: dict[int, PartitionState] = {}
        todo = list(partitions)
        while todo:
            states: dict[int, PartitionState] = {}
            taken: dict[int, Candidate] = {}
            for partition in todo:
                while left[partition] and partition not in taken:
                    record, pieces = candidate = left[partition].pop(0)
                    try:
                        states[partition] = assemble(pieces, events_topic=self.events_topic)
                        taken[partition] = candidate
                    except SnapshotError as exc:
                        rejected.append(self._refused(partition, record, exc))
                states.setdefault(partition, PartitionState())
            folded = self.fold(states, continuing=taken)
            for partition, why in folded.failed.items():
                rejected.append(self._refused(partition, taken[partition][0], why))
            for partition, state in states.items():
                if partition in folded.failed:
                    continue
                restored[partition] = state
                self._unsnapshotted[partition] = folded.events[partition]
                if partition in taken:
                    self.stats.snapshots_loaded += 1
                    self._snapshot_at[partition] = (taken[partition][1][0].events_offset,
                                                    taken[partition][1][0].replies_offset)
            todo = sorted(folded.failed)
        if rejected:
            self._dead_letter_snapshots(rejected)
        return restored

    def _refused(self, partition: int | None, record: Record,
                 exc: SnapshotError) -> tuple[Record, SnapshotError]:
        log.warning("snapshot %sat %s@%d refused: %s",
                    "" if partition is None else f"of {self.events_topic}[{partition}] ",
                    record.topic, record.offset, exc)
        return record, exc

    def _on_assign(self, partitions: list[Position]) -> None:
        numbers = sorted(tp.partition for tp in partitions)
        before = (self.stats.rebuilt_events, self.stats.rebuilt_replies,
                  self.stats.snapshot_records)
        loaded = None if self.full_rebuild else self._load_snapshots(numbers)
        self.partitions.update(self._restore(numbers, loaded))
        log.info("assigned %s (%d users; read %d events, %d replies, %d snapshot records)",
                 numbers, sum(len(self.partitions[p].users) for p in numbers),
                 self.stats.rebuilt_events - before[0], self.stats.rebuilt_replies - before[1],
                 self.stats.snapshot_records - before[2])

    def _load_snapshots(self, partitions: list[int]) -> Loaded | None:
        """The snapshots of ``partitions``; None (fold from offset 0) when they cannot be read:
        a snapshot only saves time, so its absence must never stop the handler."""
        try:
            loaded = self.snapshots.load(partitions, f"{self.group_id}.snapshots")
        except KafkaOperationError as exc:
            log.warning("cannot read %s, folding from offset 0: %s", self.snapshots.topic, exc)
            return None
        self.stats.snapshot_records += loaded.records
        if not loaded.available:
            log.warning("%s does not exist (qustream topics ensure): no snapshots are read or "
                        "written", self.snapshots.topic)
            self.snapshot_every = 0
        return loaded

    def _dead_letter_snapshots(self, rejected: list[tuple[Record, SnapshotError]]) -> None:
        def produce(producer: KafkaProducer) -> None:
            for record, exc in rejected:
                self.dead_letters.send(record, exc)

        self.stats.snapshots_rejected += len(rejected)
        if not self.batch.run(produce):
            log.warning("the dead letters of %d refused snapshot records were not written",
                        len(rejected))

    # --- snapshots ---------------------------------------------------------------------------

    def _write_snapshot(self, partition: int) -> None:
        """Snapshot the partition's committed state (module doc); a failure only means the
        next restart folds more."""
        state = self.partitions[partition]
        if not self.snapshots.write(self.batch, partition, state):
            log.warning("snapshot of %s[%d] aborted", self.events_topic, partition)
            return
        self.stats.snapshots_written += 1
        self._unsnapshotted[partition] = 0
        self._snapshot_at[partition] = (state.events_offset, state.replies_offset)

    def _write_due_snapshots(self) -> None:
        if self.snapshot_every <= 0:
            return
        for partition, state in self.partitions.items():
            if self._unsnapshotted.get(partition, 0) >= max(self.snapshot_every,
                                                            len(state.users)):
                self._write_snapshot(partition)

    def _write_changed_snapshots(self, partitions: Iterable[int]) -> None:
        """Snapshot each of ``partitions`` whose state moved past its newest snapshot (on revoke
        and close); Kafka errors are logged, not raised: the rebalance or shutdown goes on."""
        if self.snapshot_every <= 0:
            return
        for partition in partitions:
            state = self.partitions.get(partition)
            # no snapshot yet: as good as one of the empty state
            if state is None or self._snapshot_at.get(partition, (0, 0)) == (
                    state.events_offset, state.replies_offset):
                continue
            try:
                self._write_snapshot(partition)
            except KafkaOperationError as exc:
                log.warning("no snapshot of %s[%d]: %s", self.events_topic, partition, exc)

    def _on_revoke(self, partitions: list[Position]) -> None:
        self._write_changed_snapshots(tp.partition for tp in partitions)
        for tp in partitions:
            self.partitions.pop(tp.partition, None)
            self._unsnapshotted.pop(tp.partition, None)
            self._snapshot_at.pop(tp.partition, None)
        self.batch.forget((tp.topic, tp.partition) for tp in partitions)

    def _use_producer(self, producer: KafkaProducer) -> None:
        """The batch replaced a wedged producer: write everything through the new one."""
        self.producer = producer
        self.dead_letters = DeadLetters(producer, self.settings.topic("dlq.users"),
                                        "users.handler")

    def _after_turn(self) -> None:
        """After every turn, the snapshots that are due (module doc, Snapshots); after a turn
        without commands, commit positions that moved past the command writer's transaction
        markers alone (module doc, Lag)."""
        self._write_due_snapshots()
        if not self._busy:
            self.batch.commit_idle_positions()
        self._busy = False

    # --- the loop ----------------------------------------------------------------------------

    def process(self, records: Sequence[Record]) -> int:
        """One batch through the steps of the module docstring; returns the commands applied
        (0 when the batch was aborted: the same commands come again)."""
        if not records:
            return 0
        self._busy = True
        working: dict[int, BatchState] = {}
        stats = HandlerStats()
        pending: list[tuple[Event, int, list[int]]] = []
        repeats: list[_Repeat] = []

        def produce(producer: KafkaProducer) -> None:
            for record in records:
                self._handle(record, working, pending, stats, repeats)

        def reply(producer: KafkaProducer) -> None:
            now = self.clock()
            for event, event_partition, delivered in pending:
                offset = delivered[0] if delivered else -1
                self._reply_accepted(event, event_partition, offset, now)
                if offset >= 0:
                    state = working[event_partition]
                    state.last_offsets[event.user_id] = offset
                    state.events_offset = max(state.events_offset, offset + 1)
            for repeat in repeats:
                user_id = repeat.command.user_id
                self._produce_reply("UserCommandAccepted", user_id, repeat.partition, {
                    "user_id": user_id, "command_id": repeat.command.command_id,
                    "command_digest": repeat.digest, "version": repeat.version,
                    "partition": repeat.partition,
                    "offset": working[repeat.partition].last_offset(user_id),
                    "accepted_at_ms": now})

        if not self.batch.run(produce, records, after_flush=reply):
            return 0
        for partition, state in working.items():
            if self.partitions.get(partition) is state.base:  # not revoked meanwhile
                # the replies delivered so far, this batch's rejections among them (step 3
                # flushed them): every rejection before this offset is in the state
                state.replies_offset = self._replies_end.get(partition, 0)
                state.commit()
        for _, partition, _ in pending:
            self._unsnapshotted[partition] = self._unsnapshotted.get(partition, 0) + 1
        self._count(stats)
        return len(records)

    def _state(self, working: dict[int, BatchState], partition: int) -> BatchState:
        state = working.get(partition)
        if state is None:
            base = self.partitions.get(partition) or PartitionState()
            state = working[partition] = base.batch()
        return state

    def _dead(self, message: Record, exc: Exception, stats: HandlerStats) -> None:
        self.dead_letters.send(message, exc)
        stats.dead_lettered[error_type(exc)] += 1

    def _handle(self, message: Record, working: dict[int, BatchState],
                pending: list[tuple[Event, int, list[int]]], stats: HandlerStats,
                repeats: list[_Repeat]) -> None:
        partition = message.partition
        value = message.value
        if value is not None and len(value) > MAX_COMMAND_BYTES:
            self._dead(message, MalformedCommandError(
                f"command of {len(value)} bytes exceeds {MAX_COMMAND_BYTES}"), stats)
            return
        try:
            command = command_from_record(
                self.codec.decode(value, expected="UserCommandIssued").record)
            if message.key != command.user_id.encode():
                raise MalformedCommandError(
                    f"message key {message.key!r} is not the user id {command.user_id}")
        except (CodecError, MalformedCommandError) as exc:
            self._dead(message, exc, stats)
            return
        state = self._state(working, partition)
        user = state.user(command.user_id)
        digest = command_digest(command)
        earlier = state.rejection((command.user_id, command.command_id))
        if earlier is not None:
            if earlier.digest == digest:
                stats.duplicates += 1
                self._reply_rejected(command, partition, earlier.code, earlier.reason, digest)
            else:
                self._reject(command, partition, IdempotencyKeyReusedError(
                    f"idempotency key {command.command_id!r} was used by another command "
                    f"(rejected: {earlier.code})"), digest, stats, remember=None)
            return
        if user is None or command.command_id not in user.commands:
            try:
                authenticate(user, command)
            except ForgedSignatureError as exc:
                self._dead(message, exc, stats)
                self._reply_rejected(command, partition, exc.reply_code, str(exc), digest)
                return
        decision = decide(user, command, self.clock(), self.limits)
        if isinstance(decision, CommandRejectedError):
            remember = state if remembered(type(decision)) else None
            self._reject(command, partition, decision, digest, stats, remember=remember)
        elif isinstance(decision, AlreadyApplied):
            stats.duplicates += 1
            repeats.append(_Repeat(command, partition, digest, decision.version))
        elif isinstance(decision, Accepted):
            for event in decision.events:
                user = evolve(user, event)
                delivered: list[int] = []
                self.producer.produce(
                    self.events_topic, key=event.user_id.encode(), partition=partition,
                    value=self.codec.encode("UserEventRecorded", event_to_record(event)),
                    on_delivery=_record_offset(delivered))
                pending.append((event, partition, delivered))
            assert user is not None
            state.set_user(user)
            stats.accepted += 1

    def _reject(self, command: Command, partition: int, rejection: CommandRejectedError,
                digest: bytes, stats: HandlerStats, *, remember: BatchState | None) -> None:
        if remember is not None:
            remember.remember((command.user_id, command.command_id),
                              Rejection(digest, rejection.code, rejection.reason))
        stats.rejected[rejection.code] += 1
        self._reply_rejected(command, partition, rejection.code, rejection.reason, digest)

    def _reply_rejected(self, command: Command, partition: int, code: str, reason: str,
                        digest: bytes) -> None:
        self._produce_reply("UserCommandRejected", command.user_id, partition, {
            "user_id": command.user_id, "command_id": command.command_id, "reason": reason,
            "code": code, "rejected_at_ms": self.clock(), "command_digest": digest})

    def _reply_accepted(self, event: Event, partition: int, offset: int, now: int) -> None:
        self._produce_reply("UserCommandAccepted", event.user_id, partition, {
            "user_id": event.user_id, "command_id": event.command_id,
            "command_digest": event.command_digest, "version": event.version,
            "partition": partition, "offset": offset, "accepted_at_ms": now})

    def _produce_reply(self, schema: str, user_id: str, partition: int,
                       record: dict[str, Any]) -> None:
        self.producer.produce(self.replies_topic, key=user_id.encode(), partition=partition,
                              value=self.codec.encode(schema, record),
                              on_delivery=self._reply_delivered)

    def _reply_delivered(self, delivery: Delivery) -> None:
        """Keep the offset after the newest reply of each partition (what a batch's state
        covers of users.replies; a reply of an aborted batch only moves it past what no reader
        sees)."""
        if delivery.error is None and delivery.offset >= 0:
            end = self._replies_end.get(delivery.partition, 0)
            self._replies_end[delivery.partition] = max(end, delivery.offset + 1)

    def _count(self, stats: HandlerStats) -> None:
        self.stats.accepted += stats.accepted
        self.stats.duplicates += stats.duplicates
        self.stats.rejected.update(stats.rejected)
        self.stats.dead_lettered.update(stats.dead_lettered)
        self._outcomes.add(stats.accepted, {"outcome": "accepted"})
        self._outcomes.add(stats.duplicates, {"outcome": "duplicate"})
        for code, n in stats.rejected.items():
            self._outcomes.add(n, {"outcome": "rejected", "reason": code})
        for kind, n in stats.dead_lettered.items():
            self._outcomes.add(n, {"outcome": "dead_lettered", "reason": kind})

    def close(self) -> None:
        """Snapshot what changed since the newest snapshots, then leave (module doc)."""
        self._write_changed_snapshots(list(self.partitions))
        self.consumer.close()


def _record_offset(out: list[int]) -> Callable[[Delivery], None]:
    def on_delivery(delivery: Delivery) -> None:
        if delivery.error is None and delivery.offset >= 0:
            out.append(delivery.offset)

    return on_delivery


def main(argv: list[str] | None = None) -> None:
    """``python -m services.shard_writer.handler``: run one user command handler instance."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--instance-id", default="0",
                        help="stable per instance: transactional.id and static membership")
    parser.add_argument("--group-id")
    parser.add_argument("--max-batch", type=int, default=500)
    parser.add_argument("--idle-exit-s", type=float, default=None)
    # Longer than a group coordinator's failover (docs/replicated-cluster.md): a static
    # member whose session times out while the coordinator moves is fenced for good. A
    # restarted instance rejoins at once under its instance id, whatever this value.
    parser.add_argument("--session-timeout-ms", type=int, default=30_000)
    parser.add_argument("--snapshot-every", type=int, default=SNAPSHOT_EVERY,
                        help="events per partition between snapshots (at least; 0: none)")
    parser.add_argument("--full", action="store_true",
                        help="ignore the snapshots: fold every partition from offset 0")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    handler = CommandHandler.create(load_settings(), instance_id=args.instance_id,
                                    group_id=args.group_id, max_batch=args.max_batch,
                                    snapshot_every=args.snapshot_every, full_rebuild=args.full,
                                    **{"session.timeout.ms": args.session_timeout_ms})
    def stop(*_: object) -> None:
        handler.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        handler.run(idle_timeout_s=args.idle_exit_s)
    finally:
        handler.close()
        log.info("stopped: %s", handler.stats)


if __name__ == "__main__":
    main()
