"""Benchmark: QRNG ingest throughput against the raw confluent-kafka producer.

Ours: the simulator through the SP 800-90B health tests, the quarantine state machine, hashing,
the hash chain, ML-DSA-65 checkpoint signing (every 64 chunks or 1 s), Avro encoding and
publishing with acks=all (``services.qrng_ingest.service``). Baseline: a bare confluent-kafka
producer with the same configuration sending pre-generated chunks of the same size to a topic
with the same settings, against the Kafka from the settings (``QUSTREAM_KAFKA_BOOTSTRAP_SERVERS``
or the embedded broker) on uniquely named topics; plus the health tests alone.

Rounds, and why the figures are medians of paired ratios: the broker shares this machine's
disk, and a measurement that writes gigabytes leaves them to be written back during the next
one, so a round's rate depends on what ran before it (two quiet runs once gave ratios of 0.89
and 1.73). So each measurement writes to topics of its own, deleted right after it; before it
the bench waits for the disk (``os.sync()``, outside the clock); each round runs every kind
once, in an order rotated by one each round, so none always follows the same other; and each
ratio (``ratio``, ``lane_scaling``, ``raw_scaling``, ``device_ratio``) is the median over
rounds of that round's own ratio, its two measurements taken minutes apart at most. The rates
are each kind's median. Every round's rates are printed on stderr. A first baseline measurement,
thrown away, warms the broker (its page cache, log segments, JIT) so the first round is not the
one that pays for it. ``baseline_spread`` is (fastest - slowest) / median of the baseline's
rounds: how far the broker alone moved during the run. When it is large (0.5 and more on a
machine whose disk another tenant shares) the paired ratios still cancel what a round shares,
but read them as a range, not a figure, and measure again.

CPU (``cpu_ms_per_mb_ours``, ``_baseline``, ``_ours_device``): the median CPU time, user +
system over every thread of the measuring process (librdkafka's included), per MB published.
On a machine whose cores the broker shares it says more than the rates: what each MB costs.

Cores (``cores_*``, ``cores_busy_*``, ``cpus``): for one lane (``ours``), one raw producer
(``baseline``) and the two-process kinds, the median CPU seconds per second their own processes
spent, and the whole machine (``/proc/stat``: the broker's time when it runs here, and anything
else's). ``cores_busy_lanes_2`` near ``cpus`` says the cores were full, and then lanes cannot
scale whatever ``raw_scaling`` says: two raw producers need a quarter of the CPU per MB that two
lanes do and leave the rest to the broker (docs/performance.md, "is it the disk or the cores?").

A device with its bytes ready (``ours_device``, ``device_ratio``): ours again, fed by a source
whose read costs one copy and no keystream (``_ReadyDevice``), as a QRNG card's driver does; the
simulator's AES-CTR is the stand-in's cost, not the pipeline's, and the baseline makes no bytes
either. ``ratio`` keeps its meaning (ours with the simulator).

Lanes (issue 22): each round also runs one device as two lanes in two processes
(``services.qrng_ingest.lanes``: two chains, the device's key), started together, and two raw
producers in two processes: ``lanes_2_mb_s`` and ``raw_2_mb_s`` are their combined rates,
``lane_scaling`` = lanes_2 / one lane and ``raw_scaling`` = raw_2 / one raw producer. Lanes can
only scale as far as the producer itself does on the machine and broker (``raw_scaling``), so
read the first against the second. Bounded: about four minutes (``--rounds``,
``--round-seconds`` for a shorter look). Last line: one JSON object.

``--profile``: instead, one round of ours under cProfile, every thread (the reader thread's
source reads, health tests and hashing; the main thread's chaining, encoding and producing),
printed as the functions with the most own time; ``docs/performance.md`` keeps such a table.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import multiprocessing
import os
import pstats
import queue
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from rich.console import Console
from rich.progress import Progress

from bench.common import scratch_kafka
from protocol.entropy.chain import CheckpointPolicy
from protocol.keys import SigningKey
from services.qrng_ingest.core.health import HealthParameters, RctCarry, check_block
from services.qrng_ingest.lanes import lane_config
from services.qrng_ingest.publisher import PRODUCER_TUNING
from services.qrng_ingest.service import IngestConfig, build_service
from services.qrng_ingest.sources import SimulatorSource, Source
from streams.admin import delete_topics, ensure_topics
from streams.kafka import producer_config
from streams.settings import Settings, load_settings
from streams.topics import TopicSpec, spec

CHUNK = 1 << 20
ROUND_S = 8.0
NEED_GB = 25.0  # free disk the embedded broker needs for a run (``_check_disk``)
ROUNDS = 3
SETUP_TIMEOUT_S = 120.0  # a process of a round is set up (producer, topics, source) by then
MB = 1_000_000


def _health_rate(seconds: float = 2.0) -> float:
    params = HealthParameters.derive(8, 40, binary=False)
    blocks = [os.urandom(CHUNK) for _ in range(8)]
    carry = RctCarry()
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        _, carry = check_block(params, carry, blocks[done % len(blocks)])
        done += 1
    return done * CHUNK / (time.perf_counter() - started) / MB


def _device(round_: int) -> IngestConfig:
    # Unpaced: the bench runs no chain, and measures ingest, not the block rate.
    return IngestConfig(source_id=f"bench-{round_}", chunk_size=CHUNK, alpha_exponent=40,
                        checkpoint=CheckpointPolicy(every_chunks=64, every_ms=1000), pace=False)


# A measurement: bytes published and acknowledged, the seconds that took (final flush in), the
# CPU seconds (user + system, every thread: librdkafka's too) this process spent on it, and the
# CPU seconds every process of the machine spent meanwhile (``_machine_busy_s``; None where the
# kernel does not say).
Measured = tuple[int, float, float, float | None]
_Ready = Callable[[], object]  # returns once every process of a round is ready to start


class _ReadyDevice:
    """A device whose bytes are ready when read (a driver that filled its buffer by DMA, as
    a QRNG card's does): a read costs one copy of the bytes asked for, as read(2) from a
    character device does, and nothing to make them. The simulator's AES-CTR keystream is the
    stand-in's own cost, which no real device puts on our process; this source measures the
    pipeline itself (health tests, hashing, chaining, signing, framing, producing) against the
    raw producer, which also sends bytes it did not have to make."""

    simulated = True

    def __init__(self, pool_bytes: int = 16 * CHUNK) -> None:
        self._pool = memoryview(os.urandom(pool_bytes))
        self._at = 0

    def read(self, size: int) -> bytes:
        if self._at + size > len(self._pool):
            self._at = 0
        data = bytes(self._pool[self._at:self._at + size])  # the read's one copy
        self._at += size
        return data

    def describe(self) -> str:
        return "a device with its bytes ready (bench)"

    def close(self) -> None:
        pass


def _ours(settings: Settings, state_dir: Path, config: IngestConfig, key: SigningKey,
          round_s: float, ready: _Ready = lambda: None, source: Source | None = None
          ) -> Measured:
    local = settings.model_copy(update={"state_dir": state_dir})
    service = build_service(local, config, source or SimulatorSource(), key)
    ready()
    started, cpu, busy = time.perf_counter(), _cpu_s(), _machine_busy_s()
    report = service.run(duration_s=round_s)  # includes the final flush of every chunk
    return (report.published_bytes, time.perf_counter() - started, _cpu_s() - cpu,
            _busy_since(busy))


def _baseline(settings: Settings, topic: str, round_s: float, key: bytes = b"baseline",
              ready: _Ready = lambda: None) -> Measured:
    producer = Producer(producer_config(settings, **PRODUCER_TUNING))
    payloads = [os.urandom(CHUNK) for _ in range(16)]
    sent = 0
    ready()
    started, cpu, busy = time.perf_counter(), _cpu_s(), _machine_busy_s()
    while time.perf_counter() - started < round_s:
        try:
            producer.produce(topic, value=payloads[sent % len(payloads)], key=key)
            sent += 1
            producer.poll(0)
        except BufferError:
            producer.poll(0.05)
    remaining = producer.flush(60)
    elapsed = time.perf_counter() - started
    if remaining:
        raise RuntimeError(f"baseline: {remaining} messages unacknowledged")
    return sent * CHUNK, elapsed, _cpu_s() - cpu, _busy_since(busy)


def _cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def _machine_busy_s(stat: Path = Path("/proc/stat")) -> float | None:
    """CPU seconds every core of the machine has spent busy since boot (user, nice, system, irq,
    softirq: the broker's time too when it runs here; idle, iowait and a hypervisor's steal are
    not), or None without a Linux ``/proc/stat``."""
    try:
        fields = stat.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if len(fields) < 8 or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq = map(int, fields[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _busy_since(start: float | None) -> float | None:
    now = _machine_busy_s()
    return None if start is None or now is None else now - start


def _rate(measured: Measured) -> float:
    return measured[0] / measured[1] / MB


def _cpu_ms_per_mb(measured: Measured) -> float:
    return measured[2] * 1000 / (measured[0] / MB)


# What a measurement kept busy, in cores: its own processes' CPU seconds per second, and the
# whole machine's (theirs, the broker's when it runs here, anything else's); None when unknown.
Cores = tuple[float, float | None]


def _cores(measured: Measured) -> Cores:
    _, took, cpu, busy = measured
    return cpu / took, None if busy is None else busy / took


def _lane_process(settings: Settings, state_dir: Path, device: IngestConfig, lanes: int,
                  lane: int, key_file: Path, round_s: float, barrier: Any, out: Any) -> None:
    """One lane of the device in this process (``qustream qrng run --lanes K --lane k``)."""
    key = SigningKey.load(key_file)
    out.put(_ours(settings, state_dir, lane_config(device, lanes, lane), key, round_s,
                  barrier.wait))


def _raw_process(settings: Settings, topic: str, index: int, round_s: float, barrier: Any,
                 out: Any) -> None:
    out.put(_baseline(settings, topic, round_s, f"baseline-{index}".encode(), barrier.wait))


def _together(target: Callable[..., None], jobs: list[tuple[Any, ...]], round_s: float
              ) -> tuple[float, Cores]:
    """``target(*job, barrier, queue)`` in one process per job, each starting its clock once
    all are set up; their combined rate (all bytes over the longest of their times), and the
    cores they kept busy: their CPU seconds summed, and the machine's as each of them saw it
    over its own clock (the mean: the clocks run together), per second of the longest.

    A process that dies (before the barrier or after) fails the round at once with its exit
    code: the barrier is broken so the others stop waiting for it, and whatever still runs is
    terminated, so the bench never hangs on a lost child."""
    context = multiprocessing.get_context("spawn")
    barrier, out = context.Barrier(len(jobs), timeout=SETUP_TIMEOUT_S), context.Queue()
    processes = [context.Process(target=target, args=(*job, barrier, out)) for job in jobs]
    for process in processes:
        process.start()
    measured: list[Measured] = []
    limit_s = SETUP_TIMEOUT_S + round_s + 60
    deadline = time.monotonic() + limit_s
    try:
        while len(measured) < len(processes):
            try:
                measured.append(out.get(timeout=0.5))
                continue
            except queue.Empty:
                pass
            codes = [p.exitcode for p in processes]
            if any(codes):  # None (running) and 0 are falsy: a process died
                barrier.abort()
                raise RuntimeError(f"a process of the round failed (exit codes {codes})")
            if time.monotonic() > deadline:
                barrier.abort()
                raise RuntimeError(f"the round gave {len(measured)} of {len(processes)} results "
                                   f"in {limit_s:.0f} s")
    finally:
        for process in processes:
            process.join(10 if len(measured) == len(processes) else 1)
            if process.is_alive():
                process.terminate()
                process.join(5)
    longest = max(took for _, took, _, _ in measured)
    seen = [busy / took for _, took, _, busy in measured if busy is not None]
    cores = (sum(cpu for _, _, cpu, _ in measured) / longest,
             statistics.fmean(seen) if len(seen) == len(measured) else None)
    return sum(sent for sent, _, _, _ in measured) / longest / MB, cores


def _profile(settings: Settings, top: int) -> None:
    """One round of ours with a cProfile per thread; the top functions by own time."""
    ensure_topics(settings, [spec("entropy.raw"), spec("entropy.private"), spec("qrng.status")])
    profiles: dict[str, cProfile.Profile] = {}

    def per_thread(*_: object) -> None:  # runs first in every new thread, then replaced
        profile = cProfile.Profile()
        profiles[threading.current_thread().name] = profile
        profile.enable()

    main_profile = cProfile.Profile()
    threading.setprofile(per_thread)
    try:
        with tempfile.TemporaryDirectory() as state:
            main_profile.enable()
            rate = _rate(_ours(settings, Path(state), _device(0), SigningKey.generate(),
                               ROUND_S))
            main_profile.disable()
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
        for profile in profiles.values():
            profile.disable()
    print(f"ours: {rate:.1f} MB/s under the profiler; load {os.getloadavg()}")
    for name, profile in [("main", main_profile), *profiles.items()]:
        if name != "main" and not name.startswith(("qrng-reader", "qrng-hash")):
            continue
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(top)
        print(f"--- thread {name}")
        print("\n".join(line for line in out.getvalue().splitlines() if line.strip()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", action="store_true",
                        help="profile one round of ours instead of the benchmark")
    parser.add_argument("--top", type=int, default=15, help="functions shown per thread")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="rounds of each kind")
    parser.add_argument("--round-seconds", type=float, default=ROUND_S,
                        help="seconds each measurement runs")
    args = parser.parse_args()
    base = load_settings()
    _check_disk(base)
    with scratch_kafka(base) as settings:
        if args.profile:
            _profile(settings, args.top)
            return
        result = _run(settings, args.rounds, args.round_seconds)
    print(json.dumps(result))


def _check_disk(settings: Settings, need_gb: float = NEED_GB) -> None:
    """Refuse to start when the embedded broker's disk cannot hold what a run writes: deleted
    segments linger for ``file.delete.delay.ms`` (60 s), so about ``NEED_GB`` are on disk at
    once at this machine's rates. A broker elsewhere (``QUSTREAM_KAFKA_BOOTSTRAP_SERVERS``) is
    its operator's to size."""
    if settings.uses_external_kafka:
        return
    where = settings.state_dir if settings.state_dir.exists() else Path.cwd()
    free_gb = shutil.disk_usage(where).free / 1e9
    if free_gb < need_gb:
        raise SystemExit(f"bench.ingest writes up to about {need_gb:.0f} GB of Kafka segments at "
                         f"once; {free_gb:.1f} GB are free under {where.resolve()}. Free some "
                         "space, or run it with QUSTREAM_STATE_DIR on a larger disk (then "
                         "`qustream infra up`).")


def _run(settings: Settings, rounds: int, round_s: float) -> dict[str, object]:
    console = Console(stderr=True)
    raw = spec("entropy.raw")
    baseline_spec = TopicSpec("bench.baseline", raw.partitions, raw.key, "bench", (),
                              retention_ms=raw.retention_ms,
                              max_message_bytes=raw.max_message_bytes)
    topics = [spec("entropy.raw"), spec("entropy.private"), spec("qrng.status"), baseline_spec]
    rates: dict[str, list[float]] = {"ours": [], "baseline": [], "lanes_2": [], "raw_2": [],
                                     "ours_device": []}
    cpu: dict[str, list[float]] = {"ours": [], "baseline": [], "ours_device": []}
    cores: dict[str, list[Cores]] = {"ours": [], "baseline": [], "lanes_2": [],
                                     "raw_2": []}

    def in_process(name: str, measured: Measured) -> float:
        cpu[name].append(_cpu_ms_per_mb(measured))
        if name in cores:
            cores[name].append(_cores(measured))
        return _rate(measured)

    def together(name: str, result: tuple[float, Cores]) -> float:
        cores[name].append(result[1])
        return result[0]

    with tempfile.TemporaryDirectory() as state, Progress(console=console) as progress:
        key_file = Path(state) / "device.key"
        SigningKey.generate().save(key_file)  # the device's key, shared by its lanes
        measure: dict[str, Callable[[Settings, int], float]] = {
            "ours": lambda s, round_: in_process("ours", _ours(
                s, Path(state), _device(round_), SigningKey.load(key_file), round_s)),
            "baseline": lambda s, round_: in_process("baseline", _baseline(
                s, s.topic("bench.baseline"), round_s)),
            "lanes_2": lambda s, round_: together("lanes_2", _together(_lane_process, [
                (s, Path(state), _device(round_ + rounds), 2, lane, key_file, round_s)
                for lane in range(2)], round_s)),
            "raw_2": lambda s, round_: together("raw_2", _together(_raw_process, [
                (s, s.topic("bench.baseline"), index, round_s) for index in range(2)],
                round_s)),
            "ours_device": lambda s, round_: in_process("ours_device", _ours(
                s, Path(state), _device(round_ + 2 * rounds), SigningKey.load(key_file),
                round_s, source=_ReadyDevice())),
        }
        task = progress.add_task("ingest bench", total=rounds * len(measure) + 2)
        progress.update(task, description="health tests alone")
        health = _health_rate()
        progress.advance(task)
        progress.update(task, description="warming the broker (not counted)")
        warm = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}warm."})
        ensure_topics(warm, topics)
        try:
            _baseline(warm, warm.topic("bench.baseline"), round_s)
        finally:
            delete_topics(warm, [warm.topic(t.name) for t in topics])
        progress.advance(task)
        kinds = list(measure)
        for round_ in range(rounds):
            for name in kinds[round_ % len(kinds):] + kinds[:round_ % len(kinds)]:
                # Topics of its own, deleted right after: a measurement writes gigabytes (1 MiB
                # chunks at hundreds of MB/s), and fifteen of them kept filled a 90 GB disk.
                own = settings.model_copy(update={
                    "topic_prefix": f"{settings.topic_prefix}{name}-{round_}."})
                ensure_topics(own, topics)
                try:
                    progress.update(task, description=f"{name}, round {round_ + 1}: waiting "
                                                      "for the disk")
                    os.sync()  # the previous measurement's writes are not this one's cost
                    progress.update(task, description=f"{name}, round {round_ + 1}")
                    rates[name].append(measure[name](own, round_))
                finally:
                    delete_topics(own, [own.topic(t.name) for t in topics])
                progress.advance(task)
    console.print("MB/s per round: " + "; ".join(
        f"{name} {[round(x, 1) for x in values]}" for name, values in rates.items())
        + f"; load {os.getloadavg()}")
    return summary(rates, health, cpu, cores)


