"""The Kafka edge: wrapped clients and their factories (topic administration: ``streams.admin``).

With ``streams.admin``, the only module of QuStream's production code that imports
confluent-kafka (an import-linter contract keeps it so). Everything above them speaks our own
types:

- ``Record`` (topic, partition, offset, key, value, timestamp, headers) instead of the library's
  ``Message``; ``Position`` (topic, partition, offset) instead of ``TopicPartition``;
  ``Delivery`` for a delivery report.
- ``KafkaConsumer`` and ``KafkaProducer`` wrap the library's clients; every library error leaves
  them translated into ``streams.errors`` (``translate``), decided on the library's flags and
  error codes, never on message text.
- Consumer errors are never dropped: the end of a partition is not an error (``at_end`` says it
  was reached); a fatal error raises; any other error is counted in ``KafkaConsumer.errors`` and
  logged at most once per ``log_every_s`` per kind — or raises, for readers built by
  ``make_reader`` (bounded reads whose result would be wrong with a hole in it). Client-wide
  errors (the library's ``error_cb``: brokers out of reach) are counted the same way by every
  client the factories build (``ErrorTally``), and raise when fatal.

Producers are idempotent with ``acks=all`` (no duplicates from retries, nothing acknowledged
before every in-sync replica has it), and place keyed records as Java's default partitioner does
(murmur2 of the key bytes, positive, modulo the partition count), so a Java, Kafka Streams or
Connect producer sends a user's or a source's records to the same partition as we do.
Consumers commit manually and read committed data only, so a transactional writer's aborted
output is never seen; committed positions step over transaction markers, so a caught-up group's
lag reads 0 (``KafkaConsumer.past_markers``).

Every factory waits for the cluster to answer one metadata request, at most the connect timeout
(``QUSTREAM_KAFKA_CONNECT_TIMEOUT_S``), and otherwise raises ``KafkaUnreachableError`` naming
the address and the setting that chose it: the library alone would retry forever. The library's
own log lines (one per failed connection attempt) go to the ``streams.kafka.librdkafka`` logger
rather than straight to stderr; the conditions they describe reach callers translated, through
``ErrorTally``.

Riding through a replicated cluster's failures (docs/replicated-cluster.md): a produce to a
partition whose leader died, or that has too few in-sync replicas (``NOT_ENOUGH_REPLICAS``), is
retried inside the client until ``message.timeout.ms`` with the idempotent producer's sequence
numbers, so it is neither lost nor written twice; consumers follow leaders through metadata
refreshes. What surfaces to the caller are the transactional calls whose coordinator moved or
timed out (``streams.transactions`` retries or redoes those) and a transaction coordinator that
is moving when a producer starts (``make_producer`` waits it out).

Tests and benchmarks may build the library's clients themselves from ``consumer_config`` and
``producer_config`` (a baseline measures the raw client; a probe may want its exact API).
"""

from __future__ import annotations

import enum
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from streams.errors import (
    AbortableTransactionError,
    DeliveryError,
    FatalKafkaError,
    FencedError,
    KafkaOperationError,
    KafkaTimeoutError,
    KafkaUnreachableError,
    ProducerQueueFullError,
    RetriableKafkaError,
)
from streams.settings import Settings

log = logging.getLogger(__name__)
# librdkafka's own log lines (see module doc); the CLI shows them with --debug.
LIBRDKAFKA_LOG = logging.getLogger("streams.kafka.librdkafka")
# A metadata request for one topic every cluster has (or creates on demand) answers quickly and
# carries the broker list; asking for every topic could be megabytes on a large cluster.
_PROBE_TOPIC = "__consumer_offsets"

RETRY_DEADLINE_S = 120.0  # far beyond a broker election, short of "the cluster is gone"
BEGINNING = OFFSET_BEGINNING  # a Position offset: the partition's first retained record
END = OFFSET_END  # a Position offset: after the partition's last record


# ---------------------------------------------------------------------------- our values


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed Kafka record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes | None], ...] = ()


