"""Recording stand-ins for confluent-kafka's raw ``Consumer`` and ``Producer``.

They sit *under* the edge kit's wrappers (``KafkaConsumer(FakeRawConsumer(...))``), so a unit
test runs the real wrapper, translation, transactional batch and run loop code, and only the
network is replaced. Messages and errors are the library's own ``Message`` and ``KafkaError``
objects, so what the kit sees is what the library hands out. Every call is appended to
``calls`` as ``(method name, arguments)``; ``fail`` makes a named method raise once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition


def message(topic: str, partition: int, offset: int, value: bytes = b"v", key: bytes = b"k",
            timestamp_ms: int = 1_000) -> Message:
    return Message(topic=topic, partition=partition, offset=offset, key=key, value=value,
                   timestamp=(1, timestamp_ms), headers=[("h", b"1")])


def error_event(code: int, *, topic: str = "t", partition: int = 0, fatal: bool = False,
                retriable: bool = False) -> Message:
    return Message(topic=topic, partition=partition,
                   error=KafkaError(code, "scripted", fatal=fatal, retriable=retriable))


def kafka_exception(code: int, **flags: bool) -> KafkaException:
    return KafkaException(KafkaError(code, "scripted", **flags))


class _Recording:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._failures: dict[str, deque[BaseException]] = {}

    def fail(self, method: str, *errors: BaseException) -> None:
        """The next calls of ``method`` raise ``errors``, one each, in order."""
        self._failures.setdefault(method, deque()).extend(errors)

    def _call(self, method: str, *args: Any) -> None:
        self.calls.append((method, args))
        pending = self._failures.get(method)
        if pending:
            raise pending.popleft()

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


class FakeRawConsumer(_Recording):
    """Serves ``script``: each entry is one ``poll`` result (a Message or None)."""

    def __init__(self, script: Iterable[Message | None] = ()) -> None:
        super().__init__()
        self.script: deque[Message | None] = deque(script)
        self.poll_timeouts: list[float] = []
        # (topic, partition) -> the offset of the next record: past what was handed out
        self.positions: dict[tuple[str, int], int] = {}

    def _handed_out(self, item: Message | None) -> Message | None:
        if item is not None and item.error() is None:
            self.positions[(item.topic(), item.partition())] = item.offset() + 1
        return item

    def poll(self, timeout: float) -> Message | None:
        self._call("poll", timeout)
        self.poll_timeouts.append(timeout)
        return self._handed_out(self.script.popleft()) if self.script else None

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in sorted(self.positions)]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition,
                               self.positions.get((tp.topic, tp.partition), -1001))
                for tp in partitions]

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        self._call("consume", num_messages, timeout)
        out: list[Message] = []
        while self.script and len(out) < num_messages:
            item = self.script.popleft()
            if item is None:
                break
            out.append(item)
            self._handed_out(item)
        return out

    def seek(self, partition: Any) -> None:
        self._call("seek", (partition.topic, partition.partition, partition.offset))
        self.positions[(partition.topic, partition.partition)] = partition.offset

    def consumer_group_metadata(self) -> str:
        self._call("consumer_group_metadata")
        return "group-metadata"

    def close(self) -> None:
        self._call("close")


class FakeRawProducer(_Recording):
    """Records produce and transaction calls; delivery reports arrive at ``flush``/``poll``."""

    def __init__(self, *, unreported: int = 0) -> None:
        super().__init__()
        self.unreported = unreported
        self._reports: list[tuple[Callable[..., None], Message]] = []
        self._offsets: dict[tuple[str, int], int] = {}

    def produce(self, topic: str, **kwargs: Any) -> None:
        self._call("produce", topic, kwargs.get("value"))
        partition = kwargs.get("partition", 0)
        offset = self._offsets.get((topic, partition), 0)
        self._offsets[(topic, partition)] = offset + 1
        callback = kwargs.get("on_delivery")
        if callback is not None:
            self._reports.append((callback, Message(topic=topic, partition=partition,
                                                    offset=offset)))

    def _report(self) -> int:
        reports, self._reports = self._reports, []
        for callback, delivered in reports:
            callback(None, delivered)
        return len(reports)

    def poll(self, timeout: float) -> int:
        self._call("poll", timeout)
        return self._report()

    def flush(self, timeout: float) -> int:
        self._call("flush", timeout)
        self._report()
        return self.unreported

    def begin_transaction(self) -> None:
        self._call("begin_transaction")

    def send_offsets_to_transaction(self, positions: list[Any], metadata: Any,
                                    timeout: float) -> None:
        self._call("send_offsets_to_transaction",
                   sorted((p.topic, p.partition, p.offset) for p in positions), metadata)

    def commit_transaction(self, timeout: float) -> None:
        self._call("commit_transaction")

    def abort_transaction(self, timeout: float) -> None:
        self._call("abort_transaction")
