"""The monitor's thresholds and windows: one immutable policy, defaults for a production network.

Every rule reads its numbers from here (``rules.py``); the shell builds a ``MonitorPolicy`` from
settings (``QUSTREAM_MONITOR_*``) and the Helm chart's PrometheusRules are generated from the
same defaults, so the two alert on the same lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.monitor.core.windows import WindowSpec

SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS


@dataclass(frozen=True, slots=True)
class MonitorPolicy:
    # QRNG sources
    qrng_window: WindowSpec = field(
        default_factory=lambda: WindowSpec.hopping(MINUTE_MS, 10 * SECOND_MS))
    qrng_health_failures: int = 1  # failed test windows (RCT + APT) in the window
    qrng_rate_floor_bytes_per_s: int = 1024
    qrng_stall_ms: int = 30 * SECOND_MS  # no chunk for this long
    qrng_heartbeat_timeout_ms: int = 15 * SECOND_MS
    qrng_checkpoint_stale_ms: int = 30 * SECOND_MS
    qrng_chunk_gaps: int = 1
    # validators
    validator_window: WindowSpec = field(
        default_factory=lambda: WindowSpec.hopping(MINUTE_MS, 10 * SECOND_MS))
    missed_precommits: int = 3
    proposal_timeouts: int = 2
    slash_window: WindowSpec = field(
        default_factory=lambda: WindowSpec.hopping(60 * MINUTE_MS, 5 * MINUTE_MS))
    judge_lag_blocks: int = 2  # a height's signers are judged this many blocks later
    # chain
    chain_window: WindowSpec = field(
        default_factory=lambda: WindowSpec.hopping(5 * MINUTE_MS, 30 * SECOND_MS))
    stall_periods: int = 3
    block_period_ms: int | None = None  # None: learned (median of recent block intervals)
    min_block_period_ms: int = SECOND_MS
    finality_p95_ms: int = 5 * SECOND_MS
    rounds_above_zero: int = 3
    mempool_depth: int = 1000
    mempool_ttl_ms: int = 60 * MINUTE_MS
    # dead letters
    dlq_window: WindowSpec = field(
        default_factory=lambda: WindowSpec.hopping(5 * MINUTE_MS, 30 * SECOND_MS))
    dlq_messages: int = 1
