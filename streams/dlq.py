"""Dead-letter queues: rejected input keeps its original bytes and the reason.

A consumer that cannot accept a message (bad signature, unknown source, malformed bytes,
wrong schema, oversized) hands it to ``DeadLetters.send`` and moves on; nothing is dropped
silently and nothing crashes the consumer. The DLQ record is a ``MessageDeadLettered`` Avro
message; the reason is also put in headers so `kcat`-style tools show it without decoding.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Protocol

from streams.codec import Codec, default_codec

# The reason is written twice (record and header); capped so a DLQ record of the largest wrapped
# message still fits the DLQ topic (streams.topics.DLQ_ENVELOPE_BYTES).
MAX_REASON_BYTES = 4096


class _Producer(Protocol):
    def produce(self, topic: str, value: bytes | None = ..., key: Any = ..., **kwargs: Any) -> None:
        ...


class DeadLetters:
    """Writes rejected messages to one DLQ topic and counts them by reason type."""

    def __init__(
        self, producer: _Producer, topic: str, consumer: str, codec: Codec | None = None
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._consumer = consumer
        self._codec = codec or default_codec()
        self.counts: Counter[str] = Counter()

    def send(
        self,
        *,
        source_topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        reason: str,
        error_type: str,
    ) -> None:
        reason = _truncate(reason, MAX_REASON_BYTES)
        record = {
            "source_topic": source_topic,
            "partition": partition,
            "offset": offset,
            "key": key,
            "value": value,
            "reason": reason,
            "error_type": error_type,
            "consumer": self._consumer,
            "dead_lettered_at_ms": int(time.time() * 1000),
        }
        self._producer.produce(
            self._topic,
            value=self._codec.encode("MessageDeadLettered", record),
            key=key,
            headers=[("qs.dlq.reason", reason.encode()), ("qs.dlq.error", error_type.encode())],
        )
        self.counts[error_type] += 1

    def send_message(self, message: Any, reason: str, error_type: str) -> None:
        """Dead-letter a confluent-kafka ``Message`` as it was consumed."""
        self.send(
            source_topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
            key=message.key(),
            value=message.value(),
            reason=reason,
            error_type=error_type,
        )


def _truncate(text: str, limit: int) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "..."
