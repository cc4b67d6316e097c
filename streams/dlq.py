"""Dead-letter queues: rejected input keeps its original bytes, the reason and a typed error.

A consumer that cannot accept a record (bad signature, unknown source, malformed bytes, wrong
schema, oversized) hands it to ``DeadLetters.send`` with the exception that rejected it (or an
enum member naming the reason) and moves on; nothing is dropped silently and nothing crashes
the consumer. The DLQ record is a ``MessageDeadLettered`` Avro message; reason and error type
are also put in headers so `kcat`-style tools show them without decoding.

The error type is derived from the error's type, never chosen at the call site
(``error_type``): an enum member's value, else the exception class's ``code`` (a ``ClassVar``
such as ``EntropyRejectedError.code``), else the class name. So the same rejection has the same
error type wherever it is dead-lettered, and metrics and alerts can count by it.
"""

from __future__ import annotations

import enum
import time
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

from streams.codec import Codec, default_codec
from streams.kafka import Record

# The reason is written twice (record and header); capped so a DLQ record of the largest wrapped
# message still fits the DLQ topic (streams.topics.DLQ_ENVELOPE_BYTES).
MAX_REASON_BYTES = 4096


class _Producer(Protocol):
    def produce(self, topic: str, value: bytes | None, key: bytes | None = None, *,
                headers: Sequence[tuple[str, bytes]] | None = None) -> None:
        ...


Rejection = BaseException | enum.Enum


def error_type(error: Rejection) -> str:
    """The stable error type of a rejection (see the module docstring)."""
    if isinstance(error, enum.Enum):
        return str(error.value)
    code = getattr(type(error), "code", None)
    return code if isinstance(code, str) else type(error).__name__


class DeadLetters:
    """Writes rejected records to one DLQ topic and counts them by error type."""

    def __init__(
        self, producer: _Producer, topic: str, consumer: str, codec: Codec | None = None
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._consumer = consumer
        self._codec = codec or default_codec()
        self.counts: Counter[str] = Counter()

    def send(self, record: Record, error: Rejection, detail: str | None = None) -> None:
        """Dead-letter ``record`` as it was consumed. The reason is ``detail`` or, for an
        exception, its message; the error type is ``error_type(error)``."""
        kind = error_type(error)
        reason = _truncate(detail if detail is not None else (
            str(error) if isinstance(error, BaseException) else kind), MAX_REASON_BYTES)
        letter = {
            "source_topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "key": record.key,
            "value": record.value,
            "reason": reason,
            "error_type": kind,
            "consumer": self._consumer,
            "dead_lettered_at_ms": int(time.time() * 1000),
        }
        self._producer.produce(
            self._topic,
            self._codec.encode("MessageDeadLettered", letter),
            record.key,
            headers=[("qs.dlq.reason", reason.encode()), ("qs.dlq.error", kind.encode())],
        )
        self.counts[kind] += 1


def _truncate(text: str, limit: int) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "..."
