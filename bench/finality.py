"""Finality benchmark: real validator and tally processes on the configured Kafka.

    python -m bench.finality [--blocks 200] [--sizes 4,16] [--peer cometbft]

For 4 and for 16 validators (ML-DSA-65 keys, the default of ``qustream genesis new``), two
fresh networks each (own topic prefix), each run until ``--blocks`` blocks (default 200) past
the warm-up are finalized:

1. latency: a 1-block-per-second target (``--block-interval-ms 1000``); for every block, the
   time from its proposal written (the ProposalMade record's log time, carried in the block
   record as ``proposed_at_ms``) to its BlockFinalized written (that record's log time);
   p50 and p99.
   Beside it, the same span as the peer's below, at one node: from the proposal reaching
   validator 0 (its own: when it made it) to validator 0 deciding, as its log says
   (``node_p50_ms_N``, ``node_p99_ms_N``). A block is final when a node decides it; the tally's
   BlockFinalized record is the network writing that down, one more hop (plus its
   transaction) after the quorum's last precommit, which the proposal -> BlockFinalized span
   above includes and the peer's does not.
2. throughput: no block interval (``--block-interval-ms 0``); blocks per second over the
   steady part of the run (log times of the first and last BlockFinalized after warm-up).
   Beside it, CPU seconds per height over the same blocks (user + system, read from
   ``/proc`` for each process): ``cpu_ms_per_height_validator_N`` (the validators' mean) and
   ``cpu_ms_per_height_tally_N``; unlike blocks/s, these hardly move with a shared machine's
   load.

``--peer cometbft`` runs the same shape with CometBFT (``bench.cometbft``: a pinned v1.x built
once from the Go module proxy into ``.qustream/tools``, an n-validator localnet on loopback with
its kvstore application, Ed25519 keys): ``timeout_commit`` 1 s for latency (from node 0
receiving the proposal to node 0 finalizing the commit), 0 for throughput (node 0's commit
times), the same block counts; adds ``peer_*`` keys and ``ratio_blocks_per_s_N`` (ours / peer,
higher is better), ``ratio_p99_ms_N`` (ours / peer, lower is better) and
``ratio_node_p99_ms_N`` (ours at validator 0 / peer: the like-for-like latency).

No QRNG sources run (the networks' genesis registers none): this measures consensus, not
ingest (``bench.ingest`` does that). Baseline, measured in the same run: the raw Kafka
produce -> consume round trip with the same client settings (linger 0, a fetch
answered at its first byte); the
ratio is p50_ms_4 / baseline_p50_ms (a block needs at least three such hops: proposal,
prevotes, precommits, then the tally's transactional write). Beside it the same round trip with
``IDLE_GAP_S`` idle before each record (``baseline_kafka_round_trip_idle_p50_ms``): at one
block a second every process of the network sleeps between heights, and on a virtual machine
waking the half-dozen threads of a hop (client, broker, client) costs far more than a hop
between busy processes.

Run: ``python -m bench.finality`` (uses QUSTREAM_KAFKA_BOOTSTRAP_SERVERS or the embedded
broker). Every network's topics and consumer groups are deleted when it ends. The last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from bench import cometbft
from bench.common import emit, scratch_kafka
from services.consensus.node import CONSUMER_LATENCY
from streams.admin import ensure_topics
from streams.chain_wire import decode_finalized
from streams.kafka import Position, consumer_config, make_consumer, producer_config
from streams.settings import Settings, load_settings
from streams.supervisor import ServiceSpec, Supervisor

CLI = (sys.executable, "-m", "streams.cli")
WARMUP = 3  # first blocks left out: they include process start-up
IDLE_GAP_S, IDLE_SAMPLES = 0.5, 60  # the idle round trip (module doc)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class _BlockWatch:
    """Reads ``chain.blocks`` as the network writes it: (height, proposed_at_ms,
    written_at_ms) of every BlockFinalized record (the tally writes in transactions, so the
    topic's offsets count commit markers too and say nothing about the number of blocks)."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic("chain.blocks")
        self.consumer = make_consumer(settings, f"bench-{uuid.uuid4().hex[:8]}")
        self.consumer.assign([Position(self.topic, 0, 0)])
        self.blocks: list[tuple[int, int, int]] = []

    def poll(self, seconds: float) -> int:
        """Read what arrives within ``seconds``; returns the number of blocks so far."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.consumer.poll(min(remaining, 0.3))
            if message is not None:
                record = decode_finalized(message.value)
                self.blocks.append((record.height, record.proposed_at_ms, message.timestamp_ms))
        return len(self.blocks)

    def close(self) -> None:
        self.consumer.close()


_DECIDED = re.compile(r"decided height (\d+) round \d+, ([\d.]+) ms after its proposal reached")


def parse_decisions(lines: Iterable[str]) -> list[tuple[int, float, float]]:
    """(height, 0, ms from the proposal reaching the node to its decision) of every height a
    validator's log reports so (``ValidatorNode.on_decided``), in the ``latency`` shape."""
    found = []
    for line in lines:
        match = _DECIDED.search(line)
        if match:
            found.append((int(match.group(1)), 0.0, float(match.group(2))))
    return found


def _cpu_seconds(supervisor: Supervisor) -> dict[str, float]:
    """User + system CPU seconds each running service used so far (Linux ``/proc``; empty
    elsewhere)."""
    used = {}
    for status in supervisor.status():
        try:
            stat = Path(f"/proc/{status.pid}/stat").read_text()
        except (OSError, TypeError):
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        used[status.name] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return used


def cpu_per_height(before: tuple[int, dict[str, float]], after: tuple[int, dict[str, float]]
                   ) -> dict[str, float]:
    """CPU seconds per finalized height between two (blocks, ``_cpu_seconds``) samples: the
    validators' mean and the tally's (the steady part of a run; robust to a shared machine's
    load, unlike blocks/s)."""
    heights = after[0] - before[0]
    spent = {name: (after[1][name] - before[1][name]) / heights
             for name in after[1] if name in before[1]} if heights > 0 else {}
    validators = [v for name, v in spent.items() if name.startswith("validator-")]
    if not validators or "tally" not in spent:
        return {}
    return {"validator": sum(validators) / len(validators), "tally": spent["tally"]}


def run_network(base: Settings, validators: int, interval_ms: int, blocks: int,
                timeout_s: float
                ) -> tuple[list[tuple[int, int, int]], dict[str, float],
                           list[tuple[int, float, float]]]:
    """Run a fresh network until ``blocks`` blocks past the warm-up are finalized (or
    ``timeout_s``); every block record it wrote, ``cpu_per_height`` after the warm-up, and
    validator 0's decisions (``parse_decisions``) of the heights the records cover."""
    with scratch_kafka(base) as settings, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "QUSTREAM_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap(),
               "QUSTREAM_TOPIC_PREFIX": settings.topic_prefix, "QUSTREAM_STATE_DIR": tmp}
        subprocess.run([*CLI, "genesis", "new", "--validators", str(validators), "--accounts",
                        "1", "--sources", "0", "--out", str(root / "net")], check=True,
                       capture_output=True, env=env, timeout=300)
        ensure_topics(settings)
        specs = [ServiceSpec(f"validator-{i}", (
            *CLI, "validator", "run", "--key", str(root / "net" / "keys" / f"validator-{i}.json"),
            "--genesis", str(root / "net" / "genesis.json"), "--block-interval-ms",
            str(interval_ms)), env=env) for i in range(validators)]
        specs.append(ServiceSpec("tally", (*CLI, "tally", "run", "--genesis",
                                           str(root / "net" / "genesis.json")), env=env))
        supervisor = Supervisor(specs, root / "logs", max_restarts=0)
        watch = _BlockWatch(settings)
        warm: tuple[int, dict[str, float]] | None = None
        cpu: dict[str, float] = {}
        try:  # started inside: a failure half-way still stops what already runs
            supervisor.start()
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                for event in supervisor.tick():  # a crashed service is not restarted
                    print(f"  {event} (logs: {root / 'logs'})", flush=True)
                seen = watch.poll(1.0)
                if warm is None and seen >= WARMUP:
                    warm = (seen, _cpu_seconds(supervisor))
                if seen >= blocks + WARMUP:
                    break
            if warm is not None:
                cpu = cpu_per_height(warm, (len(watch.blocks), _cpu_seconds(supervisor)))
        finally:
            supervisor.stop(grace_s=5)
            watch.close()
        with open(supervisor.log_path("validator-0"), errors="replace") as log:
            last = max((height for height, _, _ in watch.blocks), default=0)
            decided = [d for d in parse_decisions(log) if d[0] <= last]
        return watch.blocks, cpu, decided


