"""Alerts as events: raise once while a condition holds, resolve once when it ends.

``evaluate`` (rules.py) says, for every (rule, subject) it can judge, whether the rule fires now
and with which value. ``reconcile`` compares that with the alerts already open and decides the
events: ``AlertRaised`` for a condition that fires and has no open alert (so an alert is never
raised twice while firing), ``AlertResolved`` for an open alert whose condition was judged and
found to hold no longer. A rule that cannot judge a subject at the moment (too little data in
its window) says nothing about it, and an open alert then stays open. ``fold`` rebuilds the open
alerts from those events, which is how the monitor learns, after a restart, what it has
already told (the ``alerts`` topic is the record of it; see services/monitor/runtime.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

SEVERITIES = ("info", "warning", "critical")


@dataclass(frozen=True, slots=True)
class Observation:
    """One rule judged for one subject at one moment."""

    rule: str
    severity: str
    subject: str
    firing: bool
    value: float
    threshold: float
    since_ms: int  # when the condition began (event time), meaningful while firing
    summary: str
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        return alert_key(self.rule, self.subject)


@dataclass(frozen=True, slots=True)
class AlertRaised:
    alert_id: str
    rule: str
    severity: str
    subject: str
    value: float
    threshold: float
    since_ms: int
    raised_at_ms: int
    summary: str
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        return alert_key(self.rule, self.subject)


@dataclass(frozen=True, slots=True)
class AlertResolved:
    alert_id: str
    rule: str
    severity: str
    subject: str
    value: float
    since_ms: int
    resolved_at_ms: int
    summary: str

    @property
    def key(self) -> str:
        return alert_key(self.rule, self.subject)


AlertEvent = AlertRaised | AlertResolved


@dataclass(frozen=True, slots=True)
class OpenAlerts:
    """The raised and not yet resolved alerts, by ``alert_key``."""

    alerts: Mapping[str, AlertRaised] = field(default_factory=dict)

    def __contains__(self, key: object) -> bool:
        return key in self.alerts

    def __len__(self) -> int:
        return len(self.alerts)


def alert_key(rule: str, subject: str) -> str:
    """The Kafka key of a rule's alerts about a subject (one lifecycle at a time)."""
    return f"{rule}|{subject}"


def alert_id(rule: str, subject: str, since_ms: int) -> str:
    """A stable identity of one firing: the same condition gives the same id after a restart."""
    digest = hashlib.sha256(f"{rule}\x00{subject}\x00{since_ms}".encode()).hexdigest()
    return digest[:24]


def fold(open_alerts: OpenAlerts, event: AlertEvent) -> OpenAlerts:
    """The open alerts after one event of the ``alerts`` topic."""
    if isinstance(event, AlertRaised):
        return OpenAlerts({**open_alerts.alerts, event.key: event})
    if event.key not in open_alerts.alerts:
        return open_alerts
    return OpenAlerts({k: v for k, v in open_alerts.alerts.items() if k != event.key})


def reconcile(open_alerts: OpenAlerts, observations: Iterable[Observation], now_ms: int
              ) -> tuple[OpenAlerts, tuple[AlertEvent, ...]]:
    """Events that bring the open alerts in line with the observations, and the result."""
    by_key = {o.key: o for o in observations}
    events: list[AlertEvent] = []
    for key, observation in sorted(by_key.items()):
        if observation.firing and key not in open_alerts.alerts:
            events.append(AlertRaised(
                alert_id(observation.rule, observation.subject, observation.since_ms),
                observation.rule, observation.severity, observation.subject, observation.value,
                observation.threshold, observation.since_ms, now_ms, observation.summary,
                observation.labels))
    for key, raised in sorted(open_alerts.alerts.items()):
        judged = by_key.get(key)
        if judged is not None and not judged.firing:
            events.append(AlertResolved(raised.alert_id, raised.rule, raised.severity,
                                        raised.subject, judged.value, raised.since_ms,
                                        now_ms, judged.summary))
    for event in events:
        open_alerts = fold(open_alerts, event)
    return open_alerts, tuple(events)
