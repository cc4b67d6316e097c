"""shard_writer: project ``users.events`` into Cassandra (the Kafka -> Cassandra edge).

Each instance is a member of one consumer group over ``users.events``; the partitions it is
assigned are its shard. Guarantee: at-least-once delivery + idempotent writes + stored
positions = every event applied, the rows as if applied exactly once.

Commit order of one batch (``Projector.process``):

1. the run loop (``streams.runloop``) polls at most ``max_batch`` events (bounded, so a batch
   takes a fraction of ``max.poll.interval.ms``);
2. decode them; an undecodable event goes to ``dlq.users`` with the reason (flushed before 4);
3. write the rows: one UNLOGGED batch per user (a single-partition mutation), every statement
   ``USING TIMESTAMP`` = the event's per-user version, all users concurrently, and wait for all;
4. write each partition's next offset to ``positions`` (``USING TIMESTAMP`` = that offset, so a
   late write of a smaller position never wins);
5. commit the offsets to Kafka, asynchronously, for lag monitoring only: the consumer's
   positions, which step over the handler's transaction markers, so a caught-up shard_writer's
   lag reads 0 (``KafkaConsumer.past_markers``; a turn without events commits a position that
   moved past markers alone).

A crash anywhere re-applies at most the batch in flight, which changes nothing (idempotent).
On (re)assignment ``on_assign`` starts each partition at its stored position, so a restart
resumes exactly; on revocation nothing is in flight, since batches complete inside the run
loop before the next poll (which is where rebalance callbacks run): the flush before revoke is
the loop's structure.
"""

from __future__ import annotations

import argparse
import logging
import signal
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, assert_never

from cassandra import OperationTimedOut
from cassandra.cluster import NoHostAvailable, ResponseFuture, Session
from cassandra.query import PreparedStatement

from services.shard_writer.core import (
    DeviceLinked,
    DeviceRevoked,
    Event,
    KeysRotated,
    MalformedEventError,
    RecordDeleted,
    RecordPut,
    UserDeleted,
    UserRegistered,
    event_from_record,
)
from services.shard_writer.store import (
    CASSANDRA_ERRORS,
    Statements,
    StoreError,
    connect,
    create_schema,
    unlogged_batch,
)
from streams import kafka
from streams.codec import CodecError, default_codec
from streams.dlq import DeadLetters, error_type
from streams.runloop import LoopService, RunLoop
from streams.settings import Settings, load_settings

log = logging.getLogger(__name__)

Row = tuple[PreparedStatement, tuple[Any, ...]]
MAX_BATCH_STATEMENTS = 100  # per user and Cassandra batch; single-partition, so cheap


def rows_for(statements: Statements, events: Sequence[Event]) -> list[Row]:
    """The writes of one user's events, in version order. The ``users`` row's version and
    update time are written once, for the last event: with timestamps equal to versions that
    is the same end state as writing it per event."""
    rows: list[Row] = []
    s = statements
    for event in events:
        body, user, v = event.body, event.user_id, event.version
        match body:
            case UserRegistered(signing_key, encryption_key):
                rows.append((s.insert_user, (user, v, signing_key, encryption_key, 0,
                                             event.recorded_at_ms, event.recorded_at_ms, v)))
            case RecordPut(record_id, record_version, ciphertext):
                rows.append((s.insert_record, (user, record_id, record_version, v, ciphertext,
                                               len(ciphertext), event.recorded_at_ms, v)))
            case RecordDeleted(record_id):
                rows.append((s.delete_record, (v, user, record_id)))
            case KeysRotated(signing_key, encryption_key, key_epoch):
                rows.append((s.rotate_keys, (v, signing_key, encryption_key, key_epoch, user)))
            case DeviceLinked(device_id, device_key):
                rows.append((s.insert_device, (user, device_id, device_key, v, v)))
            case DeviceRevoked(device_id):
                rows.append((s.revoke_device, (v, user, device_id)))
            case UserDeleted():
                rows.append((s.delete_records, (v, user)))
                rows.append((s.delete_devices, (v, user)))
                rows.append((s.erase_user, (v, user)))
            case _:
                assert_never(body)
    if events:
        last = events[-1]
        rows.append((s.touch_user, (last.version, last.version, last.recorded_at_ms,
                                    last.user_id)))
    return rows


def group_by_user(events: Iterable[Event]) -> dict[str, list[Event]]:
    users: dict[str, list[Event]] = {}
    for event in events:
        users.setdefault(event.user_id, []).append(event)
    return users


