"""Where an audit reads the logs from: the live Kafka topics or an export directory.

Both implement ``LogSource``: ``read(topic)`` yields every record of a logical topic (name
without the deployment's prefix), partition by partition in offset order, up to the end the
topic had when reading started; ``size(topic)`` estimates the count for progress bars.

``KafkaSource`` assigns every partition explicitly from its low watermark with a fresh,
throw-away group id and ``read_committed`` isolation; it never commits offsets, so an audit
leaves no trace in the cluster and never moves anyone's position. ``ExportSource`` reads the
files ``export.write_export`` wrote, after checking the manifest hash and every file's hash
(``ExportError`` on any mismatch).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from protocol.errors import OperationError
from streams.errors import KafkaOperationError
from streams.kafka import KafkaConsumer, Position, make_reader
from streams.settings import Settings

AUDITED_TOPICS = ("chain.blocks", "chain.consensus", "entropy.raw", "ledger.tx", "users.events",
                  "chain.snapshots")


class SourceError(OperationError):
    """A log could not be read (the broker failed, or an export is damaged)."""


@dataclass(frozen=True, slots=True)
class LogRecord:
    topic: str  # logical name, e.g. "chain.blocks"
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


class LogSource(Protocol):
    def read(self, topic: str) -> Iterator[LogRecord]: ...

    def size(self, topic: str) -> int: ...

    def describe(self) -> str: ...


class MemorySource:
    """A ``LogSource`` over records already in memory (tests, benchmarks, embedding)."""

    def __init__(self, topics: dict[str, list[LogRecord]]) -> None:
        self.topics = topics

    def describe(self) -> str:
        return "memory"

    def size(self, topic: str) -> int:
        return len(self.topics.get(topic, []))

    def read(self, topic: str) -> Iterator[LogRecord]:
        return iter(self.topics.get(topic, []))


class KafkaSource:
    """The live topics of ``settings`` (see module doc). Nothing is committed, ever."""

    def __init__(self, settings: Settings, *, timeout_s: float = 60.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._bounds: dict[str, dict[int, tuple[int, int]]] = {}

    def describe(self) -> str:
        return f"Kafka {self.settings.kafka_bootstrap()} prefix {self.settings.topic_prefix!r}"

    def _consumer(self) -> KafkaConsumer:
        # A hole in what is audited would be a wrong verdict: any consumer error raises.
        return make_reader(self.settings, f"audit-{time.time_ns()}", **{
            "enable.partition.eof": True, "enable.auto.commit": False,
            "fetch.wait.max.ms": 20})

    def bounds(self, topic: str) -> dict[int, tuple[int, int]]:
        """Per partition (low, high) watermarks, taken once per topic (so ``size`` and
        ``read`` agree, and a growing topic is read up to that snapshot); empty when the topic
        does not exist."""
        if topic not in self._bounds:
            self._bounds[topic] = self._snapshot(topic)
        return self._bounds[topic]

    def _snapshot(self, topic: str) -> dict[int, tuple[int, int]]:
        name = self.settings.topic(topic)
        consumer = self._consumer()
        try:
            return {partition: consumer.watermarks(name, partition, self.timeout_s)
                    for partition in consumer.partitions(name, self.timeout_s)}
        except KafkaOperationError as exc:
            raise SourceError(f"cannot read the watermarks of {name}: {exc}") from exc
        finally:
            consumer.close()

    def size(self, topic: str) -> int:
        return sum(high - low for low, high in self.bounds(topic).values())

    def record_ends(self, topic: str, starts: Mapping[int, int]) -> dict[int, int]:
        """Per partition of ``starts``: the offset after the last record from its start up to
        the high watermark of ``bounds``, or the start itself when no record lies there.

        That is where a consumer stands, by the records it handed out, once it has every record
        the partition holds: a transactional writer's commit marker takes the offset after its
        records, so the high watermark is one past where such a consumer ever stands
        (``KafkaConsumer.last_record`` reads the tail)."""
        name = self.settings.topic(topic)
        bounds = self.bounds(topic)
        ends: dict[int, int] = {}
        consumer = self._consumer()
        try:
            for partition, start in starts.items():
                low, upper = bounds.get(partition, (0, 0))
                last = consumer.last_record(name, partition, max(start, low), upper,
                                            self.timeout_s)
                ends[partition] = start if last is None else last.offset + 1
        except KafkaOperationError as exc:
            raise SourceError(f"cannot read the end of {name}: {exc}") from exc
        finally:
            consumer.close()
        return ends

    def read(self, topic: str) -> Iterator[LogRecord]:
        bounds = {p: b for p, b in self.bounds(topic).items() if b[1] > b[0]}
        if not bounds:
            return
        name = self.settings.topic(topic)
        consumer = self._consumer()
        try:
            for partition, (low, high) in sorted(bounds.items()):
                consumer.assign([Position(name, partition, low)])
                idle_since = time.monotonic()
                while True:
                    records = consumer.consume(2000, 0.5)
                    if not records and time.monotonic() - idle_since > self.timeout_s:
                        raise SourceError(f"{name}[{partition}] stalled before offset {high}")
                    finished = consumer.at_end(name, partition)
                    for record in records:
                        idle_since = time.monotonic()
                        if record.offset >= high:
                            finished = True
                            break
                        yield LogRecord(topic, partition, record.offset, record.timestamp_ms,
                                        record.key, record.value)
                        if record.offset + 1 >= high:
                            finished = True
                    if finished:
                        break
        except KafkaOperationError as exc:
            raise SourceError(f"cannot read {name}: {exc}") from exc
        finally:
            consumer.close()
