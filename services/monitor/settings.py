"""The monitor's settings: ``QUSTREAM_MONITOR_*`` environment variables (defaults below).

Windows are given in seconds (size and hop; equal for a tumbling window); thresholds as the
rules in docs/operations.md describe them. ``policy()`` turns them into the core's
``MonitorPolicy``; the defaults are ``MonitorPolicy()``'s, so the chart's PrometheusRules,
generated from those defaults, alert on the same lines.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

from services.monitor.core.policy import MonitorPolicy
from services.monitor.core.windows import WindowSpec

_P = MonitorPolicy()


def _s(window: WindowSpec) -> tuple[float, float]:
    return window.size_ms / 1000, window.hop_ms / 1000


class MonitorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QUSTREAM_MONITOR_", extra="forbid")

    # delivery
    alertmanager_url: str | None = None  # e.g. http://alertmanager:9093 (POST /api/v2/alerts)
    alertmanager_resend_s: float = 60.0
    generator_url: str = ""  # link put in every alert (a dashboard)
    metrics_port: int | None = None  # Prometheus /metrics; unset: none
    metrics_host: str = "127.0.0.1"
    # processing
    app_id: str | None = None  # Faust app id = consumer group; default <prefix>monitor
    instance_id: str = "monitor-0"  # static consumer-group membership (one monitor per prefix)
    evaluate_interval_s: float = 1.0
    batch_size: int = 2000
    batch_wait_s: float = 0.2
    catch_up_timeout_s: float = 300.0  # judge anyway when catching up takes longer
    # judge only when a catch-up round reached the inputs' ends at most this long after
    # measuring them (runtime.py, guarantee 6); well under the shortest absence rule
    fresh_s: float = 1.0
    # windows (seconds)
    qrng_window_s: float = _s(_P.qrng_window)[0]
    qrng_hop_s: float = _s(_P.qrng_window)[1]
    validator_window_s: float = _s(_P.validator_window)[0]
    validator_hop_s: float = _s(_P.validator_window)[1]
    slash_window_s: float = _s(_P.slash_window)[0]
    slash_hop_s: float = _s(_P.slash_window)[1]
    chain_window_s: float = _s(_P.chain_window)[0]
    chain_hop_s: float = _s(_P.chain_window)[1]
    dlq_window_s: float = _s(_P.dlq_window)[0]
    dlq_hop_s: float = _s(_P.dlq_window)[1]
    # thresholds
    qrng_health_failures: int = _P.qrng_health_failures
    qrng_rate_floor_bytes_per_s: int = _P.qrng_rate_floor_bytes_per_s
    qrng_stall_s: float = _P.qrng_stall_ms / 1000
    qrng_heartbeat_timeout_s: float = _P.qrng_heartbeat_timeout_ms / 1000
    qrng_checkpoint_stale_s: float = _P.qrng_checkpoint_stale_ms / 1000
    qrng_chunk_gaps: int = _P.qrng_chunk_gaps
    missed_precommits: int = _P.missed_precommits
    proposal_timeouts: int = _P.proposal_timeouts
    judge_lag_blocks: int = _P.judge_lag_blocks
    stall_periods: int = _P.stall_periods
    block_period_ms: int | None = _P.block_period_ms
    min_block_period_ms: int = _P.min_block_period_ms
    finality_p95_ms: int = _P.finality_p95_ms
    rounds_above_zero: int = _P.rounds_above_zero
    mempool_depth: int = _P.mempool_depth
    mempool_ttl_s: float = _P.mempool_ttl_ms / 1000
    dlq_messages: int = _P.dlq_messages

    def policy(self) -> MonitorPolicy:
        def window(size_s: float, hop_s: float) -> WindowSpec:
            return WindowSpec(round(size_s * 1000), round(hop_s * 1000))

        return MonitorPolicy(
            qrng_window=window(self.qrng_window_s, self.qrng_hop_s),
            qrng_health_failures=self.qrng_health_failures,
            qrng_rate_floor_bytes_per_s=self.qrng_rate_floor_bytes_per_s,
            qrng_stall_ms=round(self.qrng_stall_s * 1000),
            qrng_heartbeat_timeout_ms=round(self.qrng_heartbeat_timeout_s * 1000),
            qrng_checkpoint_stale_ms=round(self.qrng_checkpoint_stale_s * 1000),
            qrng_chunk_gaps=self.qrng_chunk_gaps,
            validator_window=window(self.validator_window_s, self.validator_hop_s),
            missed_precommits=self.missed_precommits,
            proposal_timeouts=self.proposal_timeouts,
            slash_window=window(self.slash_window_s, self.slash_hop_s),
            judge_lag_blocks=self.judge_lag_blocks,
            chain_window=window(self.chain_window_s, self.chain_hop_s),
            stall_periods=self.stall_periods,
            block_period_ms=self.block_period_ms,
            min_block_period_ms=self.min_block_period_ms,
            finality_p95_ms=self.finality_p95_ms,
            rounds_above_zero=self.rounds_above_zero,
            mempool_depth=self.mempool_depth,
            mempool_ttl_ms=round(self.mempool_ttl_s * 1000),
            dlq_window=window(self.dlq_window_s, self.dlq_hop_s),
            dlq_messages=self.dlq_messages,
        )