def summary(rates: dict[str, list[float]], health: float,
            cpu: dict[str, list[float]] | None = None,
            cores: dict[str, list[Cores]] | None = None) -> dict[str, object]:
    """The JSON line from every round's rates (module doc): medians of the rates, and each
    ratio the median of the rounds' own ratios; ``cpu_ms_per_mb_*``, the median CPU time the
    measuring process spent per MB published, for the kinds measured in this process;
    ``cores_*`` and ``cores_busy_*``, the median cores a kind's own processes and the whole
    machine kept busy while it ran (the latter only where the kernel said, in every round),
    against ``cpus``."""

    def paired(top: str, bottom: str) -> float:
        return round(statistics.median(
            a / b for a, b in zip(rates[top], rates[bottom], strict=True)), 3)

    median = {name: round(statistics.median(values), 1) for name, values in rates.items()}
    return {"bench": "ingest", "unit": "MB/s", "ours": median["ours"],
            "baseline": median["baseline"], "ratio": paired("ours", "baseline"),
            "baseline_spread": round((max(rates["baseline"]) - min(rates["baseline"]))
                                     / median["baseline"], 2),
            "health_tests_mb_s": round(health, 1),
            "lanes_2_mb_s": median["lanes_2"], "lane_scaling": paired("lanes_2", "ours"),
            "raw_2_mb_s": median["raw_2"], "raw_scaling": paired("raw_2", "baseline"),
            "ours_device": median["ours_device"],
            "device_ratio": paired("ours_device", "baseline"), "rounds": len(rates["ours"]),
            **{f"cpu_ms_per_mb_{name}": round(statistics.median(values), 2)
               for name, values in (cpu or {}).items() if values},
            **_cores_keys(cores or {})}


def _cores_keys(cores: dict[str, list[Cores]]) -> dict[str, object]:
    keys: dict[str, object] = {}
    for name, values in cores.items():
        if not values:
            continue
        keys[f"cores_{name}"] = round(statistics.median(own for own, _ in values), 2)
        busy = [machine for _, machine in values if machine is not None]
        if len(busy) == len(values):
            keys[f"cores_busy_{name}"] = round(statistics.median(busy), 2)
    if keys:
        keys["cpus"] = os.cpu_count()
    return keys


if __name__ == "__main__":
    main()
