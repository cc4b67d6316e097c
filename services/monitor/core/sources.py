"""The monitor's view of one QRNG source, folded from ``qrng.status`` and ``entropy.raw``.

``evolve(policy, state, fact)`` returns the new state; it never mutates. What is kept:

- the health state the source last reported, and since when;
- failed health-test windows per test (RCT, APT), from the growth of the heartbeat counters
  (totals since the ingest process started; a smaller total means it restarted);
- quarantines entered (one per ``HEALTH_FAILURE`` alert of the source);
- published bytes and sequence irregularities (a gap, a repeat or a step back) per bucket;
- the times of the last heartbeat, the last chunk and the last verified checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import assert_never

from services.monitor.core.facts import (
    CheckpointSeen,
    ChunkSeen,
    HeartbeatSeen,
    QrngAlertSeen,
    SourceFact,
)
from services.monitor.core.policy import MonitorPolicy
from services.monitor.core.positions import Positions
from services.monitor.core.windows import Counts

TESTS = ("RCT", "APT")
UNKNOWN = "UNKNOWN"
QUARANTINED = "QUARANTINED"


@dataclass(frozen=True, slots=True)
class SourceState:
    source_id: str
    positions: Positions = field(default_factory=dict)
    first_seen_ms: int | None = None
    health_state: str = UNKNOWN
    health_since_ms: int | None = None
    last_heartbeat_ms: int | None = None
    reported_rct: int = 0  # the counters of the last heartbeat
    reported_apt: int = 0
    rct_failures: Counts = field(default_factory=Counts)
    apt_failures: Counts = field(default_factory=Counts)
    quarantines: Counts = field(default_factory=Counts)
    published_bytes: Counts = field(default_factory=Counts)
    first_chunk_ms: int | None = None
    last_chunk_ms: int | None = None
    last_seq: int = -1
    irregular_seqs: Counts = field(default_factory=Counts)
    last_checkpoint_ms: int | None = None
    bad_checkpoints: Counts = field(default_factory=Counts)

    def failures(self, test: str) -> Counts:
        return self.rct_failures if test == "RCT" else self.apt_failures


def _seen(state: SourceState, at_ms: int) -> SourceState:
    if state.first_seen_ms is None or at_ms < state.first_seen_ms:
        return replace(state, first_seen_ms=at_ms)
    return state


def _heartbeat(policy: MonitorPolicy, state: SourceState, beat: HeartbeatSeen) -> SourceState:
    window = policy.qrng_window
    # A total below the last one means the ingest process restarted and counts from zero.
    rct = beat.rct_failures - state.reported_rct if beat.rct_failures >= state.reported_rct \
        else beat.rct_failures
    apt = beat.apt_failures - state.reported_apt if beat.apt_failures >= state.reported_apt \
        else beat.apt_failures
    since = state.health_since_ms if beat.health_state == state.health_state else beat.at_ms
    return replace(
        state,
        health_state=beat.health_state,
        health_since_ms=since,
        last_heartbeat_ms=max(beat.at_ms, state.last_heartbeat_ms or beat.at_ms),
        reported_rct=beat.rct_failures,
        reported_apt=beat.apt_failures,
        rct_failures=state.rct_failures.add(window, beat.at_ms, rct),
        apt_failures=state.apt_failures.add(window, beat.at_ms, apt),
    )


def _alert(policy: MonitorPolicy, state: SourceState, alert: QrngAlertSeen) -> SourceState:
    if alert.kind != "HEALTH_FAILURE":
        return state  # recoveries, rate and stall reports: the heartbeats carry the state
    since = state.health_since_ms if state.health_state == QUARANTINED else alert.at_ms
    return replace(state, health_state=QUARANTINED, health_since_ms=since,
                   quarantines=state.quarantines.add(policy.qrng_window, alert.at_ms))


def _chunk(policy: MonitorPolicy, state: SourceState, chunk: ChunkSeen) -> SourceState:
    window = policy.qrng_window
    irregular = state.last_seq >= 0 and chunk.seq != state.last_seq + 1
    return replace(
        state,
        published_bytes=state.published_bytes.add(window, chunk.produced_at_ms, chunk.size),
        first_chunk_ms=min(chunk.produced_at_ms, state.first_chunk_ms or chunk.produced_at_ms),
        last_chunk_ms=max(chunk.produced_at_ms, state.last_chunk_ms or chunk.produced_at_ms),
        last_seq=max(state.last_seq, chunk.seq),
        irregular_seqs=(state.irregular_seqs.add(window, chunk.produced_at_ms) if irregular
                        else state.irregular_seqs),
    )


def _checkpoint(policy: MonitorPolicy, state: SourceState, checkpoint: CheckpointSeen
                ) -> SourceState:
    if checkpoint.verified is False:
        return replace(state, bad_checkpoints=state.bad_checkpoints.add(
            policy.qrng_window, checkpoint.signed_at_ms))
    last = max(checkpoint.signed_at_ms, state.last_checkpoint_ms or checkpoint.signed_at_ms)
    return replace(state, last_checkpoint_ms=last)


def evolve(policy: MonitorPolicy, state: SourceState, fact: SourceFact) -> SourceState:
    """Fold one fact about this source into its state."""
    match fact:
        case HeartbeatSeen():
            return _seen(_heartbeat(policy, state, fact), fact.at_ms)
        case QrngAlertSeen():
            return _seen(_alert(policy, state, fact), fact.at_ms)
        case ChunkSeen():
            return _seen(_chunk(policy, state, fact), fact.produced_at_ms)
        case CheckpointSeen():
            return _seen(_checkpoint(policy, state, fact), fact.signed_at_ms)
        case _:
            assert_never(fact)


def bytes_per_s(policy: MonitorPolicy, state: SourceState, now_ms: int) -> float | None:
    """Published bytes per second over the current window, or None while the window has seen
    less than half of its span of this source (a rate over a few seconds says little)."""
    start, _ = policy.qrng_window.current(now_ms)
    if state.first_chunk_ms is None and state.first_seen_ms is None:
        return None
    observed_from = max(start, min(v for v in (state.first_chunk_ms, state.first_seen_ms)
                                   if v is not None))
    span = now_ms - observed_from
    if span * 2 < policy.qrng_window.size_ms:
        return None
    return state.published_bytes.total(policy.qrng_window, now_ms) * 1000 / span
