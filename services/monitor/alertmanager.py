"""Delivery to an Alertmanager-compatible receiver: ``POST /api/v2/alerts``.

The body is Alertmanager's v2 ``postableAlerts`` list. Like Prometheus, the monitor re-sends
every firing alert each ``resend_s`` with ``endsAt`` a few intervals ahead (Alertmanager ends an
alert that is not refreshed), and sends a resolved alert once with ``endsAt`` = the time it was
resolved. Labels are the same in both (alertname, severity, the subject's labels, and
``service="qustream"``), so Alertmanager groups and deduplicates them as one alert.
Delivery is best effort with retries: the ``alerts`` topic, not the webhook, is the record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from services.monitor.core.alerts import AlertRaised, AlertResolved
from services.monitor.core.rules import BY_NAME

log = logging.getLogger(__name__)
RUNBOOK = "docs/operations.md#{anchor}"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def labels_of(alert: AlertRaised) -> dict[str, str]:
    labels = {"alertname": alert.rule, "severity": alert.severity, "service": "qustream"}
    labels.update(dict(alert.labels))
    if not alert.labels and alert.subject != "chain":
        labels["subject"] = alert.subject
    return labels


def _annotations(alert: AlertRaised | AlertResolved) -> dict[str, str]:
    rule = BY_NAME.get(alert.rule)
    annotations = {"summary": alert.summary, "alert_id": alert.alert_id}
    if rule is not None:
        annotations["description"] = rule.fires
        annotations["runbook"] = RUNBOOK.format(anchor=rule.name.lower())
    return annotations


def firing_alert(alert: AlertRaised, now_ms: int, resend_ms: int,
                 generator_url: str = "") -> dict[str, Any]:
    return {"labels": labels_of(alert), "annotations": _annotations(alert),
            "startsAt": _iso(alert.since_ms), "endsAt": _iso(now_ms + 4 * resend_ms),
            "generatorURL": generator_url}


def resolved_alert(resolved: AlertResolved, raised: AlertRaised,
                   generator_url: str = "") -> dict[str, Any]:
    return {"labels": labels_of(raised), "annotations": _annotations(resolved),
            "startsAt": _iso(resolved.since_ms), "endsAt": _iso(resolved.resolved_at_ms),
            "generatorURL": generator_url}


class AlertmanagerClient:
    """Posts alert lists to ``<url>/api/v2/alerts`` from the event loop, retrying a while."""

    def __init__(self, url: str, *, timeout_s: float = 5.0, attempts: int = 5) -> None:
        self.endpoint = url.rstrip("/") + "/api/v2/alerts"
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._client: httpx.AsyncClient | None = None
        self.delivered = 0
        self.failed = 0

    async def post(self, alerts: Sequence[dict[str, Any]]) -> bool:
        if not alerts:
            return True
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout_s)
        delay = 0.5
        for attempt in range(self._attempts):
            try:
                response = await self._client.post(self.endpoint, json=list(alerts))
                if response.status_code < 300:
                    self.delivered += len(alerts)
                    return True
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            log.warning("alertmanager %s: %s (attempt %d)", self.endpoint, problem, attempt + 1)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        self.failed += len(alerts)
        return False

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def batch(firing: Iterable[AlertRaised], resolved: Iterable[tuple[AlertResolved, AlertRaised]],
          now_ms: int, resend_ms: int, generator_url: str = "") -> list[dict[str, Any]]:
    return [*(firing_alert(a, now_ms, resend_ms, generator_url) for a in firing),
            *(resolved_alert(r, a, generator_url) for r, a in resolved)]