class Keyed(Protocol):
    """A record of a keyed topic (``Record``, or an audit's ``LogRecord``)."""

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...


KeyedRecord = TypeVar("KeyedRecord", bound=Keyed)


def compacted(records: Iterable[KeyedRecord]) -> list[KeyedRecord]:
    """What log compaction keeps of ``records`` (read in offset order): the newest record of
    each key, and nothing of a key whose newest record is a tombstone. Readers of a compacted
    topic apply it themselves, so what they find does not depend on when the cleaner last ran."""
    newest: dict[bytes | None, KeyedRecord] = {}
    for record in records:
        if record.value is None:
            newest.pop(record.key, None)
        else:
            newest[record.key] = record
    return list(newest.values())


class Position(NamedTuple):
    """A place in a partition: the offset of the next record to read (or ``BEGINNING``/``END``)."""

    topic: str
    partition: int
    offset: int = END


@dataclass(frozen=True, slots=True)
class Delivery:
    """A delivery report: where the message landed, or why it did not."""

    topic: str
    partition: int
    offset: int
    error: DeliveryError | None


def next_positions(records: Iterable[Record]) -> dict[tuple[str, int], int]:
    """Per (topic, partition), the offset after the last of ``records`` (what to commit)."""
    after: dict[tuple[str, int], int] = {}
    for record in records:
        after[(record.topic, record.partition)] = record.offset + 1
    return after


def first_positions(records: Iterable[Record]) -> dict[tuple[str, int], int]:
    """Per (topic, partition), the offset of the first of ``records`` (where to rewind)."""
    first: dict[tuple[str, int], int] = {}
    for record in records:
        first.setdefault((record.topic, record.partition), record.offset)
    return first


# ---------------------------------------------------------------------------- translation

_FENCED = frozenset({
    KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH,
    KafkaError.FENCED_INSTANCE_ID, KafkaError.TRANSACTION_COORDINATOR_FENCED,
})
_TIMEOUTS = frozenset({
    KafkaError._TIMED_OUT, KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT_QUEUE,
    KafkaError.REQUEST_TIMED_OUT,
})
# Transient by their nature (Kafka's own RetriableException family and the client's local
# "not yet" states), whether or not the call that reported them set the retriable flag:
# synchronous calls such as watermark queries report them without it.
_TRANSIENT = frozenset({
    KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._WAIT_COORD,
    KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC, KafkaError._RESOLVE,
    KafkaError._NODE_UPDATE, KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.BROKER_NOT_AVAILABLE, KafkaError.REPLICA_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND, KafkaError.FENCED_LEADER_EPOCH,
    KafkaError.UNKNOWN_LEADER_EPOCH, KafkaError.OFFSET_NOT_AVAILABLE,
    KafkaError.REBALANCE_IN_PROGRESS, KafkaError.NETWORK_EXCEPTION,
    KafkaError.CONCURRENT_TRANSACTIONS, KafkaError.KAFKA_STORAGE_ERROR,
    KafkaError.UNSTABLE_OFFSET_COMMIT, KafkaError.THROTTLING_QUOTA_EXCEEDED,
})


def translate(error: KafkaError | KafkaException, what: str) -> KafkaOperationError:
    """Our error for a library error: ``what`` names the operation that failed.

    Order matters: fencing first (it is fatal and says why), then the library's fatal and
    abort flags, then timeouts, then transient kinds; anything else is a plain
    ``KafkaOperationError`` (not known to be worth retrying)."""
    if isinstance(error, KafkaException):
        inner = error.args[0] if error.args else None
        if not isinstance(inner, KafkaError):
            return KafkaOperationError(f"{what}: {error}")
        error = inner
    code, name = error.code(), error.name()
    message = f"{what}: {error.str()} ({name})"
    if code in _FENCED:
        return FencedError(message, kafka_error=name)
    if error.fatal():
        return FatalKafkaError(message, kafka_error=name)
    if error.txn_requires_abort():
        return AbortableTransactionError(message, kafka_error=name)
    if code in _TIMEOUTS:
        return KafkaTimeoutError(message, kafka_error=name)
    if error.retriable() or code in _TRANSIENT:
        return RetriableKafkaError(message, kafka_error=name)
    return KafkaOperationError(message, kafka_error=name)


