"""One QRNG ingest server: source -> health tests -> quarantine -> chunks -> Kafka.

``build_service`` wires the parts from a typed ``IngestConfig``; ``IngestService.run`` loops
until stopped (or a byte/time budget is spent), then checkpoints, flushes and saves its state.
Each block of ``chunk_size`` raw bytes is tested (SP 800-90B RCT + APT, vectorized), folded into
the quarantine state machine, and offered to the publisher only when the verdict says so; the
publisher holds one block per pool and publishes each when the next arrives (one ahead,
``core.ahead``). Health transitions become alerts at once; heartbeats and liveness alerts go
out every ``heartbeat_ms``.

Paced (``IngestConfig.pace``, ``core.pacing``): a ``ChainWatch`` follows ``chain.blocks`` and
the public chain reveals its next chunk only once the previous one is in a finalized block.
While it waits with no private share, the main loop takes no block (the reader thread then
blocks on the full queue: the source is not read) and waits on the chain watch instead, still
serving delivery reports, checkpoints and heartbeats every pass; ``stop()`` and ``duration_s``
end the wait.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction

from protocol.entropy.chain import CheckpointPolicy, Chunk, payload_sha256
from protocol.errors import InputError
from protocol.keys import SigningKey
from services.qrng_ingest.core.health import (
    BlockHealth,
    HealthParameters,
    RctCarry,
    check_block,
)
from services.qrng_ingest.core.liveness import (
    Alert,
    AlertKind,
    LivenessPolicy,
    LivenessState,
    assess,
)
from services.qrng_ingest.core.pacing import Placement
from services.qrng_ingest.core.quarantine import (
    HealthState,
    QuarantinePolicy,
    QuarantineState,
    TransitionKind,
    evolve,
)
from services.qrng_ingest.monitor import Heartbeat, IngestMetrics, StatusEmitter
from services.qrng_ingest.pacing import ChainWatch
from services.qrng_ingest.publisher import ChunkPublisher, open_publisher, producer_tuning
from services.qrng_ingest.sources import Source
from streams.settings import Settings
from streams.telemetry import setup_telemetry


class IngestConfigError(InputError):
    """An ingest setting that cannot work (chunk size not a whole number of windows ...)."""


@dataclass(frozen=True, slots=True)
class IngestConfig:
    source_id: str
    chunk_size: int = 1 << 20
    min_entropy: Fraction = Fraction(8)
    alpha_exponent: int = 40
    binary: bool = False
    recovery_windows: int = 2048
    checkpoint: CheckpointPolicy = field(default_factory=CheckpointPolicy)
    private_share: float = 0.0
    heartbeat_ms: int = 2000
    liveness: LivenessPolicy = field(default_factory=LivenessPolicy)
    metrics_port: int | None = None
    # Pace public chunks by the chain (``core.pacing``). Off for library callers without a
    # chain (the bench, ingest-only tests); ``qustream qrng run`` turns it on by default.
    pace: bool = False

    def health_parameters(self) -> HealthParameters:
        params = HealthParameters.derive(self.min_entropy, self.alpha_exponent,
                                         binary=self.binary)
        if self.chunk_size <= 0 or self.chunk_size % params.window_bytes:
            raise IngestConfigError(
                f"chunk size {self.chunk_size} is not a positive multiple of the "
                f"{params.window_bytes}-byte APT window")
        return params


@dataclass(slots=True)
class IngestReport:
    raw_bytes: int = 0
    published_bytes: int = 0
    published_chunks: int = 0
    dropped_bytes: int = 0  # failed the health tests (or quarantined)
    withheld_bytes: int = 0  # healthy, but read while pacing kept the public chain waiting
    rct_failures: int = 0
    apt_failures: int = 0
    alerts: list[Alert] = field(default_factory=list)
    health_state: str = HealthState.STARTUP.value
    last_seq: int = -1


# How long the paced main loop waits on the chain per pass (heartbeats, delivery reports and
# stop() are served between passes).
PACED_WAIT_S = 0.1

# A block as the reader thread hands it over: raw bytes, their health, and their SHA-256 (being
# computed) when they passed (a block that fails is not published: no digest needed).
_Block = tuple[bytes, BlockHealth, "Future[bytes] | None"]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class IngestService:
    """Runs one source; ``stop()`` may be called from another thread or a signal handler."""

    def __init__(
        self, config: IngestConfig, source: Source, publisher: ChunkPublisher,
        emitter: StatusEmitter, metrics: IngestMetrics | None,
        watch: ChainWatch | None = None,
    ) -> None:
        """``watch``: the chain watch ``publisher`` is paced by (None: unpaced)."""
        self.config = config
        self.params = config.health_parameters()
        self._source = source
        self.publisher = publisher
        self._emitter = emitter
        self._metrics = metrics
        self._watch = watch
        self._policy = QuarantinePolicy(self.params.startup_windows, config.recovery_windows)
        self._quarantine = QuarantineState()
        self._carry = RctCarry()
        self._liveness = LivenessState()
        self._stop = threading.Event()
        self.report = IngestReport()
        self._interval_start_ms = self._last_data_ms = _now_ms()
        self._interval_raw = 0
        self._interval_published = 0

    def stop(self) -> None:
        self._stop.set()

    def _alert(self, alert: Alert) -> None:
        self.report.alerts.append(alert)
        self._emitter.alert(alert, _now_ms())

    def _read_block(self, deadline: float | None) -> bytes | None:
        """One full block, or None when stopped or past the deadline (partial data dropped)."""
        size = self.config.chunk_size
        first = self._source.read(size)
        if len(first) == size:
            return first
        parts, have = [first], len(first)
        while have < size:
            if self._stop.is_set() or (deadline is not None and time.monotonic() > deadline):
                return None
            part = self._source.read(size - have)
            parts.append(part)
            have += len(part)
        return b"".join(parts)

    def _reader(self, deadline: float | None, max_bytes: int | None,
                out: queue.Queue[_Block | BaseException | None],
                hasher: ThreadPoolExecutor) -> None:
        """Reader thread: source reads and health tests (numpy and AES release the GIL); the
        payload's SHA-256 of a block that passed goes to the ``hasher`` thread (hashlib
        releases the GIL too). So all three overlap with chaining and producing in the main
        thread, which only links the chain and hands the bytes over. Ends with None."""
        try:
            read = 0
            while not self._stop.is_set() and (max_bytes is None or read < max_bytes):
                if deadline is not None and time.monotonic() > deadline:
                    break
                block = self._read_block(deadline)
                if block is None:
                    break
                read += len(block)
                health, self._carry = check_block(self.params, self._carry, block)
                digest = hasher.submit(payload_sha256, block) if health.passed else None
                while not self._stop.is_set():
                    try:
                        out.put((block, health, digest), timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # handed to the main thread, which raises it
            out.put(exc)
            return
        out.put(None)

    def _process(self, block: bytes, health: BlockHealth,
                 digest: Future[bytes] | None) -> bool:
        """Fold one tested block in; True when a chunk was published for it (``offer`` then
        already served delivery reports and due checkpoints)."""
        self.report.raw_bytes += len(block)
        self._last_data_ms = _now_ms()
        self._interval_raw += len(block)
        rct_failures, apt_failures = health.rct_failures, health.apt_failures  # counted once
        self.report.rct_failures += rct_failures
        self.report.apt_failures += apt_failures
        if self._metrics is not None:
            self._metrics.health_failures("RCT", rct_failures)
            self._metrics.health_failures("APT", apt_failures)
        self._quarantine, verdict = evolve(self._policy, self._quarantine, health)
        for transition in verdict.transitions:
            if transition.kind is TransitionKind.HEALTH_FAILED:
                self._alert(Alert(AlertKind.HEALTH_FAILURE, "+".join(transition.tests),
                                  transition.detail))
            elif transition.kind is TransitionKind.RECOVERED:
                self._alert(Alert(AlertKind.RECOVERED, None, transition.detail))
        self.report.health_state = self._quarantine.health.value
        if verdict.publish:
            placement, chunk = self.publisher.offer(
                block, simulated=self._source.simulated,
                health=health.summary(self.params),
                payload_digest=None if digest is None else digest.result())
            if placement in (Placement.WITHHELD, Placement.WAIT):
                self.report.withheld_bytes += len(block)
            if chunk is None:
                return False
            self._count(chunk)
            return True
        self.report.dropped_bytes += len(block)
        if self._metrics is not None:
            self._metrics.dropped(len(block))
        return False

    def _count(self, chunk: Chunk) -> None:
        size = len(chunk.payload)
        self.report.published_bytes += size
        self.report.published_chunks += 1
        self._interval_published += size
        if not chunk.private:
            self.report.last_seq = chunk.seq
        if self._metrics is not None:
            self._metrics.published(size)

    def _paced_wait(self) -> bool:
        """Whether the public chain waits for the chain and the next block must not be taken
        (``Placement.WAIT``); if so, waits up to ``PACED_WAIT_S`` for blocks to arrive."""
        if self._watch is None or self.publisher.placement() is not Placement.WAIT:
            return False
        self._watch.poll(PACED_WAIT_S)
        # The source is not read meanwhile: no data is not a stall.
        self._last_data_ms = _now_ms()
        return True

    def _tick(self, *, final: bool = False, published: bool = False) -> None:
        """Time-driven work: checkpoints by age, delivery reports, heartbeats, liveness.

        ``final``: the last call before shutdown; always sends a heartbeat. ``published``: a
        chunk was just published, whose ``publish`` did the checkpoint check and the poll (a
        second poll would only hand the GIL to the reader thread and wait to get it back).
        """
        if not published:
            self.publisher.maybe_checkpoint()
            self.publisher.poll(0)
        if self._watch is not None:
            self._watch.poll(0)
        now = _now_ms()
        elapsed = now - self._interval_start_ms
        if elapsed < self.config.heartbeat_ms and not final:
            return
        elapsed = max(elapsed, 1)
        raw_rate = self._interval_raw * 1000 / elapsed
        published_rate = self._interval_published * 1000 / elapsed
        self._liveness, alerts = assess(self.config.liveness, self._liveness, now_ms=now,
                                        last_data_ms=self._last_data_ms, bytes_per_s=raw_rate)
        for alert in alerts:
            self._alert(alert)
        stats = self.publisher.stats
        latency = stats.latency_sum_ms / stats.latency_count if stats.latency_count else 0.0
        stats.latency_sum_ms, stats.latency_count = 0.0, 0
        state = "STALLED" if self._liveness.stalled else self._quarantine.health.value
        if self._metrics is not None:
            self._metrics.health_state = state
            self._metrics.bytes_per_s = published_rate
        self._emitter.heartbeat(Heartbeat(
            published_rate, self.report.published_chunks,
            self.publisher.heads[False].last_seq, self.publisher.heads[True].last_seq, state,
            self._source.simulated, self.report.rct_failures, self.report.apt_failures,
            self.report.dropped_bytes, latency), now)
        self._interval_start_ms, self._interval_raw, self._interval_published = now, 0, 0

    def run(
        self, *, max_bytes: int | None = None, duration_s: float | None = None,
        on_progress: Callable[[IngestReport], None] | None = None,
    ) -> IngestReport:
        """Ingest until ``stop()``, ``max_bytes`` raw bytes read, or ``duration_s`` elapsed."""
        deadline = None if duration_s is None else time.monotonic() + duration_s
        self._interval_start_ms = self._last_data_ms = _now_ms()
        self._interval_raw = self._interval_published = 0
        blocks: queue.Queue[_Block | BaseException | None] = queue.Queue(4)
        hasher = ThreadPoolExecutor(1, thread_name_prefix=f"qrng-hash-{self.config.source_id}")
        reader = threading.Thread(target=self._reader,
                                  args=(deadline, max_bytes, blocks, hasher),
                                  name=f"qrng-reader-{self.config.source_id}", daemon=True)
        reader.start()
        try:
            while True:
                if self._paced_wait():
                    if self._stop.is_set() or (deadline is not None
                                               and time.monotonic() > deadline):
                        break  # blocks still queued were never revealed: dropped
                    self._tick()
                    continue
                try:
                    item = blocks.get(timeout=0.05)
                except queue.Empty:
                    self._tick()  # a stalled source still gets heartbeats and alerts
                    continue
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                self._tick(published=self._process(*item))
                if on_progress is not None:
                    on_progress(self.report)
            self._tick(final=True)
        finally:
            self._stop.set()
            _drain(blocks)  # a reader blocked on the full queue (paced) can end
            reader.join(timeout=10)
            hasher.shutdown(wait=True, cancel_futures=True)
            if self._watch is not None:
                self._watch.close()
            self._source.close()
            for chunk in self.publisher.close():
                self._count(chunk)
        self.report.last_seq = self.publisher.heads[False].last_seq
        return self.report


def _drain(blocks: queue.Queue[_Block | BaseException | None]) -> None:
    while True:
        try:
            blocks.get_nowait()
        except queue.Empty:
            return


def build_service(
    settings: Settings, config: IngestConfig, source: Source, key: SigningKey,
    **producer_overrides: object,
) -> IngestService:
    """Resume the source's chains from Kafka and its state file, and wire the service."""
    config.health_parameters()  # fail on a bad configuration before touching Kafka
    telemetry = setup_telemetry("qrng_ingest", metrics_port=config.metrics_port)
    metrics = IngestMetrics(telemetry.meter, config.source_id)
    publisher = open_publisher(settings, config.source_id, key,
                               checkpoint_policy=config.checkpoint,
                               private_share=config.private_share, on_latency=metrics.latency,
                               **{**producer_tuning(config.chunk_size), **producer_overrides})
    watch = None
    if config.pace:
        watch = ChainWatch.open(settings, config.source_id, publisher.heads[False].last_seq)
        publisher.pace(watch)
    emitter = StatusEmitter(settings, publisher.producer, config.source_id)
    return IngestService(config, source, publisher, emitter, metrics, watch)
