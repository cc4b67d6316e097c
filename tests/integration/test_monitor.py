"""The monitor on the real Kafka, watching a running network (real processes under the
supervisor: 2 QRNG servers, 4 validators, the tally, the monitor), with a test Alertmanager on
loopback. One network serves every test of the module, in order; each test leaves it healthy.

- a QRNG source switched to a stuck output raises a health alert within 10 s, resolves after;
  the webhook receives Alertmanager v2 JSON for both;
- a validator killed with -9 raises missed precommits, resolved when it is back;
- no block for three periods (the tally stopped) raises ChainStalled, resolved after;
- the monitor killed with -9 and restarted raises nothing twice, loses no resolve, and its
  persisted windows equal a fold of the topics from scratch (the consistency check);
- (without the network) a record the consumer skipped is read back from the real topic.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from protocol.entropy.chain import CheckpointPolicy
from protocol.keys import SigningKey
from services.monitor import store
from services.monitor.alert_log import read_alerts
from services.monitor.core.alerts import AlertEvent, AlertRaised, AlertResolved
from services.monitor.core.facts import Position
from services.monitor.core.state import SOURCE_PREFIX, MonitorState, apply_record
from services.monitor.decode import Record, RecordDecoder
from services.monitor.runtime import MonitorRuntime
from services.monitor.settings import MonitorSettings
from services.qrng_ingest.core.liveness import LivenessPolicy
from services.qrng_ingest.service import IngestConfig, IngestService, build_service
from services.qrng_ingest.sources import PacedSource, SimulatorSource
from streams.admin import ensure_topics
from streams.chain_wire import decode_finalized
from streams.codec import default_codec
from streams.kafka import Position as KafkaPosition
from streams.kafka import make_consumer, make_producer, read_to_end
from streams.settings import Settings
from streams.supervisor import ServiceSpec, Supervisor
from streams.topics import spec
from tests.conftest import TEST_PORTS
from tests.integration.test_chain_e2e import (
    CLI,
    PacedFifo,
    env_of,
    finalized_height,
    validator_spec,
)

pytestmark = pytest.mark.integration

WINDOW_S = 10  # the monitor's QRNG and validator windows in these tests (1 s hops)


# ---------------------------------------------------------------- test support


class SwitchableSource:
    """A paced simulator that can be switched to a stuck output (one repeated byte) and back:
    the stuck fault of ``sources.FaultSource``, switched at a moment the test knows."""

    simulated = True

    def __init__(self, bytes_per_s: int) -> None:
        self._inner = PacedSource(SimulatorSource(), bytes_per_s)
        self._stuck = threading.Event()

    def stick(self) -> float:
        self._stuck.set()
        return time.time()

    def release(self) -> float:
        self._stuck.clear()
        return time.time()

    def read(self, size: int) -> bytes:
        data = self._inner.read(size)
        return b"\x55" * len(data) if self._stuck.is_set() else data

    def describe(self) -> str:
        return "switchable simulator (tests)"

    def close(self) -> None:
        self._inner.close()


class Alertmanager(BaseHTTPRequestHandler):
    """A test Alertmanager: records every ``POST /api/v2/alerts`` body."""

    received: list[tuple[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.received.append((self.path, json.loads(body)))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class AlertWatch:
    """Follows the alerts topic in a thread; ``wait_for`` finds an event after a given time."""

    def __init__(self, settings: Settings) -> None:
        self.events: list[tuple[float, AlertEvent]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(settings,), daemon=True)
        self._thread.start()

    def _run(self, settings: Settings) -> None:
        while not self._stop.is_set():
            try:
                for event in read_alerts(settings, follow=True, stop=self._stop.is_set):
                    self.events.append((time.time(), event))
            except Exception:  # the topic may not exist for a moment: retry
                time.sleep(0.5)
            if self.events or self._stop.is_set():
                return

    def wait_for(self, kind: type, rule: str, subject: str, after: float, timeout_s: float,
                 tick: Callable[[], object] = lambda: None) -> tuple[float, AlertEvent]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            tick()
            for seen, event in list(self.events):
                if (seen >= after and isinstance(event, kind) and event.rule == rule
                        and event.subject == subject):
                    return seen, event
            time.sleep(0.2)
        raise AssertionError(f"no {kind.__name__} {rule} {subject} within {timeout_s} s; saw "
                             f"{[(type(e).__name__, e.rule, e.subject) for _, e in self.events]}")

    def raised(self, rule: str, subject: str, after: float = 0.0) -> list[AlertRaised]:
        return [e for seen, e in self.events if seen >= after and isinstance(e, AlertRaised)
                and e.rule == rule and e.subject == subject]

    def lifecycle(self, rule: str, subject: str, after: float = 0.0) -> list[type]:
        return [type(e) for seen, e in self.events
                if seen >= after and e.rule == rule and e.subject == subject]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class MonitoredNetwork:
    settings: Settings
    root: Path
    supervisor: Supervisor
    alerts: AlertWatch
    webhook: ThreadingHTTPServer
    metrics_url: str
    fifos: list[PacedFifo]
    ingest: list[IngestService] = field(default_factory=list)

    @property
    def net(self) -> Path:
        return self.root / "net"

    def address(self, validator: int) -> str:
        return SigningKey.load(self.net / "keys" / f"validator-{validator}.json").address.hex()

    def wait_alert(self, kind: type, rule: str, subject: str, after: float, timeout_s: float
                   ) -> tuple[float, AlertEvent]:
        """``AlertWatch.wait_for``, restarting what exits meanwhile (the supervisor's job)."""
        return self.alerts.wait_for(kind, rule, subject, after, timeout_s, self.supervisor.tick)

    def kill_validator(self, validator: int) -> tuple[str, float]:
        """Kill validator ``validator`` with signal 9, keep it down, and wait until the monitor
        raises its missed-precommits alert; its address and when it was killed."""
        victim, name = self.address(validator), f"validator-{validator}"
        killed_at = time.time()
        self.supervisor.kill(name, signal.SIGKILL)
        self.supervisor.stop([name], grace_s=1)
        self.wait_alert(AlertRaised, "ValidatorMissedPrecommits", victim, killed_at,
                        WINDOW_S + 20)
        return victim, killed_at

    def metric(self, name: str) -> float | None:
        try:
            text = httpx.get(self.metrics_url, timeout=5).text
        except httpx.HTTPError:
            return None
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def wait(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.supervisor.tick()
            if condition():
                return
            time.sleep(0.3)
        raise AssertionError(f"{what} within {timeout_s} s\n{self.log('monitor')}")

    def log(self, name: str) -> str:
        path = self.supervisor.log_path(name)
        return path.read_text()[-3000:] if path.exists() else ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def network(_base_settings: Settings, kafka_bootstrap: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[MonitoredNetwork]:
    root = tmp_path_factory.mktemp("monitor")
    settings = _base_settings.model_copy(update={
        "state_dir": root, "topic_prefix": f"t{uuid.uuid4().hex[:8]}.",
        "kafka": _base_settings.kafka.model_copy(update={"bootstrap_servers": kafka_bootstrap}),
        "infra": _base_settings.infra.model_copy(update=TEST_PORTS)})
    net = root / "net"
    subprocess.run([*CLI, "genesis", "new", "--validators", "4", "--accounts", "2", "--sources",
                    "3", "--out", str(net)], check=True, capture_output=True,
                   env={**os.environ, **env_of(settings)})
    ensure_topics(settings)
    webhook = ThreadingHTTPServer(("127.0.0.1", 0), Alertmanager)
    webhook.received = []  # type: ignore[attr-defined]
    threading.Thread(target=webhook.serve_forever, daemon=True).start()
    metrics_port = _free_port()
    env = env_of(settings)
    fifos = [PacedFifo(root / f"qrng-{i}.fifo") for i in range(2)]
    specs = [ServiceSpec(f"qrng-{i}", (
        *CLI, "qrng", "run", "--source", f"file:{fifos[i].path}", "--key",
        str(net / "keys" / f"qrng-{i}.json"), "--source-id", f"qrng-{i}", "--chunk-size", "4KiB",
        "--checkpoint-chunks", "8", "--checkpoint-ms", "300", "--quiet"), env=env)
        for i in range(2)]
    for index in range(4):
        spec = validator_spec(net, index, 500)
        specs.append(ServiceSpec(spec.name, spec.argv, env=env))
    specs.append(ServiceSpec("tally", (*CLI, "tally", "run", "--genesis",
                                       str(net / "genesis.json")), env=env))
    monitor_env = {
        **env, "QUSTREAM_MONITOR_METRICS_PORT": str(metrics_port),
        "QUSTREAM_MONITOR_ALERTMANAGER_URL": f"http://127.0.0.1:{webhook.server_port}",
        "QUSTREAM_MONITOR_ALERTMANAGER_RESEND_S": "5",
        "QUSTREAM_MONITOR_EVALUATE_INTERVAL_S": "0.5",
        **{f"QUSTREAM_MONITOR_{kind}_WINDOW_S": str(WINDOW_S) for kind in ("QRNG", "VALIDATOR")},
        **{f"QUSTREAM_MONITOR_{kind}_HOP_S": "1" for kind in ("QRNG", "VALIDATOR")},
    }
    # INFO: how each catch-up round went is in the log a failure shows (network.log)
    specs.append(ServiceSpec("monitor", (*CLI, "monitor", "run", "--genesis",
                                         str(net / "genesis.json"), "--quiet", "--log-level",
                                         "INFO"), env=monitor_env))
    supervisor = Supervisor(specs, root / "logs", max_restarts=5)
    supervisor.start()
    network = MonitoredNetwork(settings, root, supervisor, AlertWatch(settings), webhook,
                               f"http://127.0.0.1:{metrics_port}/metrics", fifos)
    try:
        network.wait(lambda: (network.metric("qustream_monitor_chain_height") or 0) >= 5, 180,
                     "the monitor saw no 5 blocks")
        yield network
    finally:
        for service in network.ingest:
            service.stop()
        supervisor.stop(grace_s=10)
        network.alerts.close()
        webhook.shutdown()
        for fifo in fifos:
            fifo.close()


# ---------------------------------------------------------------- tests


def test_stuck_qrng_source_raises_a_health_alert_within_10s_and_resolves(
        network: MonitoredNetwork) -> None:
    key = SigningKey.load(network.net / "keys" / "qrng-2.json")
    source = SwitchableSource(128 * 1024)
    config = IngestConfig(source_id="qrng-2", chunk_size=16 * 1024, min_entropy=Fraction(8),
                          alpha_exponent=30, recovery_windows=64, heartbeat_ms=1000,
                          checkpoint=CheckpointPolicy(every_chunks=8, every_ms=300),
                          liveness=LivenessPolicy(stall_after_ms=60_000))
    service = build_service(network.settings, config, source, key)
    network.ingest.append(service)  # runs until the module ends, so qrng-2 stays healthy
    threading.Thread(target=service.run, daemon=True).start()
    network.wait(lambda: network.metric('qustream_monitor_qrng_quarantined{source="qrng-2"}')
                 == 0.0, 60, "qrng-2 never seen healthy")

    stuck_at = source.stick()
    raised_at, raised = network.wait_alert(AlertRaised, "QrngQuarantined", "qrng-2",
                                                stuck_at, 10)
    assert raised_at - stuck_at <= 10
    network.wait_alert(AlertRaised, "QrngHealthTestFailures", "qrng-2", stuck_at, 10)
    time.sleep(2)
    released_at = source.release()
    network.wait_alert(AlertResolved, "QrngQuarantined", "qrng-2", released_at, 30)
    network.wait_alert(AlertResolved, "QrngHealthTestFailures", "qrng-2", released_at,
                            WINDOW_S + 30)
    assert network.alerts.lifecycle("QrngQuarantined", "qrng-2", stuck_at) == [
        AlertRaised, AlertResolved]

    # The test Alertmanager got v2 JSON: the firing alert, then the same labels resolved.
    posts = [alert for path, body in network.webhook.received  # type: ignore[attr-defined]
             if path == "/api/v2/alerts" for alert in body
             if alert["labels"]["alertname"] == "QrngQuarantined"
             and alert["labels"].get("source") == "qrng-2"]
    assert posts, network.webhook.received  # type: ignore[attr-defined]
    first, last = posts[0], posts[-1]
    assert first["labels"] == {"alertname": "QrngQuarantined", "severity": "critical",
                               "service": "qustream", "source": "qrng-2"}
    assert last["labels"] == first["labels"]
    assert first["startsAt"].endswith("Z") and first["annotations"]["summary"]
    assert first["endsAt"] > time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(raised_at))
    assert last["endsAt"] <= time.strftime("%Y-%m-%dT%H:%M:%S.999Z", time.gmtime())
    assert last["annotations"]["alert_id"] == raised.alert_id


def test_killed_validator_raises_missed_precommits_and_resolves_when_back(
        network: MonitoredNetwork) -> None:
    victim, killed_at = network.kill_validator(3)
    back_at = time.time()
    network.supervisor.start(["validator-3"])
    network.wait_alert(AlertResolved, "ValidatorMissedPrecommits", victim, back_at,
                            WINDOW_S + 60)
    assert network.alerts.lifecycle("ValidatorMissedPrecommits", victim, killed_at) == [
        AlertRaised, AlertResolved]


def test_chain_stall_raises_chain_stalled_and_resolves(network: MonitoredNetwork) -> None:
    stopped_at = time.time()
    network.supervisor.stop(["tally"], grace_s=5)  # no block is finalized without the tally
    _, raised = network.wait_alert(AlertRaised, "ChainStalled", "chain", stopped_at, 30)
    assert raised.value >= raised.threshold  # seconds without a block >= 3 expected periods
    network.supervisor.start(["tally"])
    network.wait_alert(AlertResolved, "ChainStalled", "chain", time.time(), 60)


def test_monitor_killed_with_9_keeps_its_windows_raises_nothing_twice_loses_nothing(
        network: MonitoredNetwork) -> None:
    victim, began = network.kill_validator(2)
    # kill -9 mid-stream while the alert fires; the supervisor restarts the monitor
    network.supervisor.kill("monitor", signal.SIGKILL)
    time.sleep(1)
    network.supervisor.start(["validator-2"])  # the condition ends while the monitor is down
    network.wait_alert(AlertResolved, "ValidatorMissedPrecommits", victim, began,
                       WINDOW_S + 90)
    time.sleep(3)
    assert network.alerts.lifecycle("ValidatorMissedPrecommits", victim, began) == [
        AlertRaised, AlertResolved], "raised twice, or the resolve was lost"
    stale = [event for event in network.alerts.raised("ChainStalled", "chain", began)
             if not _chain_was_silent(network.settings, event)]
    assert not stale, f"the restart judged a stale view: {stale}\n{network.log('monitor')}"
    assert [s.restarts for s in network.supervisor.status() if s.name == "monitor"] == [1]

    # The persisted windows equal a fold of the same records from scratch.
    persisted = _persisted_state(network.settings)
    assert {"qrng-0", "qrng-1"} <= set(persisted.sources)  # qrng-2 when the tests before ran
    for source_id in sorted(persisted.sources):
        piece = persisted.sources[source_id]
        assert piece.published_bytes.buckets, source_id
        reference = _fold_from_topics(network.settings, SOURCE_PREFIX + source_id,
                                      piece.positions)
        assert reference.sources[source_id] == piece, source_id
    chain = persisted.network
    reference_chain = _fold_from_topics(network.settings, "network",
                                        {k: v for k, v in chain.positions.items()
                                         if "chain.blocks" in k}).network
    assert (reference_chain.height, reference_chain.finality_ms, reference_chain.late_rounds,
            reference_chain.intervals) == (chain.height, chain.finality_ms, chain.late_rounds,
                                           chain.intervals)
    assert finalized_height(network.settings) >= chain.height


def test_a_record_the_consumer_skipped_is_read_back_from_the_topic(settings: Settings) -> None:
    """Guarantee 4 of services/monitor/runtime.py on the real Kafka, without Faust: the runtime
    is handed a partition's records with one missing, as Faust once did after a restart."""
    ensure_topics(settings, [spec("entropy.raw")])
    topic, now_ms = settings.topic("entropy.raw"), time.time_ns() // 1_000_000
    producer = make_producer(settings)
    for seq in range(5):
        producer.produce(topic, default_codec().encode("EntropyChunkPublished", {
            "source_id": "q", "seq": seq, "prev_digest": bytes(32), "payload_digest": bytes(32),
            "chunk_digest": bytes(32), "payload": b"\x01" * 4096,
            "produced_at_ms": now_ms + seq, "simulated": True, "next_digest": bytes(32)}),
            b"q", partition=0)
    assert producer.flush(30) == 0
    records = list(_read_partition(settings, topic, 0, 5))
    assert [r.offset for r in records] == [0, 1, 2, 3, 4]

    whole = MonitorRuntime(settings, MonitorSettings())
    whole.restore([])
    whole.apply(records)
    runtime = MonitorRuntime(settings, MonitorSettings())  # reads holes from Kafka
    runtime.restore([])
    runtime.apply(records[:2])
    runtime.apply(records[3:])
    assert runtime.read_back == {"entropy.raw": 1}
    assert runtime.state == whole.state
    assert runtime.state.sources["q"].published_bytes.total(
        runtime.policy.qrng_window, now_ms + 5) == 5 * 4096


def _read_partition(settings: Settings, topic: str, partition: int, until: int
                    ) -> Iterator[Record]:
    consumer = make_consumer(settings, f"check-{time.time_ns()}")
    try:
        consumer.assign([KafkaPosition(topic, partition, 0)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            record = consumer.poll(0.5)
            if record is None:
                if consumer.position(topic, partition) >= until:
                    return
                continue
            if record.offset >= until:
                return
            yield Record(topic, partition, record.offset, record.timestamp_ms, record.value)
            if record.offset + 1 >= until:
                return
    finally:
        consumer.close()


def _fold_from_topics(settings: Settings, key: str, positions: dict[str, int]) -> MonitorState:
    """The core's fold of exactly the records a persisted piece says it holds."""
    from services.monitor.core.policy import MonitorPolicy
    from services.monitor.settings import MonitorSettings

    policy: MonitorPolicy = MonitorSettings(**{  # the monitor's windows in this module
        "qrng_window_s": WINDOW_S, "qrng_hop_s": 1, "validator_window_s": WINDOW_S,
        "validator_hop_s": 1}).policy()
    decoder = RecordDecoder(settings)
    state = MonitorState()
    for where, until in sorted(positions.items()):
        topic, _, partition = where.rpartition(":")
        for record in _read_partition(settings, topic, int(partition), until):
            facts = tuple(f for f in decoder.facts(record)
                          if not key.startswith(SOURCE_PREFIX)
                          or getattr(f, "source_id", None) == key.removeprefix(SOURCE_PREFIX))
            if facts:
                state, _ = apply_record(policy, state,
                                        Position(topic, int(partition), record.offset), facts)
    return state


READ_LAG_MS = 1_000  # how late a healthy monitor may see a block (evaluated every 0.5 s)


def _chain_was_silent(settings: Settings, raised: AlertRaised) -> bool:
    """Whether ``chain.blocks`` agrees with a ChainStalled alert: no block was finalized
    between the last one the monitor saw (``since_ms`` less the threshold) and the raise, but
    for the last ``READ_LAG_MS``. A real stall under load is a right alert; one raised while
    blocks it had not read yet existed was judged on a stale view."""
    last_seen_ms = raised.since_ms - round(raised.threshold * 1000)
    finalized = [decode_finalized(record.value).finalized_at_ms for record in read_to_end(
        settings, settings.topic("chain.blocks"), f"stall-check-{time.time_ns()}")]
    return not any(last_seen_ms < at <= raised.raised_at_ms - READ_LAG_MS for at in finalized)


def _persisted_state(settings: Settings) -> MonitorState:
    """The latest value of every key on the monitor's changelog."""
    topic = settings.topic("monitor.state")
    consumer = make_consumer(settings, f"state-{time.time_ns()}")
    latest: dict[str, bytes | None] = {}
    try:
        _, end = consumer.watermarks(topic)
        consumer.assign([KafkaPosition(topic, 0, 0)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            record = consumer.poll(0.5)
            if record is None:
                if consumer.position(topic, 0) >= end:
                    break
                continue
            assert record.key is not None
            latest[record.key.decode()] = record.value
            if record.offset + 1 >= end:
                break
    finally:
        consumer.close()
    state = MonitorState()
    for key, value in latest.items():
        if value is not None:
            state = store.with_piece(state, key, value)
    return state
