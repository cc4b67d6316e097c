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
rebuilt by folding ``users.events`` partition ``p`` from offset 0 (``read_committed``, until its
end), and the rejections already answered by folding ``users.replies`` partition ``p``: so "a
repeated idempotency key returns the first outcome" holds across restarts (rejections of
authenticated commands, the newest ``MAX_REJECTIONS`` per partition within the replies topic's
retention; accepted commands within the last ``COMMAND_WINDOW`` commands of a user). A batch
works on a ``BatchState`` over the partition's state (what it touches, not a copy of it).
A stable ``transactional.id`` per instance (``--instance-id``) makes a restarted instance abort
its predecessor's open transaction before it rebuilds.
"""

from __future__ import annotations

import argparse
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
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
class HandlerStats:
    accepted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    dead_lettered: Counter[str] = field(default_factory=Counter)


class CommandHandler(LoopService):
    """Build with ``CommandHandler.create``; ``run`` until ``stop``."""

    def __init__(self, settings: Settings, consumer: KafkaConsumer, producer: KafkaProducer, *,
                 group_id: str, max_batch: int = 500, limits: Limits | None = None,
                 clock: Callable[[], int] | None = None,
                 new_producer: Callable[[], KafkaProducer] | None = None) -> None:
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
                      limits=limits, new_producer=new_producer)
        consumer.subscribe([handler.commands_topic], on_assign=handler._on_assign,
                           on_revoke=handler._on_revoke)
        return handler

    # --- state rebuild -----------------------------------------------------------------------

    def _read_partition(self, topic: str, partition: int) -> list[Record]:
        """Every committed record of one partition, from offset 0 to its end."""
        try:
            return list(read_to_end(self.settings, topic, f"{self.group_id}.rebuild",
                                    [partition]))
        except KafkaOperationError as exc:
            raise HandlerError(f"cannot rebuild from {topic}[{partition}]: {exc}") from exc

    def rebuild(self, partition: int) -> PartitionState:
        state = PartitionState()
        for record in self._read_partition(self.events_topic, partition):
            try:
                event = event_from_record(
                    self.codec.decode(record.value, expected="UserEventRecorded").record)
            except (CodecError, ValueError) as exc:
                raise HandlerError(f"unreadable event at {self.events_topic}[{partition}]@"
                                   f"{record.offset}: {exc}") from exc
            state.users[event.user_id] = evolve(state.users.get(event.user_id), event)
            state.last_offsets[event.user_id] = record.offset
        for record in self._read_partition(self.replies_topic, partition):
            try:
                decoded = self.codec.decode(record.value)
            except CodecError:
                continue
            if decoded.schema == "UserCommandRejected" and remembered_code(decoded.record["code"]):
                r = decoded.record
                state.remember((r["user_id"], r["command_id"]),
                               Rejection(r["command_digest"], r["code"], r["reason"]))
        return state

    def _on_assign(self, partitions: list[Position]) -> None:
        for tp in partitions:
            self.partitions[tp.partition] = self.rebuild(tp.partition)
        log.info("assigned %s (%d users)", sorted(tp.partition for tp in partitions),
                 sum(len(self.partitions[tp.partition].users) for tp in partitions))

    def _on_revoke(self, partitions: list[Position]) -> None:
        for tp in partitions:
            self.partitions.pop(tp.partition, None)
        self.batch.forget((tp.topic, tp.partition) for tp in partitions)

    def _use_producer(self, producer: KafkaProducer) -> None:
        """The batch replaced a wedged producer: write everything through the new one."""
        self.producer = producer
        self.dead_letters = DeadLetters(producer, self.settings.topic("dlq.users"),
                                        "users.handler")

    def _after_turn(self) -> None:
        """After a turn without commands: commit positions that moved past the command writer's
        transaction markers alone (module doc, Lag)."""
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
                    working[event_partition].last_offsets[event.user_id] = offset
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
                state.commit()
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
                              value=self.codec.encode(schema, record))

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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    handler = CommandHandler.create(load_settings(), instance_id=args.instance_id,
                                    group_id=args.group_id, max_batch=args.max_batch,
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
