"""Benchmark: QRNG ingest throughput against the raw confluent-kafka producer.

Ours: the simulator through the SP 800-90B health tests, the quarantine state machine, hashing,
the hash chain, ML-DSA-65 checkpoint signing (every 64 chunks or 1 s), Avro encoding and
publishing with acks=all (``services.qrng_ingest.service``). Baseline: a bare confluent-kafka
producer with the same configuration sending pre-generated chunks of the same size to a topic
with the same settings. Rounds alternate (ours, baseline, ours, baseline) against the Kafka from
the settings (``QUSTREAM_KAFKA_BOOTSTRAP_SERVERS`` or the embedded broker) on uniquely named
topics; the best round of each is reported, plus the health tests alone. Bounded: about a minute.
Last line: one JSON object.

``--profile``: instead, one round of ours under cProfile, every thread (the reader thread's
source reads, health tests and hashing; the main thread's chaining, encoding and producing),
printed as the functions with the most own time; ``docs/performance.md`` keeps such a table.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import tempfile
import threading
import time
from pathlib import Path

from confluent_kafka import Producer
from rich.console import Console
from rich.progress import Progress

from bench.common import scratch_kafka
from protocol.entropy.chain import CheckpointPolicy
from protocol.keys import SigningKey
from services.qrng_ingest.core.health import HealthParameters, RctCarry, check_block
from services.qrng_ingest.publisher import PRODUCER_TUNING
from services.qrng_ingest.service import IngestConfig, build_service
from services.qrng_ingest.sources import SimulatorSource
from streams.admin import delete_topics, ensure_topics
from streams.kafka import producer_config
from streams.settings import Settings, load_settings
from streams.topics import TopicSpec, spec

CHUNK = 1 << 20
ROUND_S = 8.0
ROUNDS = 2
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


def _ours(settings: Settings, state_dir: Path, round_: int) -> float:
    key = SigningKey.generate()
    config = IngestConfig(source_id=f"bench-{round_}", chunk_size=CHUNK, alpha_exponent=40,
                          checkpoint=CheckpointPolicy(every_chunks=64, every_ms=1000))
    local = settings.model_copy(update={"state_dir": state_dir})
    service = build_service(local, config, SimulatorSource(), key)
    started = time.perf_counter()
    report = service.run(duration_s=ROUND_S)  # includes the final flush of every chunk
    elapsed = time.perf_counter() - started
    return report.published_bytes / elapsed / MB


def _baseline(settings: Settings, topic: str) -> float:
    producer = Producer(producer_config(settings, **PRODUCER_TUNING))
    payloads = [os.urandom(CHUNK) for _ in range(16)]
    sent = 0
    started = time.perf_counter()
    while time.perf_counter() - started < ROUND_S:
        try:
            producer.produce(topic, value=payloads[sent % len(payloads)], key=b"baseline")
            sent += 1
            producer.poll(0)
        except BufferError:
            producer.poll(0.05)
    remaining = producer.flush(60)
    elapsed = time.perf_counter() - started
    if remaining:
        raise RuntimeError(f"baseline: {remaining} messages unacknowledged")
    return sent * CHUNK / elapsed / MB


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
            rate = _ours(settings, Path(state), 0)
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
    args = parser.parse_args()
    with scratch_kafka(load_settings()) as settings:
        if args.profile:
            _profile(settings, args.top)
            return
        result = _run(settings)
    print(json.dumps(result))


def _run(settings: Settings) -> dict[str, object]:
    console = Console(stderr=True)
    raw = spec("entropy.raw")
    baseline_spec = TopicSpec("bench.baseline", raw.partitions, raw.key, "bench", (),
                              retention_ms=raw.retention_ms,
                              max_message_bytes=raw.max_message_bytes)
    topics = [spec("entropy.raw"), spec("entropy.private"), spec("qrng.status"), baseline_spec]
    ensure_topics(settings, topics)
    ours: list[float] = []
    baseline: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as state, Progress(console=console) as progress:
            task = progress.add_task("ingest bench", total=ROUNDS * 2 + 1)
            progress.update(task, description="health tests alone")
            health = _health_rate()
            progress.advance(task)
            for round_ in range(ROUNDS):
                progress.update(task, description=f"ours, round {round_ + 1}")
                ours.append(_ours(settings, Path(state), round_))
                progress.advance(task)
                progress.update(task, description=f"baseline, round {round_ + 1}")
                baseline.append(_baseline(settings, settings.topic("bench.baseline")))
                progress.advance(task)
    finally:
        # A run writes gigabytes (1 MiB chunks at hundreds of MB/s): give the disk back at
        # once (scratch_kafka deletes whatever else is left under the prefix).
        delete_topics(settings, [settings.topic(t.name) for t in topics])
    console.print(f"ours MB/s per round: {[round(x, 1) for x in ours]}; "
                  f"baseline: {[round(x, 1) for x in baseline]}; load {os.getloadavg()}")
    best_ours, best_baseline = max(ours), max(baseline)
    return {"bench": "ingest", "unit": "MB/s", "ours": round(best_ours, 1),
            "baseline": round(best_baseline, 1), "ratio": round(best_ours / best_baseline, 3),
            "health_tests_mb_s": round(health, 1)}


if __name__ == "__main__":
    main()
