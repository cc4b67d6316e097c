"""Monitoring of a QRNG source: OpenTelemetry metrics, status events, and the status board.

- ``IngestMetrics``: counters for published bytes and chunks, dropped bytes, health failures per
  test; a publish-latency histogram; observable gauges for the quarantine state and the rate.
  Prometheus scrapes them through ``streams.telemetry`` (``--metrics-port``).
- ``StatusEmitter``: ``QrngHeartbeatEmitted`` and ``QrngAlertRaised`` on ``qrng.status``, keyed by
  source id.
- ``StatusBoard``: folds ``qrng.status`` into one row per source for ``qustream qrng status``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from rich.table import Table

from services.qrng_ingest.core.liveness import Alert
from streams.codec import Codec, Decoded, default_codec
from streams.errors import ProducerQueueFullError
from streams.kafka import KafkaProducer
from streams.settings import Settings

HEALTH_STATE_CODES = {"STARTUP": 0, "HEALTHY": 1, "QUARANTINED": 2, "STALLED": 3}


class IngestMetrics:
    """The OpenTelemetry instruments of one ingest process (labels: ``source``)."""

    def __init__(self, meter: Meter, source_id: str) -> None:
        self._attributes = {"source": source_id}
        self.health_state = "STARTUP"
        self.bytes_per_s = 0.0
        self._published_bytes = meter.create_counter(
            "qrng_published_bytes", unit="By", description="entropy bytes published")
        self._chunks = meter.create_counter(
            "qrng_published_chunks", description="chunks published")
        self._dropped = meter.create_counter(
            "qrng_dropped_bytes", unit="By",
            description="raw bytes not published (startup, failing or quarantined blocks)")
        self._failures = meter.create_counter(
            "qrng_health_failures", description="APT windows failed, by test (RCT, APT)")
        self._latency = meter.create_histogram(
            "qrng_publish_latency", unit="ms", description="produce to acks=all acknowledgement")
        meter.create_observable_gauge(
            "qrng_health_state", callbacks=[self._observe_state],
            description="0 startup, 1 healthy, 2 quarantined, 3 stalled")
        meter.create_observable_gauge(
            "qrng_rate", unit="By/s", callbacks=[self._observe_rate],
            description="published bytes per second over the last heartbeat interval")

    def _observe_state(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(HEALTH_STATE_CODES[self.health_state], self._attributes)]

    def _observe_rate(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.bytes_per_s, self._attributes)]

    def published(self, size: int) -> None:
        self._published_bytes.add(size, self._attributes)
        self._chunks.add(1, self._attributes)

    def dropped(self, size: int) -> None:
        self._dropped.add(size, self._attributes)

    def health_failures(self, test: str, windows: int) -> None:
        if windows:
            self._failures.add(windows, {**self._attributes, "test": test})

    def latency(self, milliseconds: float) -> None:
        self._latency.record(milliseconds, self._attributes)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    bytes_per_s: float
    chunks_published: int
    last_seq: int
    private_last_seq: int
    health_state: str
    simulated: bool
    rct_failures: int
    apt_failures: int
    dropped_bytes: int
    publish_latency_ms: float


class StatusEmitter:
    """Produces heartbeats and alerts of one source to ``qrng.status``."""

    def __init__(self, settings: Settings, producer: KafkaProducer, source_id: str,
                 codec: Codec | None = None) -> None:
        self._producer = producer
        self._topic = settings.topic("qrng.status")
        self._source_id = source_id
        self._key = source_id.encode()
        self._codec = codec or default_codec()

    def heartbeat(self, beat: Heartbeat, at_ms: int) -> None:
        record: dict[str, Any] = {"source_id": self._source_id, "at_ms": at_ms,
                                  **{k: getattr(beat, k) for k in beat.__slots__}}
        self._send("QrngHeartbeatEmitted", record)

    def alert(self, alert: Alert, at_ms: int) -> None:
        self._send("QrngAlertRaised", {"source_id": self._source_id, "at_ms": at_ms,
                                       "kind": alert.kind.value, "test": alert.test,
                                       "detail": alert.detail})

    def _send(self, schema: str, record: dict[str, Any]) -> None:
        value = self._codec.encode(schema, record)
        while True:
            try:
                self._producer.produce(self._topic, value, self._key)
                return
            except ProducerQueueFullError:
                self._producer.poll(0.05)


@dataclass(frozen=True, slots=True)
class StatusRow:
    source_id: str
    at_ms: int = 0
    bytes_per_s: float = 0.0
    health_state: str = "?"
    last_seq: int = -1
    private_last_seq: int = -1
    chunks_published: int = 0
    simulated: bool = False
    failures: int = 0
    last_alert: str = ""


class StatusBoard:
    """The latest heartbeat and alert of every source seen on ``qrng.status``."""

    def __init__(self) -> None:
        self.rows: dict[str, StatusRow] = {}

    def apply(self, decoded: Decoded) -> None:
        record = decoded.record
        source = str(record["source_id"])
        row = self.rows.get(source, StatusRow(source))
        if decoded.schema == "QrngHeartbeatEmitted":
            row = replace(row, at_ms=int(record["at_ms"]), bytes_per_s=float(record["bytes_per_s"]),
                          health_state=str(record["health_state"]),
                          last_seq=int(record["last_seq"]),
                          private_last_seq=int(record.get("private_last_seq", -1)),
                          chunks_published=int(record["chunks_published"]),
                          simulated=bool(record["simulated"]),
                          failures=int(record.get("rct_failures", 0))
                          + int(record.get("apt_failures", 0)))
        elif decoded.schema == "QrngAlertRaised":
            test = f" {record['test']}" if record.get("test") else ""
            row = replace(row, last_alert=f"{record['kind']}{test}: {record['detail']}")
        self.rows[source] = row

    def table(self, now_ms: int | None = None) -> Table:
        now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        table = Table(title="QRNG sources (qrng.status)")
        for column in ("source", "health", "rate MB/s", "last seq", "private seq", "chunks",
                       "failed windows", "heartbeat age", "last alert"):
            table.add_column(column)
        for source in sorted(self.rows):
            row = self.rows[source]
            style = {"HEALTHY": "green", "QUARANTINED": "red", "STALLED": "yellow"}.get(
                row.health_state, "")
            age = f"{(now_ms - row.at_ms) / 1000:.1f}s" if row.at_ms else "-"
            name = f"{source} (simulated)" if row.simulated else source
            table.add_row(name, f"[{style}]{row.health_state}[/]" if style else row.health_state,
                          f"{row.bytes_per_s / 1e6:.1f}", str(row.last_seq),
                          str(row.private_last_seq), str(row.chunks_published),
                          str(row.failures), age, row.last_alert[:60])
        return table
