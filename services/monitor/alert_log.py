"""The ``alerts`` topic: ``AlertRaised`` / ``AlertResolved`` records keyed by rule + subject.

It is the record of what the monitor has told: folding it (``core.alerts.fold``) gives the open
alerts, which the monitor does on start so that a restart neither raises an open alert again
nor forgets to resolve one (see runtime.py). ``qustream alerts`` reads it the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from services.monitor.core.alerts import AlertEvent, AlertRaised, AlertResolved
from streams.codec import Codec, CodecError, default_codec
from streams.errors import KafkaOperationError
from streams.kafka import Position, make_consumer
from streams.settings import Settings


class AlertLogError(RuntimeError):
    """The alerts topic cannot be read (missing, or the cluster unreachable)."""


def encode(event: AlertEvent, codec: Codec | None = None) -> bytes:
    codec = codec or default_codec()
    if isinstance(event, AlertRaised):
        return codec.encode("AlertRaised", {
            "alert_id": event.alert_id, "rule": event.rule, "severity": event.severity,
            "subject": event.subject, "value": float(event.value),
            "threshold": float(event.threshold), "since_ms": event.since_ms,
            "raised_at_ms": event.raised_at_ms, "summary": event.summary,
            "labels": dict(event.labels)})
    return codec.encode("AlertResolved", {
        "alert_id": event.alert_id, "rule": event.rule, "severity": event.severity,
        "subject": event.subject, "value": float(event.value), "since_ms": event.since_ms,
        "resolved_at_ms": event.resolved_at_ms, "summary": event.summary})


def decode(data: bytes | None, codec: Codec | None = None) -> AlertEvent:
    """An alert event; ``CodecError`` for anything else."""
    schema, r = (codec or default_codec()).decode(data)
    if schema == "AlertRaised":
        return AlertRaised(r["alert_id"], r["rule"], r["severity"], r["subject"], r["value"],
                           r["threshold"], r["since_ms"], r["raised_at_ms"], r["summary"],
                           tuple(sorted(r["labels"].items())))
    if schema == "AlertResolved":
        return AlertResolved(r["alert_id"], r["rule"], r["severity"], r["subject"], r["value"],
                             r["since_ms"], r["resolved_at_ms"], r["summary"])
    raise CodecError(f"{schema} does not belong on the alerts topic")


def key(event: AlertEvent) -> bytes:
    return event.key.encode()


def read_alerts(settings: Settings, *, follow: bool = False,
                stop: Callable[[], bool] = lambda: False) -> Iterator[AlertEvent]:
    """Every alert event on the topic in order; with ``follow``, then new ones as they come
    (until ``stop()``). Undecodable records are skipped."""
    topic = settings.topic("alerts")
    consumer = make_consumer(settings, f"{settings.topic('alerts')}-reader-{time.time_ns()}",
                             **{"fetch.wait.max.ms": 50})
    codec = default_codec()
    try:
        try:
            known = consumer.partitions(topic, timeout_s=10)
        except KafkaOperationError as exc:
            raise AlertLogError(f"cannot reach Kafka at {settings.kafka_bootstrap()}: {exc}"
                                ) from exc
        if not known:
            raise AlertLogError(f"topic {topic} does not exist (qustream topics ensure creates "
                                "it; the monitor writes it)")
        low, end = consumer.watermarks(topic)
        if not follow and end <= low:
            return
        consumer.assign([Position(topic, 0, low)])
        while not stop():
            record = consumer.poll(0.3)
            if record is None:
                if not follow and consumer.position(topic, 0) >= end:
                    return
                if not follow:
                    end = consumer.watermarks(topic)[1]
                continue
            try:
                yield decode(record.value, codec)
            except CodecError:
                continue
            if not follow and record.offset + 1 >= end:
                return
    finally:
        consumer.close()