def latency(blocks: list[tuple[int, float, float]]) -> tuple[float, float]:
    steady = blocks[WARMUP:]
    values = [float(written - proposed) for _, proposed, written in steady
              if not math.isnan(proposed)]  # NaN: the peer's node never saw the proposal
    return _percentile(values, 0.5), _percentile(values, 0.99)


def throughput(blocks: list[tuple[int, float, float]]) -> float:
    steady = blocks[WARMUP:]
    if len(steady) < 2:
        return 0.0
    span_ms = steady[-1][2] - steady[0][2]
    return (len(steady) - 1) * 1000 / max(span_ms, 1)


def _timeout_s(blocks: int, interval_ms: int) -> float:
    """Generous: two seconds per block beyond the interval, plus start-up."""
    return blocks * (interval_ms / 1000 + 2) + 120


def _end_offset(consumer: Consumer, topic: str, timeout_s: float = 30.0) -> int:
    """The partition's end, once the new topic has a leader (right after creation, a
    broker under load may still answer "not leader")."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return int(consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1])
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def kafka_round_trip(base: Settings, count: int = 200, gap_s: float = 0.0) -> float:
    """p50 ms of produce -> consume of one small record, same client settings as consensus,
    with the raw confluent-kafka clients (no edge kit in the baseline); ``gap_s`` idle
    between records (a network at one block a second is idle most of the time)."""
    with scratch_kafka(base) as settings:
        ensure_topics(settings)
        topic = settings.topic("chain.consensus")
        overrides: dict[str, Any] = {"linger.ms": 0}
        producer = Producer(producer_config(settings, **overrides))
        consumer = Consumer(consumer_config(settings, f"rt-{uuid.uuid4().hex[:8]}",
                                            **CONSUMER_LATENCY))
        end = _end_offset(consumer, topic)
        consumer.assign([TopicPartition(topic, 0, end)])
        samples: list[float] = []
        try:
            for _ in range(count):
                if gap_s:  # the back-to-back baseline stays as it was: no sleep(0) in its loop
                    time.sleep(gap_s)
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


def _measure(name: str, blocks: int, run: Callable[[int, int], list[tuple[int, float, float]]],
             n: int, result: dict[str, Any], prefix: str = "") -> None:
    """Latency and throughput of one system at ``n`` validators into ``result``."""
    measured = run(n, 1000)
    p50, p99 = latency(measured)
    print(f"{name}, {n} validators, 1 block/s: {len(measured[WARMUP:])} blocks, proposal -> "
          f"finalized p50 {p50:.0f} ms p99 {p99:.0f} ms", flush=True)
    rated = run(n, 0)
    rate = throughput(rated)
    print(f"{name}, {n} validators, no interval: {len(rated[WARMUP:])} blocks, {rate:.1f} "
          "blocks/s", flush=True)
    if min(len(measured), len(rated)) < blocks + WARMUP:
        print(f"  (fewer than {blocks} blocks before the time limit)", flush=True)
    result.update({f"{prefix}p50_ms_{n}": round(p50, 1), f"{prefix}p99_ms_{n}": round(p99, 1),
                   f"{prefix}blocks_per_s_{n}": round(rate, 2),
                   f"{prefix}blocks_{n}": min(len(measured), len(rated)) - WARMUP})


def _interrupt_on_signals() -> None:
    """SIGTERM and SIGINT (also when started in the background, where SIGINT is inherited as
    ignored) raise KeyboardInterrupt, so every ``finally`` runs: the networks' processes are
    stopped and the scratch topics deleted."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=200,
                        help="blocks measured per configuration, after the warm-up")
    parser.add_argument("--sizes", default="4,16", help="network sizes")
    parser.add_argument("--peer", choices=["cometbft"], default=None,
                        help="also run the same shape with a peer implementation")
    args = parser.parse_args()
    _interrupt_on_signals()
    sizes = [int(s) for s in args.sizes.split(",")]
    settings = load_settings()
    binary = cometbft.ensure_binary() if args.peer else None  # fail before hours of work
    baseline = kafka_round_trip(settings)
    idle = kafka_round_trip(settings, count=IDLE_SAMPLES, gap_s=IDLE_GAP_S)
    print(f"kafka produce->consume round trip p50 {baseline:.1f} ms back to back, {idle:.1f} ms "
          f"after {IDLE_GAP_S} s idle", flush=True)
    result: dict[str, Any] = {"bench": "finality"}

    def ours(n: int, interval_ms: int) -> list[tuple[int, float, float]]:
        records, cpu, decided = run_network(settings, n, interval_ms, args.blocks,
                                            _timeout_s(args.blocks, interval_ms))
        if interval_ms and decided:
            p50, p99 = latency(decided)
            result[f"node_p50_ms_{n}"], result[f"node_p99_ms_{n}"] = round(p50, 1), round(p99, 1)
            print(f"ours, {n} validators, 1 block/s: at validator 0, proposal -> decided p50 "
                  f"{p50:.0f} ms p99 {p99:.0f} ms ({len(decided[WARMUP:])} heights)", flush=True)
        if interval_ms == 0 and cpu:
            result[f"cpu_ms_per_height_validator_{n}"] = round(cpu["validator"] * 1000, 2)
            result[f"cpu_ms_per_height_tally_{n}"] = round(cpu["tally"] * 1000, 2)
            print(f"ours, {n} validators, no interval: CPU per height {cpu['validator'] * 1000:.1f}"
                  f" ms per validator (mean), {cpu['tally'] * 1000:.1f} ms the tally", flush=True)
        return [(h, float(p), float(w)) for h, p, w in records]

    for n in sizes:
        _measure("ours", args.blocks, ours, n, result)
    result["baseline_kafka_round_trip_p50_ms"] = round(baseline, 2)
    result["baseline_kafka_round_trip_idle_p50_ms"] = round(idle, 2)
    if 4 in sizes:
        result["ratio_p50_4_to_round_trip"] = (
            round(result["p50_ms_4"] / baseline, 2) if baseline else None)
    if binary is not None:
        def peer(n: int, interval_ms: int) -> list[tuple[int, float, float]]:
            return cometbft.run_localnet(binary, n, interval_ms, args.blocks + WARMUP,
                                         _timeout_s(args.blocks, interval_ms))

        for n in sizes:
            _measure(f"CometBFT {cometbft.VERSION}", args.blocks, peer, n, result, "peer_")
        result["peer"] = f"cometbft {cometbft.VERSION}"
        for n in sizes:
            ours_rate, peer_rate = result[f"blocks_per_s_{n}"], result[f"peer_blocks_per_s_{n}"]
            result[f"ratio_blocks_per_s_{n}"] = (
                round(ours_rate / peer_rate, 3) if peer_rate else None)
            ours_p99, peer_p99 = result[f"p99_ms_{n}"], result[f"peer_p99_ms_{n}"]
            result[f"ratio_p99_ms_{n}"] = round(ours_p99 / peer_p99, 3) if peer_p99 else None
            if f"node_p99_ms_{n}" in result and peer_p99:
                result[f"ratio_node_p99_ms_{n}"] = round(result[f"node_p99_ms_{n}"] / peer_p99,
                                                         3)
    result["load"] = round(os.getloadavg()[0], 1)
    emit(result)


if __name__ == "__main__":
    main()
