"""Finality benchmark: real validator and tally processes on the configured Kafka.

For 4 and for 16 validators (ML-DSA-65 keys, the default of ``qustream genesis new``), two
fresh networks each (own topic prefix):

1. latency: a 1-block-per-second target (``--block-interval-ms 1000``); for every block, the
   time from its proposal written (the ProposalMade record's log time, carried in the block
   record as ``proposed_at_ms``) to its BlockFinalized written (that record's log time);
   p50 and p99;
2. throughput: no block interval (``--block-interval-ms 0``); blocks per second over the
   steady part of the run (log times of the first and last BlockFinalized after warm-up).

No QRNG sources run (the networks' genesis registers none): this measures consensus, not
ingest (``bench.ingest`` does that). Baseline, measured in the same run: the raw Kafka
produce -> consume round trip with the same client settings (linger 0, fetch wait 5 ms); the
ratio is p50_ms_4 / baseline_p50_ms (a block needs at least three such hops: proposal,
prevotes, precommits, then the tally's transactional write).

Run: ``python -m bench.finality`` (uses QUSTREAM_KAFKA_BOOTSTRAP_SERVERS or the embedded
broker). Every network's topics and consumer groups are deleted when it ends. The last line is
one JSON object.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from bench.common import scratch_kafka
from streams.admin import ensure_topics
from streams.chain_wire import decode_finalized
from streams.kafka import Position, consumer_config, make_consumer, producer_config
from streams.settings import Settings, load_settings
from streams.supervisor import ServiceSpec, Supervisor

CLI = (sys.executable, "-m", "streams.cli")


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _blocks(settings: Settings) -> list[tuple[int, int, int]]:
    """(height, proposed_at_ms, written_at_ms) of every BlockFinalized record."""
    topic = settings.topic("chain.blocks")
    consumer = make_consumer(settings, f"bench-{uuid.uuid4().hex[:8]}")
    out: list[tuple[int, int, int]] = []
    try:
        _, end = consumer.watermarks(topic)
        consumer.assign([Position(topic, 0, 0)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = consumer.poll(0.3)
            if message is None:
                if consumer.position(topic, 0) >= end:
                    break
                continue
            record = decode_finalized(message.value)
            out.append((record.height, record.proposed_at_ms, message.timestamp_ms))
    finally:
        consumer.close()
    return out


def run_network(base: Settings, validators: int, interval_ms: int, seconds: float
                ) -> list[tuple[int, int, int]]:
    with scratch_kafka(base) as settings, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "QUSTREAM_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap(),
               "QUSTREAM_TOPIC_PREFIX": settings.topic_prefix, "QUSTREAM_STATE_DIR": tmp}
        subprocess.run([*CLI, "genesis", "new", "--validators", str(validators), "--accounts",
                        "1", "--sources", "0", "--out", str(root / "net")], check=True,
                       capture_output=True, env=env)
        ensure_topics(settings)
        specs = [ServiceSpec(f"validator-{i}", (
            *CLI, "validator", "run", "--key", str(root / "net" / "keys" / f"validator-{i}.json"),
            "--genesis", str(root / "net" / "genesis.json"), "--block-interval-ms",
            str(interval_ms)), env=env) for i in range(validators)]
        specs.append(ServiceSpec("tally", (*CLI, "tally", "run", "--genesis",
                                           str(root / "net" / "genesis.json")), env=env))
        supervisor = Supervisor(specs, root / "logs", max_restarts=0)
        supervisor.start()
        try:
            deadline = time.monotonic() + seconds + 30  # startup allowance
            started = None
            while time.monotonic() < deadline:
                supervisor.tick()
                time.sleep(1)
                if started is None:
                    consumer = make_consumer(settings, f"probe-{uuid.uuid4().hex[:8]}")
                    try:
                        low, high = consumer.watermarks(settings.topic("chain.blocks"))
                    finally:
                        consumer.close()
                    if high > low:
                        started = time.monotonic()
                elif time.monotonic() - started >= seconds:
                    break
        finally:
            supervisor.stop(grace_s=5)
        return _blocks(settings)


def latency(blocks: list[tuple[int, int, int]]) -> tuple[float, float]:
    steady = blocks[2:]  # the first heights include process start-up
    values = [float(written - proposed) for _, proposed, written in steady]
    return _percentile(values, 0.5), _percentile(values, 0.99)


def throughput(blocks: list[tuple[int, int, int]]) -> float:
    steady = blocks[3:]
    if len(steady) < 2:
        return 0.0
    span_ms = steady[-1][2] - steady[0][2]
    return (len(steady) - 1) * 1000 / max(span_ms, 1)


def _end_offset(consumer: Consumer, topic: str, attempts: int = 30) -> int:
    """The end of a just-created topic: a broker with many partitions may need a moment to
    elect its leader (NOT_LEADER_FOR_PARTITION meanwhile)."""
    for attempt in range(attempts):
        try:
            return int(consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)[1])
        except KafkaException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def kafka_round_trip(base: Settings, count: int = 200) -> float:
    """p50 ms of produce -> consume of one small record, same client settings as consensus,
    with the raw confluent-kafka clients (no edge kit in the baseline)."""
    with scratch_kafka(base) as settings:
        ensure_topics(settings)
        topic = settings.topic("chain.consensus")
        overrides: dict[str, Any] = {"linger.ms": 0}
        producer = Producer(producer_config(settings, **overrides))
        consumer = Consumer(consumer_config(settings, f"rt-{uuid.uuid4().hex[:8]}",
                                            **{"fetch.wait.max.ms": 5, "fetch.min.bytes": 1}))
        end = _end_offset(consumer, topic)
        consumer.assign([TopicPartition(topic, 0, end)])
        samples: list[float] = []
        try:
            for _ in range(count):
                sent = time.perf_counter()
                producer.produce(topic, value=b"x" * 200)
                producer.poll(0)
                while True:
                    message = consumer.poll(1.0)
                    if message is not None and not message.error():
                        break
                samples.append((time.perf_counter() - sent) * 1000)
        finally:
            consumer.close()
            producer.flush(5)
    return _percentile(samples, 0.5)


def main() -> None:
    settings = load_settings()
    seconds_latency = float(os.environ.get("QUSTREAM_BENCH_SECONDS", "20"))
    seconds_rate = float(os.environ.get("QUSTREAM_BENCH_RATE_SECONDS", "15"))
    baseline = kafka_round_trip(settings)
    print(f"kafka produce->consume round trip p50 {baseline:.1f} ms", flush=True)
    result: dict[str, object] = {"bench": "finality"}
    for n in (4, 16):
        blocks = run_network(settings, n, 1000, seconds_latency)
        p50, p99 = latency(blocks)
        print(f"{n} validators, 1 block/s: {len(blocks)} blocks, proposal->finalized "
              f"p50 {p50:.0f} ms p99 {p99:.0f} ms", flush=True)
        blocks = run_network(settings, n, 0, seconds_rate)
        rate = throughput(blocks)
        print(f"{n} validators, no interval: {len(blocks)} blocks, {rate:.1f} blocks/s",
              flush=True)
        result.update({f"p50_ms_{n}": round(p50, 1), f"p99_ms_{n}": round(p99, 1),
                       f"blocks_per_s_{n}": round(rate, 2)})
    result["baseline_kafka_round_trip_p50_ms"] = round(baseline, 2)
    p50_4 = result["p50_ms_4"]
    assert isinstance(p50_4, float)
    result["ratio_p50_4_to_round_trip"] = round(p50_4 / baseline, 2) if baseline else None
    print(json.dumps(result))


if __name__ == "__main__":
    main()