# ---------------------------------------------------------------------------- configuration


def client_logging() -> dict[str, Any]:
    """The ``logger`` property every client of ours gets (see module doc)."""
    return {"logger": LIBRDKAFKA_LOG}


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        **settings.kafka_config(),
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "none",
        "linger.ms": 5,
        "message.max.bytes": 9 * 1024 * 1024,
        # librdkafka's default is CRC32; murmur2_random is Java's placement of keyed records
        # (records without a key are spread randomly; we produce none to keyed topics).
        # Settings keep CRC32 only for deployments not migrated yet (docs/kafka-interop.md).
        "partitioner": settings.kafka.partitioner,
    }
    config.update(overrides)
    return config


def consumer_config(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        **settings.kafka_config(),
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
    }
    config.update(overrides)
    return config


# ---------------------------------------------------------------------------- the consumer


class ErrorPolicy(enum.Enum):
    """What a consumer does with an error that is neither fatal nor the end of a partition."""

    COUNT = "count"  # count it, log it (rate-limited), keep consuming: the client recovers
    RAISE = "raise"  # raise it: a bounded read must not silently miss a part


def _tp(position: Position) -> TopicPartition:
    return TopicPartition(position.topic, position.partition, position.offset)


def _position(tp: TopicPartition) -> Position:
    return Position(tp.topic, tp.partition, tp.offset)


Rebalance = Callable[[list[Position]], Sequence[Position] | None]