def write_rows(session: Session, rows_by_user: Iterable[list[Row]], *,
               max_in_flight: int = 128, attempts: int = 4) -> int:
    """Write every user's rows as unlogged single-partition batches, concurrently; wait for
    all. Returns the number of statements written; raises ``StoreError`` on any failure.

    A request that no node took (every coordinator of its plan busy or just gone) or that the
    client timed out is sent again, up to ``attempts`` times with a growing pause: the writes
    are idempotent, so a repeat cannot change the result (errors the nodes answered are retried
    by the session's ``IdempotentRetryPolicy``)."""
    in_flight: deque[tuple[ResponseFuture, tuple[Any, ...]]] = deque()
    written = 0

    def settle(future: ResponseFuture, request: tuple[Any, ...]) -> None:
        for attempt in range(1, attempts + 1):
            try:
                future.result()
                return
            except (NoHostAvailable, OperationTimedOut) as exc:
                if attempt == attempts:
                    raise
                log.warning("write not taken (%s); sending it again", exc)
                time.sleep(0.1 * 2**attempt)
                future = session.execute_async(*request)

    try:
        for rows in rows_by_user:
            for start in range(0, len(rows), MAX_BATCH_STATEMENTS):
                chunk = rows[start:start + MAX_BATCH_STATEMENTS]
                request: tuple[Any, ...]
                if len(chunk) == 1:
                    request = (chunk[0][0], chunk[0][1])
                else:
                    batch = unlogged_batch()
                    for statement, params in chunk:
                        batch.add(statement, params)
                    request = (batch,)
                in_flight.append((session.execute_async(*request), request))
                written += len(chunk)
                if len(in_flight) >= max_in_flight:
                    settle(*in_flight.popleft())
        while in_flight:
            settle(*in_flight.popleft())
    except CASSANDRA_ERRORS as exc:
        raise StoreError(f"projection write failed: {exc}") from exc
    return written


@dataclass
class ProjectorStats:
    events: int = 0
    statements: int = 0
    batches: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)


