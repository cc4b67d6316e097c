"""Alert decisions for liveness: rate below a floor and stalled source, with recovery.

Pure: the monitor shell calls ``assess`` every heartbeat with the time and the measured rate and
emits whatever alerts it returns. Each condition alerts once when it starts and once
(``RECOVERED``) when it ends, never on every heartbeat.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class AlertKind(StrEnum):
    HEALTH_FAILURE = "HEALTH_FAILURE"
    RATE_BELOW_FLOOR = "RATE_BELOW_FLOOR"
    STALLED = "STALLED"
    RECOVERED = "RECOVERED"


@dataclass(frozen=True, slots=True)
class Alert:
    kind: AlertKind
    test: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class LivenessPolicy:
    """``rate_floor_bytes_per_s`` 0 disables the rate alert; ``stall_after_ms``: no data for
    that long means stalled."""

    rate_floor_bytes_per_s: float = 0.0
    stall_after_ms: int = 5000


@dataclass(frozen=True, slots=True)
class LivenessState:
    stalled: bool = False
    below_floor: bool = False


def assess(
    policy: LivenessPolicy, state: LivenessState, *, now_ms: int, last_data_ms: int,
    bytes_per_s: float,
) -> tuple[LivenessState, tuple[Alert, ...]]:
    """Compare one measurement with the policy; return the new state and alerts to raise."""
    alerts: list[Alert] = []
    silent_ms = now_ms - last_data_ms
    stalled = silent_ms >= policy.stall_after_ms
    if stalled and not state.stalled:
        alerts.append(Alert(AlertKind.STALLED, None, f"no data from the source for {silent_ms} ms"))
    elif state.stalled and not stalled:
        alerts.append(Alert(AlertKind.RECOVERED, None, "source delivers data again"))
    below = (not stalled and policy.rate_floor_bytes_per_s > 0
             and bytes_per_s < policy.rate_floor_bytes_per_s)
    if below and not state.below_floor:
        alerts.append(Alert(AlertKind.RATE_BELOW_FLOOR, None,
                            f"rate {bytes_per_s:.0f} B/s is below the floor "
                            f"{policy.rate_floor_bytes_per_s:.0f} B/s"))
    elif state.below_floor and not below and not stalled:
        alerts.append(Alert(AlertKind.RECOVERED, None,
                            f"rate {bytes_per_s:.0f} B/s is back above the floor"))
    return LivenessState(stalled, below), tuple(alerts)