class ErrorTally:
    """A client's errors that are neither fatal nor the end of a partition: counted by the
    library's error name, the newest kept (a health check can show it), and each kind logged
    at most once per ``log_every_s``.

    ``on_client_error`` is the library's ``error_cb``: the client-wide errors it reports (a
    broker out of reach, all brokers down) are informational while the client recovers by
    itself, so they are counted; a fatal one raises (the library re-raises it from the
    ``poll``/``consume``/``flush`` that served it)."""

    def __init__(self, name: str, *, log_every_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.log_every_s = log_every_s
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self.last: KafkaOperationError | None = None
        self._logged_at: dict[str, float] = {}
        self.silent = False  # set once the client is being given up: the caller has the error

    def add(self, kind: str, error: KafkaOperationError) -> None:
        self.last = error
        self.counts[kind] += 1
        if self.silent:
            return
        now = self.clock()
        last = self._logged_at.get(kind)
        if last is None or now - last >= self.log_every_s:
            self._logged_at[kind] = now
            log.warning("%s (%d so far; logged at most every %.0fs)", error, self.counts[kind],
                        self.log_every_s)

    def on_client_error(self, error: KafkaError) -> None:
        translated = translate(error, f"{self.name} client")
        if isinstance(translated, FatalKafkaError):
            raise translated
        self.add(error.name(), translated)


class KafkaConsumer:
    """A consumer that hands out ``Record``s and raises only our errors (see module doc).

    ``errors`` counts the errors that were neither raised nor the end of a partition, by the
    library's error name; ``last_error`` is the newest of them."""

    def __init__(self, consumer: Consumer, name: str, *, policy: ErrorPolicy = ErrorPolicy.COUNT,
                 tally: ErrorTally | None = None, log_every_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._consumer = consumer
        self.name = name
        self.policy = policy
        self._clock = clock
        self.tally = tally or ErrorTally(name, log_every_s=log_every_s, clock=clock)
        self._at_end: set[tuple[str, int]] = set()

    @property
    def errors(self) -> Counter[str]:
        return self.tally.counts

    @property
    def last_error(self) -> KafkaOperationError | None:
        return self.tally.last

    # -- records

    def _record(self, message: Message) -> Record | None:
        """The record of a polled message, or None for an event (after handling it)."""
        error = message.error()
        if error is None:
            topic, partition = message.topic() or "", message.partition() or 0
            self._at_end.discard((topic, partition))
            headers: Any = message.headers() or ()
            return Record(topic, partition, message.offset() or 0, message.key(),
                          message.value(), message.timestamp()[1], tuple(headers))
        self.handle_error(error, message.topic(), message.partition())
        return None

    def handle_error(self, error: KafkaError, topic: str | None = None,
                     partition: int | None = None) -> None:
        """Partition EOF: remembered; fatal: raised; any other: counted and logged (or raised
        under ``ErrorPolicy.RAISE``)."""
        if error.code() == KafkaError._PARTITION_EOF:
            self._at_end.add((topic or "", partition or 0))
            return
        where = f"{self.name} consuming" + (f" {topic}[{partition}]" if topic else "")
        translated = translate(error, where)
        if isinstance(translated, FatalKafkaError) or self.policy is ErrorPolicy.RAISE:
            raise translated
        self.tally.add(error.name(), translated)

    def poll(self, timeout_s: float) -> Record | None:
        """The next record, waiting up to ``timeout_s``; None when none arrived."""
        deadline = self._clock() + timeout_s
        while True:
            try:
                message = self._consumer.poll(max(0.0, deadline - self._clock()))
            except KafkaException as exc:
                raise translate(exc, f"{self.name} poll") from exc
            if message is None:
                return None
            record = self._record(message)
            if record is not None:
                return record
            if self._clock() >= deadline:
                return None

    def consume(self, max_records: int, timeout_s: float) -> list[Record]:
        """Up to ``max_records``, waiting until that many arrived or ``timeout_s`` passed."""
        try:
            messages = self._consumer.consume(max_records, timeout_s)
        except KafkaException as exc:
            raise translate(exc, f"{self.name} consume") from exc
        records = []
        for message in messages:
            record = self._record(message)
            if record is not None:
                records.append(record)
        return records

    def poll_batch(self, timeout_s: float, max_records: int = 500) -> list[Record]:
        """Wait up to ``timeout_s`` for one record, then take whatever else is already fetched
        (``consume(n, t)`` waits for n records or the full timeout, which would put its timeout
        on every hop of a latency-bound loop)."""
        first = self.poll(timeout_s)
        if first is None:
            return []
        return [first, *self.consume(max_records - 1, 0)] if max_records > 1 else [first]

    def at_end(self, topic: str, partition: int) -> bool:
        """True when the partition's end was reached after its last record handed out (needs
        ``enable.partition.eof``)."""
        return (topic, partition) in self._at_end

    # -- positions

    def assign(self, positions: Iterable[Position]) -> None:
        try:
            self._consumer.assign([_tp(p) for p in positions])
        except KafkaException as exc:
            raise translate(exc, f"{self.name} assign") from exc

    def subscribe(self, topics: Sequence[str], *, on_assign: Rebalance | None = None,
                  on_revoke: Rebalance | None = None) -> None:
        """Join the group for ``topics``. ``on_assign`` may return the positions to start the
        assigned partitions at (else the group's committed offsets apply); ``on_revoke`` is
        also called when partitions are lost."""

        def assigned(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            chosen = on_assign([_position(tp) for tp in partitions]) if on_assign else None
            if chosen is not None:
                consumer.assign([_tp(p) for p in chosen])

        def revoked(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            if on_revoke is not None:
                on_revoke([_position(tp) for tp in partitions])

        try:
            self._consumer.subscribe(list(topics), on_assign=assigned, on_revoke=revoked,
                                     on_lost=revoked)
        except KafkaException as exc:
            raise translate(exc, f"{self.name} subscribe") from exc

    def seek(self, position: Position) -> None:
        try:
            self._consumer.seek(_tp(position))
        except KafkaException as exc:
            raise translate(exc, f"{self.name} seek {position}") from exc

    def position(self, topic: str, partition: int) -> int:
        """The offset of the next record this consumer will read from the partition."""
        try:
            return int(self._consumer.position([TopicPartition(topic, partition)])[0].offset)
        except KafkaException as exc:
            raise translate(exc, f"{self.name} position of {topic}[{partition}]") from exc

    def past_markers(self, after: Mapping[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """The offsets to commit after processing every record handed out so far.

        ``after`` maps (topic, partition) -> the offset after the last record processed. A
        transactional writer leaves a commit marker (a control record) after each transaction;
        the consumer steps over it without handing it out, so committing "last offset + 1"
        leaves a lag of one on every partition such a writer wrote, forever. The consumer's
        position is exactly past the records handed out and the markers stepped over (never past
        a record not handed out yet), so the larger of the two is what a caught-up consumer
        commits: its lag, against the log end offset, reads 0 (Java's consumer does the same).
        Partitions assigned to this consumer with a valid position are included even when
        ``after`` does not name them (markers stepped over while idle)."""
        result = dict(after)
        try:
            positions = self._consumer.position(self._consumer.assignment())
        except KafkaException as exc:
            raise translate(exc, f"{self.name} positions") from exc
        for tp in positions:
            key = (tp.topic, tp.partition)
            if tp.offset >= 0 and tp.offset > result.get(key, -1):
                result[key] = int(tp.offset)
        return result

    def commit(self, positions: Iterable[Position], *, asynchronous: bool = False) -> None:
        offsets = [_tp(p) for p in positions]
        try:
            if asynchronous:
                self._consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            raise translate(exc, f"{self.name} commit") from exc

    def committed(self, topic: str, partitions: Iterable[int], timeout_s: float = 30.0
                  ) -> dict[int, int]:
        """The offsets this consumer's group has committed on ``partitions`` of ``topic``
        (only those with a commit). Reading them does not join the group."""
        try:
            found = self._consumer.committed(
                [TopicPartition(topic, partition) for partition in partitions],
                timeout=timeout_s)
        except KafkaException as exc:
            raise translate(exc, f"{self.name} committed offsets of {topic}") from exc
        return {tp.partition: int(tp.offset) for tp in found if tp.offset >= 0}

    def watermarks(self, topic: str, partition: int = 0, timeout_s: float = 60.0
                   ) -> tuple[int, int]:
        """(low, high) of a partition, waiting out transient errors (a leader election on a
        fresh topic or a restarting broker) until ``timeout_s``."""
        deadline = self._clock() + timeout_s
        while True:
            try:
                low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=min(10.0, max(0.1, timeout_s)))
                return int(low), int(high)
            except KafkaException as exc:
                error = translate(exc, f"{self.name} watermarks of {topic}[{partition}]")
                if not isinstance(error, RetriableKafkaError) or self._clock() > deadline:
                    raise error from exc
            time.sleep(0.2)

    def offset_for_time(self, topic: str, partition: int, time_ms: int,
                        timeout_s: float = 30.0) -> int | None:
        """The offset of the first record of the partition whose timestamp is >= ``time_ms``
        (Kafka's ``ListOffsets`` by time: an index lookup on the broker, no scan); None when no
        record is that late."""
        try:
            found = self._consumer.offsets_for_times(
                [TopicPartition(topic, partition, time_ms)], timeout=timeout_s)
        except KafkaException as exc:
            raise translate(exc, f"{self.name} offset for time {time_ms} of {topic}") from exc
        offset = int(found[0].offset)
        return offset if offset >= 0 else None

    def read_span(self, topic: str, partition: int, start: int, end: int,
                  timeout_s: float = 60.0) -> list[Record]:
        """The records at offsets ``[start, end)`` of one partition (transaction markers take
        offsets but are no records). ``KafkaTimeoutError`` when the consumer cannot get to
        ``end`` within ``timeout_s``: a span read in part is never returned as whole.

        librdkafka applies ``assign`` asynchronously: until it has, ``position`` still reports
        where the previous read of this consumer stopped, which may be past ``end``. So the
        position counts only once it has moved or a record of the span has arrived."""
        stale = self.position(topic, partition)
        self.assign([Position(topic, partition, start)])
        records: list[Record] = []
        moved = False
        deadline = self._clock() + timeout_s
        while True:
            batch = [r for r in self.consume(min(1000, max(1, end - start)), 0.2)
                     if start <= r.offset < end]
            records += batch
            position = self.position(topic, partition)
            moved = moved or bool(batch) or position != stale
            if moved and position >= end:
                return records
            if self._clock() > deadline:
                raise KafkaTimeoutError(f"{self.name} {topic}[{partition}]: offsets "
                                        f"{start}..{end} not read within {timeout_s} s")

    def last_record(self, topic: str, partition: int, floor: int, end: int,
                    timeout_s: float = 60.0) -> Record | None:
        """The last record at an offset in ``[floor, end)`` of one partition, or None. Read
        backwards in growing windows (``read_span``): usually it is just before ``end``, after
        at most a commit marker, but an aborted transaction or a run of markers may lie there."""
        window = 16
        while end > floor:
            lower = max(floor, end - window)
            records = self.read_span(topic, partition, lower, end, timeout_s)
            if records:
                return records[-1]
            end, window = lower, window * 4
        return None

    def end_offsets(self, topic: str, timeout_s: float = 30.0) -> dict[int, int]:
        """Per partition, the offset the next record will get as this consumer reads it: one
        ``ListOffsets`` request for every partition (timestamp -1, "latest"), which under
        ``read_committed`` is the last stable offset, at or before any open transaction's
        first record. Retriable errors (a leader election) are waited out until ``timeout_s``."""
        deadline = self._clock() + timeout_s
        while True:
            partitions = self.partitions(topic, timeout_s)
            try:
                found = self._consumer.offsets_for_times(
                    [TopicPartition(topic, p, -1) for p in partitions],
                    timeout=min(10.0, max(0.1, timeout_s)))
                ends = {int(tp.partition): int(tp.offset) for tp in found}
                if all(tp.error is None and tp.offset >= 0 for tp in found):
                    return ends
                error: Exception = RetriableKafkaError(
                    f"{self.name} end offsets of {topic}: {[tp.error for tp in found]}")
            except KafkaException as exc:
                error = translate(exc, f"{self.name} end offsets of {topic}")
            if not isinstance(error, RetriableKafkaError) or self._clock() > deadline:
                raise error
            time.sleep(0.2)

    def partitions(self, topic: str, timeout_s: float = 30.0) -> list[int]:
        """The topic's partition numbers; empty when the topic does not exist."""
        try:
            metadata = self._consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        except KafkaException as exc:
            raise translate(exc, f"{self.name} metadata of {topic}") from exc
        if metadata is None or metadata.error is not None:
            return []
        return sorted(metadata.partitions)

    def close(self) -> None:
        try:
            self._consumer.close()
        except KafkaException as exc:
            raise translate(exc, f"{self.name} close") from exc


# ---------------------------------------------------------------------------- the producer


class KafkaProducer:
    """A producer that raises only our errors; transactional when built with an id.
    ``tally`` holds the client-wide errors it reported and recovered from."""

    def __init__(self, producer: Producer, transactional_id: str | None = None, *,
                 tally: ErrorTally | None = None) -> None:
        self._producer = producer
        self.transactional_id = transactional_id
        self.tally = tally or ErrorTally(transactional_id or "producer")

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None, *,
                partition: int | None = None,
                headers: Sequence[tuple[str, bytes]] | None = None,
                on_delivery: Callable[[Delivery], None] | None = None) -> None:
        """Queue one message; ``ProducerQueueFullError`` when the local queue is full."""
        kwargs: dict[str, Any] = {"value": value, "key": key}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = list(headers)
        if on_delivery is not None:
            kwargs["on_delivery"] = _delivery_callback(on_delivery)
        try:
            self._producer.produce(topic, **kwargs)
        except BufferError as exc:
            raise ProducerQueueFullError(f"producer queue full producing to {topic}") from exc
        except KafkaException as exc:
            raise translate(exc, f"cannot produce to {topic}") from exc

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery reports (their callbacks run here); returns how many."""
        try:
            return int(self._producer.poll(timeout_s))
        except KafkaException as exc:
            raise translate(exc, "producer poll") from exc

    def flush(self, timeout_s: float) -> int:
        """Wait for every queued message's report; returns how many are still unreported."""
        try:
            return int(self._producer.flush(timeout_s))
        except KafkaException as exc:
            raise translate(exc, "producer flush") from exc

    # -- transactions (see streams.transactions for the procedure)

    def init_transactions(self, timeout_s: float) -> None:
        try:
            self._producer.init_transactions(timeout_s)
        except KafkaException as exc:
            raise translate(exc, f"init transactions of {self.transactional_id}") from exc

    def begin_transaction(self) -> None:
        try:
            self._producer.begin_transaction()
        except KafkaException as exc:
            raise translate(exc, f"begin a transaction of {self.transactional_id}") from exc

    def send_offsets_to_transaction(self, positions: Iterable[Position],
                                    consumer: KafkaConsumer, timeout_s: float) -> None:
        try:
            self._producer.send_offsets_to_transaction(
                [_tp(p) for p in positions], consumer._consumer.consumer_group_metadata(),
                timeout_s)
        except KafkaException as exc:
            raise translate(exc, f"send offsets to the transaction of "
                                 f"{self.transactional_id}") from exc

    def commit_transaction(self, timeout_s: float) -> None:
        try:
            self._producer.commit_transaction(timeout_s)
        except KafkaException as exc:
            raise translate(exc, f"commit the transaction of {self.transactional_id}") from exc

    def abort_transaction(self, timeout_s: float) -> None:
        try:
            self._producer.abort_transaction(timeout_s)
        except KafkaException as exc:
            raise translate(exc, f"abort the transaction of {self.transactional_id}") from exc


def _delivery_callback(on_delivery: Callable[[Delivery], None]) -> Callable[..., None]:
    def delivered(error: KafkaError | None, message: Message) -> None:
        failure = None if error is None else DeliveryError(
            f"{message.topic()} not acknowledged: {error.str()} ({error.name()})",
            kafka_error=error.name())
        offset = message.offset()
        on_delivery(Delivery(message.topic() or "", message.partition() or 0,
                             -1 if offset is None else offset, failure))

    return delivered


# ---------------------------------------------------------------------------- factories


def await_cluster(client: Any, settings: Settings, what: str) -> None:
    """Return once the cluster answers a metadata request from ``client``; after the connect
    timeout raise ``KafkaUnreachableError`` naming the address and where it was configured."""
    timeout_s = settings.kafka.connect_timeout_s
    try:
        client.list_topics(topic=_PROBE_TOPIC, timeout=timeout_s)
    except KafkaException as exc:
        reason = translate(exc, what)
        raise KafkaUnreachableError(
            f"cannot reach Kafka at {settings.kafka_bootstrap()} within "
            f"{timeout_s:g} s ({_cause(exc)}); that address comes from "
            f"{settings.kafka_origin()}", kafka_error=reason.kafka_error) from exc


def ensure_reachable(settings: Settings) -> None:
    """``KafkaUnreachableError`` unless the cluster answers within the connect timeout: for
    processes that reach Kafka through another client library (the monitor's Faust), so an
    unreachable cluster is reported as every other command reports it."""
    make_consumer(settings, "qustream-reachability-probe").close()


def _cause(exc: KafkaException) -> str:
    inner = exc.args[0] if exc.args else None
    return inner.str() if isinstance(inner, KafkaError) else str(exc)


def make_producer(
    settings: Settings, *, transactional_id: str | None = None, **overrides: Any
) -> KafkaProducer:
    """An idempotent, acks=all producer; transactional when ``transactional_id`` is given (then
    ``init_transactions`` has run: an earlier instance's open transaction is aborted and that
    instance fenced)."""
    config = producer_config(settings, **overrides)
    if transactional_id is not None:
        config["transactional.id"] = transactional_id
    tally = ErrorTally(transactional_id or "producer")
    try:
        client = Producer({**client_logging(), **config, "error_cb": tally.on_client_error})
    except KafkaException as exc:
        raise translate(exc, "cannot create producer") from exc
    try:
        await_cluster(client, settings, f"producer {transactional_id or ''}".strip())
    except KafkaUnreachableError:
        tally.silent = True  # see _consumer
        raise
    producer = KafkaProducer(client, transactional_id, tally=tally)
    if transactional_id is not None:
        # The transaction coordinator may be moving (a broker just died): wait that out.
        deadline = time.monotonic() + RETRY_DEADLINE_S
        while True:
            try:
                producer.init_transactions(30)
                break
            except RetriableKafkaError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    return producer


def make_consumer(settings: Settings, group_id: str, **overrides: Any) -> KafkaConsumer:
    """A consumer with manual commits, reading only committed data, from the earliest offset;
    errors that are not fatal are counted and logged (``ErrorPolicy.COUNT``)."""
    return _consumer(settings, group_id, ErrorPolicy.COUNT, overrides)


def make_reader(settings: Settings, group_id: str, **overrides: Any) -> KafkaConsumer:
    """A consumer for a bounded read (to the end of a partition, a rebuild, an audit): like
    ``make_consumer``, but every consumer error raises (``ErrorPolicy.RAISE``)."""
    return _consumer(settings, group_id, ErrorPolicy.RAISE, overrides)


def _consumer(settings: Settings, group_id: str, policy: ErrorPolicy,
              overrides: dict[str, Any]) -> KafkaConsumer:
    tally = ErrorTally(group_id)
    config = {**client_logging(), **consumer_config(settings, group_id, **overrides),
              "error_cb": tally.on_client_error}
    try:
        client = Consumer(config)
    except KafkaException as exc:
        raise translate(exc, "cannot create consumer") from exc
    try:
        await_cluster(client, settings, f"consumer {group_id}")
    except KafkaUnreachableError:
        tally.silent = True  # closing serves the queued connection errors: already reported
        client.close()
        raise
    return KafkaConsumer(client, group_id, policy=policy, tally=tally)


def read_to_end(settings: Settings, topic: str, group_id: str,
                partitions: Sequence[int] | None = None, *,
                start: Mapping[int, int] | None = None, **overrides: Any) -> Iterator[Record]:
    """Every committed record of ``partitions`` of ``topic`` (default: all of them), from offset
    0 (or the partition's offset in ``start``) to the end each partition has when the reader
    gets there, partition batches interleaved in fetch order; any consumer error raises
    (``make_reader``). Nothing is committed. A start below the partition's first retained
    offset reads from there (``auto.offset.reset``); callers check a start against the
    partition's bounds (``KafkaConsumer.watermarks``) when a later one would be wrong."""
    # An empty fetch at a partition's end waits fetch.wait.max.ms (500 ms by default) on the
    # broker before the end is reported: a bounded read wants to know at once.
    reader = make_reader(settings, group_id, **{"enable.partition.eof": True,
                                                "fetch.wait.max.ms": 10, **overrides})
    try:
        chosen = reader.partitions(topic) if partitions is None else list(partitions)
        reader.assign([Position(topic, p, (start or {}).get(p, 0)) for p in chosen])
        while not all(reader.at_end(topic, p) for p in chosen):
            # consume waits for its count or its whole timeout (an end reached does not wake
            # it): a short one, or every read would last a second past its end
            yield from reader.consume(10_000, 0.1)
    finally:
        reader.close()