class Projector(LoopService):
    """One shard_writer instance: build with ``Projector.create`` and call ``run``."""

    def __init__(self, settings: Settings, session: Session, consumer: kafka.KafkaConsumer,
                 dead_letters: DeadLetters, dlq_producer: kafka.KafkaProducer, *,
                 max_batch: int = 5000,
                 commit_to_kafka: bool = True) -> None:
        self.settings = settings
        self.topic = settings.topic("users.events")
        self.session = session
        self.statements = Statements.prepare(session, settings.cassandra.keyspace)
        self.consumer = consumer
        self.dead_letters = dead_letters
        self._dlq_producer = dlq_producer
        self.max_batch = max_batch
        self.commit_to_kafka = commit_to_kafka
        self.codec = default_codec()
        self.stats = ProjectorStats()
        self.assigned: set[int] = set()
        self.loop = RunLoop(consumer, self.process, max_records=max_batch, poll_s=0.5,
                            fill=True, after_batch=self._after_turn)
        self.committed: dict[tuple[str, int], int] = {}  # positions last committed to Kafka
        self._busy = False

    @classmethod
    def create(cls, settings: Settings, session: Session, *, group_id: str | None = None,
               instance_id: str | None = None, max_batch: int = 5000,
               create_tables: bool = True, **consumer_overrides: Any) -> Projector:
        if create_tables:
            create_schema(session, settings.cassandra.keyspace,
                          replication_factor=settings.cassandra.replication_factor,
                          datacenter=settings.cassandra.local_datacenter)
        overrides: dict[str, Any] = {"enable.partition.eof": False, **consumer_overrides}
        if instance_id:
            overrides["group.instance.id"] = instance_id  # static membership: fast restarts
        # One group per keyspace: a rebuild into a fresh keyspace is its own group.
        group = group_id or settings.topic(f"users.shard_writer.{settings.cassandra.keyspace}")
        consumer = kafka.make_consumer(settings, group, **overrides)
        producer = kafka.make_producer(settings)
        dead_letters = DeadLetters(producer, settings.topic("dlq.users"), "shard_writer")
        projector = cls(settings, session, consumer, dead_letters, producer,
                        max_batch=max_batch)
        consumer.subscribe([projector.topic], on_assign=projector._on_assign,
                           on_revoke=projector._on_revoke)
        return projector

    # --- rebalance ---------------------------------------------------------------------------

    def stored_positions(self) -> dict[int, int]:
        try:
            rows = self.session.execute(self.statements.select_positions, (self.topic,))
        except CASSANDRA_ERRORS as exc:
            raise StoreError(f"cannot read projection positions: {exc}") from exc
        return {row.partition: row.next_offset for row in rows}

    def _on_assign(self, partitions: list[kafka.Position]) -> list[kafka.Position]:
        positions = self.stored_positions()
        starts = [tp._replace(offset=positions.get(tp.partition, kafka.BEGINNING))
                  for tp in partitions]
        self.assigned |= {tp.partition for tp in starts}
        log.info("assigned %s", {tp.partition: tp.offset for tp in starts})
        return starts

    def _on_revoke(self, partitions: list[kafka.Position]) -> None:
        # Nothing is in flight here (see the module docstring): positions already cover
        # every event applied from these partitions.
        self.assigned -= {tp.partition for tp in partitions}
        for tp in partitions:
            self.committed.pop((tp.topic, tp.partition), None)
        log.info("revoked %s", sorted(tp.partition for tp in partitions))

    # --- the loop ----------------------------------------------------------------------------

    def process(self, records: Sequence[kafka.Record]) -> int:
        """Steps 2-5 of the module docstring for one polled batch; returns events applied."""
        if not records:
            return 0
        self._busy = True
        events: list[Event] = []
        next_offsets: dict[int, int] = {}
        dead = 0
        for record in records:
            next_offsets[record.partition] = record.offset + 1
            try:
                events.append(self.decode(record))
            except (CodecError, MalformedEventError, KeyError, TypeError) as exc:
                self.dead_letters.send(record, exc)
                self.stats.dead_lettered[error_type(exc)] += 1
                dead += 1
        if dead:
            self._dlq_producer.flush(30)
        users = group_by_user(events)
        self.stats.statements += write_rows(
            self.session, (rows_for(self.statements, evs) for evs in users.values()))
        self.save_positions(next_offsets)
        if self.commit_to_kafka and next_offsets:
            self._commit(self.consumer.past_markers(
                {(self.topic, p): o for p, o in next_offsets.items()}))
        self.stats.events += len(events)
        self.stats.batches += 1
        return len(events)

    def decode(self, record: kafka.Record) -> Event:
        return event_from_record(
            self.codec.decode(record.value, expected="UserEventRecorded").record)

    def _after_turn(self) -> None:
        """After a turn without events: commit positions that moved past the handler's
        transaction markers alone (module doc, step 5)."""
        if not self._busy and self.commit_to_kafka:
            self._commit({key: offset for key, offset in self.consumer.past_markers({}).items()
                          if offset > self.committed.get(key, -1)})
        self._busy = False

    def _commit(self, positions: dict[tuple[str, int], int]) -> None:
        if positions:
            self.consumer.commit([kafka.Position(t, p, o) for (t, p), o in positions.items()],
                                 asynchronous=True)
            self.committed.update(positions)

    def save_positions(self, next_offsets: dict[int, int]) -> None:
        futures = [
            self.session.execute_async(self.statements.save_position,
                                       (offset, offset, self.topic, partition))
            for partition, offset in next_offsets.items()
        ]
        try:
            for future in futures:
                future.result()
        except CASSANDRA_ERRORS as exc:
            raise StoreError(f"cannot save projection positions: {exc}") from exc

    def close(self) -> None:
        self.consumer.close()
        self._dlq_producer.flush(10)


def main(argv: list[str] | None = None) -> None:
    """``python -m services.shard_writer.projection``: run one shard_writer instance."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--instance-id", help="static group membership id (fast restarts)")
    parser.add_argument("--group-id")
    parser.add_argument("--max-batch", type=int, default=5000)
    parser.add_argument("--idle-exit-s", type=float, default=None,
                        help="exit after this many idle seconds (tests, rebuilds)")
    # Default: 30 s for a static member (longer than a group coordinator's failover, see the
    # handler's --session-timeout-ms), 10 s for a dynamic one, whose partitions wait that long
    # to be reassigned after a crash.
    parser.add_argument("--session-timeout-ms", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = load_settings()
    cluster, session = connect(settings)
    group_session: dict[str, Any] = {"session.timeout.ms": args.session_timeout_ms or (
        30_000 if args.instance_id else 10_000)}
    projector = Projector.create(settings, session, group_id=args.group_id,
                                 instance_id=args.instance_id, max_batch=args.max_batch,
                                 **group_session)
    signal.signal(signal.SIGTERM, lambda *_: projector.stop())
    signal.signal(signal.SIGINT, lambda *_: projector.stop())
    try:
        projector.run(idle_timeout_s=args.idle_exit_s)
    finally:
        projector.close()
        cluster.shutdown()
        log.info("stopped after %d events", projector.stats.events)


if __name__ == "__main__":
    main()
