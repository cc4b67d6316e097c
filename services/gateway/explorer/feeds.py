"""What the explorer shows beside the chain: QRNG source health and the monitor's alerts.

``SourceBoard`` and ``AlertBoard`` are pure folds over decoded records (``qrng.status`` heartbeats
and QRNG alerts; ``alerts`` raised/resolved events). ``NetworkFeeds`` is the shell: one daemon
thread reading both topics from a bounded history before their ends, then following them. It is
best effort: when Kafka or a topic is missing the pages say so (``error``), the chain view is not
affected.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("qustream.gateway.explorer")

RATE_HISTORY = 120  # heartbeats kept per source (a few minutes at the default interval)
RECENT_ALERTS = 50
HISTORY_RECORDS = 600  # per partition, read back on start


@dataclass
class SourceRow:
    source_id: str
    at_ms: int = 0
    bytes_per_s: float = 0.0
    health_state: str = "UNKNOWN"
    last_seq: int = -1
    chunks_published: int = 0
    simulated: bool = False
    failed_windows: int = 0
    dropped_bytes: int = 0
    publish_latency_ms: float = 0.0
    rates: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=RATE_HISTORY))
    alerts: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=10))


class SourceBoard:
    """The latest heartbeat, rate history and own alerts of every source on ``qrng.status``."""

    def __init__(self) -> None:
        self.rows: dict[str, SourceRow] = {}

    def apply(self, schema: str, record: dict[str, Any]) -> None:
        source = str(record.get("source_id", ""))
        if not source:
            return
        row = self.rows.setdefault(source, SourceRow(source))
        if schema == "QrngHeartbeatEmitted":
            row.at_ms = int(record["at_ms"])
            row.bytes_per_s = float(record["bytes_per_s"])
            row.health_state = str(record["health_state"])
            row.last_seq = int(record["last_seq"])
            row.chunks_published = int(record["chunks_published"])
            row.simulated = bool(record["simulated"])
            row.failed_windows = int(record.get("rct_failures") or 0) + int(
                record.get("apt_failures") or 0)
            row.dropped_bytes = int(record.get("dropped_bytes") or 0)
            row.publish_latency_ms = float(record.get("publish_latency_ms") or 0.0)
            row.rates.append((row.at_ms, row.bytes_per_s))
        elif schema == "QrngAlertRaised":
            row.alerts.append({"at_ms": int(record["at_ms"]), "kind": str(record["kind"]),
                               "test": record.get("test") or "", "detail": str(record["detail"])})

    def document(self, now_ms: int, registered: dict[str, bool]) -> list[dict[str, Any]]:
        """One entry per source seen or registered on chain (``registered``: id -> simulated
        flag the chain records)."""
        out = []
        for source in sorted(set(self.rows) | set(registered)):
            row = self.rows.get(source, SourceRow(source))
            out.append({
                "source_id": source, "registered": source in registered,
                "simulated": registered.get(source, row.simulated) or row.simulated,
                "health_state": row.health_state if row.at_ms else "UNKNOWN",
                "bytes_per_s": row.bytes_per_s, "last_seq": row.last_seq,
                "chunks_published": row.chunks_published, "failed_windows": row.failed_windows,
                "dropped_bytes": row.dropped_bytes,
                "publish_latency_ms": row.publish_latency_ms,
                "heartbeat_age_ms": now_ms - row.at_ms if row.at_ms else None,
                "rates": [[at, rate] for at, rate in row.rates],
                "alerts": list(row.alerts)[::-1],
            })
        return out


class AlertBoard:
    """Open alerts and the most recent alert events of the monitor (``alerts`` topic)."""

    def __init__(self) -> None:
        self.open: dict[str, dict[str, Any]] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_ALERTS)

    def apply(self, schema: str, record: dict[str, Any]) -> None:
        if schema not in ("AlertRaised", "AlertResolved"):
            return
        raised = schema == "AlertRaised"
        event = {"state": "raised" if raised else "resolved", "alert_id": record["alert_id"],
                 "rule": record["rule"], "severity": record["severity"],
                 "subject": record["subject"], "summary": record["summary"],
                 "since_ms": record["since_ms"],
                 "at_ms": record["raised_at_ms"] if raised else record["resolved_at_ms"]}
        key = f"{record['rule']}/{record['subject']}"
        if raised:
            self.open[key] = event
        else:
            self.open.pop(key, None)
        self.recent.append(event)

    def document(self) -> dict[str, Any]:
        return {"open": sorted(self.open.values(), key=lambda e: (e["rule"], e["subject"])),
                "recent": list(self.recent)[::-1]}


class NetworkFeeds:
    """Follows ``qrng.status`` and ``alerts`` on a daemon thread (module doc)."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.sources = SourceBoard()
        self.alerts = AlertBoard()
        self.alerts_available = False
        self.error: str | None = None
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="explorer-feeds", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception as exc:  # broker restarts and the like: say so, retry
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("explorer feeds: %s", self.error)
                self._stop.wait(3)

    def _follow(self) -> None:
        from streams.codec import CodecError, default_codec
        from streams.kafka import Position, Record, make_consumer
        from streams.runloop import RunLoop, by_topic

        codec = default_codec()
        consumer = make_consumer(self.settings, f"gateway-explorer-{time.time_ns()}",
                                 **{"fetch.wait.max.ms": 100})
        try:
            positions = []
            status = self.settings.topic("qrng.status")
            alerts = self.settings.topic("alerts")
            for topic in (status, alerts):
                partitions = consumer.partitions(topic, timeout_s=10)
                if topic == alerts:
                    self.alerts_available = bool(partitions)
                for partition in partitions:
                    low, end = consumer.watermarks(topic, partition)
                    positions.append(Position(topic, partition,
                                              max(low, end - HISTORY_RECORDS)))
            if not positions:
                raise RuntimeError(f"neither {status} nor {alerts} exists yet")
            consumer.assign(positions)
            self.error = None

            def fold(board: SourceBoard | AlertBoard) -> Callable[[Record], None]:
                def apply(record: Record) -> None:
                    try:
                        decoded = codec.decode(record.value)
                    except CodecError:
                        return
                    with self.lock:
                        board.apply(decoded.schema, decoded.record)

                return apply

            RunLoop(consumer, by_topic({status: fold(self.sources), alerts: fold(self.alerts)}),
                    poll_s=0.5, stop_event=self._stop).run()
        finally:
            consumer.close()
