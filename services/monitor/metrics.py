"""The monitor's windows as Prometheus metrics (prometheus-client, a collector read at scrape).

Every value is computed from the current state when Prometheus scrapes, with the same window
arithmetic the rules use, so a PrometheusRule over these metrics (the Helm chart's) alerts on
the same lines as the monitor. ``METRICS`` lists every name with its help and labels (the
chart's dashboard check and docs/operations.md read it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.monitor.core import network as net
from services.monitor.core import sources as src
from services.monitor.core.alerts import OpenAlerts
from services.monitor.core.policy import MonitorPolicy
from services.monitor.core.state import MonitorState
from services.monitor.core.windows import percentile

PREFIX = "qustream_monitor_"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    kind: str  # gauge or counter
    help: str
    labels: tuple[str, ...] = ()


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("qrng_bytes_per_second", "gauge", "bytes published per second over the QRNG "
               "window", ("source",)),
    MetricSpec("qrng_health_failures", "gauge", "failed health-test windows in the QRNG window",
               ("source", "test")),
    MetricSpec("qrng_quarantined", "gauge", "1 while the source reports QUARANTINED",
               ("source",)),
    MetricSpec("qrng_quarantines", "gauge", "quarantines entered in the QRNG window",
               ("source",)),
    MetricSpec("qrng_chunk_gaps", "gauge", "sequence gaps, repeats or steps back in the QRNG "
               "window", ("source",)),
    MetricSpec("qrng_seconds_since_chunk", "gauge", "seconds since the last chunk", ("source",)),
    MetricSpec("qrng_seconds_since_heartbeat", "gauge", "seconds since the last heartbeat",
               ("source",)),
    MetricSpec("qrng_seconds_since_verified_checkpoint", "gauge",
               "seconds since the last checkpoint with a valid signature", ("source",)),
    MetricSpec("validator_missed_precommits", "gauge", "heights missed in the validator window",
               ("validator",)),
    MetricSpec("validator_proposal_timeouts", "gauge",
               "own proposals that timed out in the validator window", ("validator",)),
    MetricSpec("validator_last_signed_height", "gauge", "last height the validator signed",
               ("validator",)),
    MetricSpec("validator_in_set", "gauge", "1 while the validator is in the active set",
               ("validator",)),
    MetricSpec("validator_jailed", "gauge", "1 while the ledger marks the validator jailed",
               ("validator",)),
    MetricSpec("validator_slashes", "gauge", "slashes in the slash window", ("validator",)),
    MetricSpec("chain_height", "gauge", "height of the newest finalized block"),
    MetricSpec("chain_seconds_since_block", "gauge", "seconds since the newest block"),
    MetricSpec("chain_expected_block_seconds", "gauge", "expected time between blocks"),
    MetricSpec("chain_finality_seconds", "gauge", "proposal-to-finality time over the chain "
               "window, by quantile", ("quantile",)),
    MetricSpec("chain_rounds_above_zero", "gauge", "blocks decided after round 0 in the chain "
               "window"),
    MetricSpec("chain_block_rejected", "gauge", "1 while a finalized block does not verify"),
    MetricSpec("chain_pulse_not_random", "gauge", "1 while the latest pulse carries no fresh "
               "entropy from enough sources"),
    MetricSpec("mempool_depth", "gauge", "submitted transactions not yet in a block"),
    MetricSpec("dlq_messages", "gauge", "dead-lettered messages in the DLQ window",
               ("dlq", "reason")),
    MetricSpec("alerts_firing", "gauge", "open alerts by rule and severity",
               ("rule", "severity")),
    MetricSpec("events", "counter", "records processed, by topic", ("topic",)),
    MetricSpec("undecodable", "counter", "records that did not decode, by topic", ("topic",)),
    MetricSpec("delivery_gaps", "counter", "offset ranges the consumer skipped, read back "
               "from Kafka, by topic", ("topic",)),
)
NAMES: tuple[str, ...] = tuple(PREFIX + m.name for m in METRICS)


@dataclass(frozen=True, slots=True)
class Snapshot:
    policy: MonitorPolicy
    state: MonitorState
    open_alerts: OpenAlerts
    events: dict[str, int]
    undecodable: dict[str, int]
    read_back: dict[str, int]


def _since(now_ms: int, at_ms: int | None) -> float | None:
    return None if at_ms is None else max(0, now_ms - at_ms) / 1000


class MonitorCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot | None]) -> None:
        self._snapshot = snapshot
        self._specs = {m.name: m for m in METRICS}

    def _family(self, name: str) -> GaugeMetricFamily | CounterMetricFamily:
        spec = self._specs[name]
        if spec.kind == "counter":
            return CounterMetricFamily(PREFIX + name, spec.help, labels=spec.labels)
        return GaugeMetricFamily(PREFIX + name, spec.help, labels=spec.labels)

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot()
        if snapshot is None:
            return
        now_ms = time.time_ns() // 1_000_000
        families = {name: self._family(name) for name in self._specs}

        def put(name: str, labels: list[str], value: float | None) -> None:
            if value is not None:
                families[name].add_metric(labels, value)

        policy, state = snapshot.policy, snapshot.state
        qrng = policy.qrng_window
        for sid, source in sorted(state.sources.items()):
            put("qrng_bytes_per_second", [sid], src.bytes_per_s(policy, source, now_ms))
            for test in src.TESTS:
                put("qrng_health_failures", [sid, test],
                    source.failures(test).total(qrng, now_ms))
            put("qrng_quarantined", [sid], 1.0 if source.health_state == src.QUARANTINED else 0)
            put("qrng_quarantines", [sid], source.quarantines.total(qrng, now_ms))
            put("qrng_chunk_gaps", [sid], source.irregular_seqs.total(qrng, now_ms))
            put("qrng_seconds_since_chunk", [sid], _since(now_ms, source.last_chunk_ms))
            put("qrng_seconds_since_heartbeat", [sid], _since(now_ms, source.last_heartbeat_ms))
            put("qrng_seconds_since_verified_checkpoint", [sid],
                _since(now_ms, source.last_checkpoint_ms))
        chain = state.network
        window = policy.validator_window
        for address, record in sorted(chain.validators.items()):
            put("validator_missed_precommits", [address], record.missed.total(window, now_ms))
            put("validator_proposal_timeouts", [address],
                record.proposal_timeouts.total(window, now_ms))
            put("validator_last_signed_height", [address], record.last_signed_height)
            put("validator_in_set", [address], 1.0 if record.in_set else 0.0)
            put("validator_jailed", [address], 1.0 if record.jailed else 0.0)
            put("validator_slashes", [address], record.slashes.total(policy.slash_window, now_ms))
        put("chain_height", [], chain.height)
        put("chain_seconds_since_block", [], _since(now_ms, chain.last_block_ms))
        put("chain_expected_block_seconds", [], net.block_period_ms(policy, chain) / 1000)
        samples = chain.finality_ms.values(policy.chain_window, now_ms)
        for label, per_mille in (("0.5", 500), ("0.95", 950), ("0.99", 990)):
            value = percentile(samples, per_mille)
            put("chain_finality_seconds", [label], None if value is None else value / 1000)
        put("chain_rounds_above_zero", [], chain.late_rounds.total(policy.chain_window, now_ms))
        put("chain_block_rejected", [], 1.0 if chain.rejected else 0.0)
        put("chain_pulse_not_random", [], 1.0 if chain.not_random else 0.0)
        put("mempool_depth", [], state.mempool.depth)
        for subject, counts in sorted(state.dead_letters.counts.items()):
            dlq, _, reason = subject.partition("/")
            put("dlq_messages", [dlq, reason], counts.total(policy.dlq_window, now_ms))
        firing: dict[tuple[str, str], int] = {}
        for alert in snapshot.open_alerts.alerts.values():
            firing[(alert.rule, alert.severity)] = firing.get((alert.rule, alert.severity), 0) + 1
        for (rule, severity), count in sorted(firing.items()):
            put("alerts_firing", [rule, severity], count)
        for topic, count in sorted(snapshot.events.items()):
            put("events", [topic], count)
        for topic, count in sorted(snapshot.undecodable.items()):
            put("undecodable", [topic], count)
        for topic, count in sorted(snapshot.read_back.items()):
            put("delivery_gaps", [topic], count)
        yield from families.values()


def serve(snapshot: Callable[[], Snapshot | None], port: int, host: str = "127.0.0.1") -> int:
    """Serve ``/metrics`` on ``host:port`` (0 picks a free port); returns the port."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector(snapshot))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)
