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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from protocol.errors import OperationError
from streams.kafka import make_consumer
from streams.settings import Settings

AUDITED_TOPICS = ("chain.blocks", "chain.consensus", "entropy.raw", "ledger.tx", "users.events")


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

    def _consumer(self) -> Consumer:
        return make_consumer(self.settings, f"audit-{time.time_ns()}", **{
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
            metadata = consumer.list_topics(name, timeout=self.timeout_s)
            described = metadata.topics.get(name)
            if described is None or described.error is not None:
                return {}
            out = {}
            for partition in sorted(described.partitions):
                out[partition] = self._watermarks(consumer, name, partition)
            return out
        finally:
            consumer.close()

    def _watermarks(self, consumer: Consumer, name: str, partition: int) -> tuple[int, int]:
        from streams.chain_reader import watermarks

        try:
            return watermarks(consumer, name, partition, self.timeout_s)
        except KafkaException as exc:
            raise SourceError(f"cannot read the watermarks of {name}: {exc}") from exc

    def size(self, topic: str) -> int:
        return sum(high - low for low, high in self.bounds(topic).values())

    def read(self, topic: str) -> Iterator[LogRecord]:
        bounds = {p: b for p, b in self.bounds(topic).items() if b[1] > b[0]}
        if not bounds:
            return
        name = self.settings.topic(topic)
        consumer = self._consumer()
        try:
            for partition, (low, high) in sorted(bounds.items()):
                consumer.assign([TopicPartition(name, partition, low)])
                idle_since = time.monotonic()
                while True:
                    messages = consumer.consume(2000, 0.5)
                    if not messages and time.monotonic() - idle_since > self.timeout_s:
                        raise SourceError(f"{name}[{partition}] stalled before offset {high}")
                    finished = False
                    for message in messages:
                        error = message.error()
                        if error is not None:
                            if error.code() == KafkaError._PARTITION_EOF:
                                finished = True
                                continue
                            raise SourceError(f"cannot read {name}: {error}")
                        idle_since = time.monotonic()
                        offset = int(message.offset() or 0)
                        if offset >= high:
                            finished = True
                            break
                        yield LogRecord(topic, partition, offset, int(message.timestamp()[1]),
                                        message.key(), message.value())
                        if offset + 1 >= high:
                            finished = True
                    if finished:
                        break
        finally:
            consumer.close()
