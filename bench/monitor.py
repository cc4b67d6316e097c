"""Monitor benchmark: records per second the monitor folds, over topics a real network wrote.

1. The demo's event rate: a network as ``qustream demo`` runs it (2 simulated QRNG servers at
   512 KiB/s with 64 KiB chunks and 250 ms checkpoints, 4 validators at one block per second,
   the tally) for ``--demo-s`` seconds after its first block; every record its services write
   to the topics the monitor reads, per second (``demo_events_per_s``).
2. The recording: the same network run ``--speedup`` times faster for ``--record-s`` seconds
   (each QRNG server at 512 KiB/s x speedup, a block every 1000 / speedup ms), so the topics
   hold the demo's mix of chunks, checkpoints, heartbeats, proposals, votes and finalized
   blocks, in some volume.
3. ours: the monitor (``services.monitor``: the Faust app with its table, the decoder, the
   ledger followed from the genesis, the rules) started cold on the recording, ``--passes``
   times, each with a fresh consumer group and a fresh ``monitor.state``/``alerts``; records
   per second from its first record folded to the last (so Faust's start-up is not counted).
4. baseline, in the same run: a plain confluent-kafka consumer reading the same records, all
   partitions from the start to the same ends, in batches (``consume``), doing nothing else;
   ``baseline_decode``: the same consumer also decoding each record (``streams.codec``), the
   least any consumer of these events does.

ratio = ours / baseline. Every topic and consumer group the bench creates (its own prefix) is
deleted at the end. Run: ``python -m bench.monitor`` (QUSTREAM_KAFKA_BOOTSTRAP_SERVERS or the
embedded broker); the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.common import emit
from services.monitor.decode import INPUTS
from streams.admin import ensure_topics
from streams.codec import CodecError, default_codec
from streams.kafka import consumer_config, make_consumer
from streams.settings import Settings, load_settings
from streams.supervisor import ServiceSpec, Supervisor
from streams.topics import BY_NAME

CLI = (sys.executable, "-m", "streams.cli")


def _env(settings: Settings, state_dir: Path) -> dict[str, str]:
    return {**os.environ, **settings.to_env(), "QUSTREAM_STATE_DIR": str(state_dir)}


def _services(net: Path, env: dict[str, str], qrng_rate: str, interval_ms: int
              ) -> list[ServiceSpec]:
    """The demo's QRNG servers, validators and tally (services/demo.py), at a chosen pace."""
    specs = [ServiceSpec(f"qrng-{i}", (
        *CLI, "qrng", "run", "--source", f"sim,rate={qrng_rate}", "--key",
        str(net / "keys" / f"qrng-{i}.json"), "--source-id", f"qrng-{i}", "--chunk-size",
        "64KiB", "--checkpoint-ms", "250", "--private-share", "0.2", "--quiet"), env=env)
        for i in range(2)]
    specs += [ServiceSpec(f"validator-{i}", (
        *CLI, "validator", "run", "--key", str(net / "keys" / f"validator-{i}.json"),
        "--genesis", str(net / "genesis.json"), "--block-interval-ms", str(interval_ms)),
        env=env) for i in range(4)]
    specs.append(ServiceSpec("tally", (*CLI, "tally", "run", "--genesis",
                                       str(net / "genesis.json")), env=env))
    return specs


def _ends(settings: Settings) -> dict[tuple[str, int], tuple[int, int]]:
    consumer = make_consumer(settings, f"{settings.topic_prefix}probe-{time.time_ns()}")
    try:
        return {(settings.topic(name), p): consumer.watermarks(settings.topic(name), p)
                for name in INPUTS for p in consumer.partitions(settings.topic(name))}
    finally:
        consumer.close()


def run_network(settings: Settings, root: Path, seconds: float, qrng_rate: str,
                interval_ms: int) -> tuple[float, float]:
    """Run the network until ``seconds`` after its first block; (start, end) wall times."""
    net = root / "net"
    env = _env(settings, root)
    if not (net / "genesis.json").exists():
        subprocess.run([*CLI, "genesis", "new", "--validators", "4", "--sources", "2",
                        "--accounts", "2", "--out", str(net)], check=True, capture_output=True,
                       env=env)
    ensure_topics(settings)
    supervisor = Supervisor(_services(net, env, qrng_rate, interval_ms), root / "logs",
                            max_restarts=0)
    supervisor.start()
    started: float | None = None
    try:
        deadline = time.monotonic() + seconds + 120
        while time.monotonic() < deadline:
            supervisor.tick()
            time.sleep(0.5)
            if started is None:
                low, high = _ends(settings).get((settings.topic("chain.blocks"), 0), (0, 0))
                if high > low:
                    started = time.time()
            elif time.time() - started >= seconds:
                break
    finally:
        supervisor.stop(grace_s=10)
    if started is None:
        raise RuntimeError(f"no block within the deadline; logs in {root / 'logs'}")
    return started, time.time()


def count_records(settings: Settings, since: float, until: float) -> int:
    """Records on the monitor's input topics whose log time is within [since, until]."""
    consumer = Consumer(consumer_config(settings, f"{settings.topic_prefix}count-{time.time_ns()}"))
    ends = {tp: end for tp, (_, end) in _ends(settings).items()}
    count = 0
    try:
        for (topic, partition), (low, _) in _ends(settings).items():
            consumer.assign([TopicPartition(topic, partition, low)])
            while consumer.position([TopicPartition(topic, partition)])[0].offset < \
                    ends[(topic, partition)] - 1:
                batch = consumer.consume(1000, 1.0)
                if not batch:
                    break
                count += sum(1 for m in batch if m.error() is None
                             and since * 1000 <= m.timestamp()[1] <= until * 1000)
    finally:
        consumer.close()
    return count


def baseline(settings: Settings, decode: bool) -> tuple[int, float]:
    """(records, seconds) for a plain consumer reading every input partition to its end."""
    # The baseline is the library's own consumer, as a plain application would use it.
    consumer = Consumer(consumer_config(settings,
                                        f"{settings.topic_prefix}baseline-{time.time_ns()}"))
    codec = default_codec()
    bounds = {tp: b for tp, b in _ends(settings).items() if b[1] > b[0]}
    consumer.assign([TopicPartition(t, p, low) for (t, p), (low, _) in bounds.items()])
    records, first, last = 0, 0.0, 0.0
    try:
        idle = 0
        while idle < 10:
            batch = consumer.consume(2000, 0.5)
            if not batch:  # done when every partition is read to its end (markers included)
                positions = consumer.position([TopicPartition(*tp) for tp in bounds])
                if all(p.offset >= bounds[(p.topic, p.partition)][1] for p in positions):
                    break
                idle += 1
                continue
            idle = 0
            first = first or time.perf_counter()
            for message in batch:
                if message.error() is not None:
                    continue
                records += 1
                if decode:
                    with contextlib.suppress(CodecError):
                        codec.decode(message.value())
            last = time.perf_counter()
    finally:
        consumer.close()
    return records, last - first


def _reset_monitor_topics(settings: Settings) -> None:
    admin = AdminClient(settings.kafka_config())
    names = [settings.topic("monitor.state"), settings.topic("alerts")]
    existing = admin.list_topics(timeout=30).topics
    doomed = [n for n in names if n in existing]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=30).values():
            future.result(30)
        deadline = time.monotonic() + 30
        while set(doomed) & set(admin.list_topics(timeout=30).topics):
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics {doomed} were not deleted")
            time.sleep(0.3)
    for _attempt in range(20):  # a just-deleted name can be refused for a moment
        try:
            ensure_topics(settings, [BY_NAME["monitor.state"], BY_NAME["alerts"]])
            return
        except Exception:
            time.sleep(0.5)
    ensure_topics(settings, [BY_NAME["monitor.state"], BY_NAME["alerts"]])


def monitor_pass(settings: Settings, root: Path, index: int) -> tuple[int, float]:
    """One cold run of the monitor over the recording, in its own process."""
    _reset_monitor_topics(settings)
    env = {**_env(settings, root / f"pass-{index}"),
           "QUSTREAM_MONITOR_APP_ID": f"{settings.topic_prefix}monitor-pass-{index}",
           "QUSTREAM_MONITOR_INSTANCE_ID": f"bench-{index}"}
    done = subprocess.run([sys.executable, "-m", "bench.monitor", "--pass", "--genesis",
                           str(root / "net" / "genesis.json")], env=env, capture_output=True,
                          text=True, timeout=600)
    lines = [line[line.index("{"):] for line in done.stdout.splitlines() if '{"events"' in line]
    if not lines:
        raise RuntimeError(f"monitor pass failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    result = json.loads(lines[-1])
    return int(result["events"]), float(result["seconds"])


def _pass_main(genesis: Path) -> None:
    """Inside a pass: the monitor, stopped as soon as it has read everything once."""
    import faust

    from services.monitor.app import make_app
    from services.monitor.ledger import LedgerView
    from services.monitor.runtime import MonitorRuntime
    from services.monitor.settings import MonitorSettings

    class TimedRuntime(MonitorRuntime):
        first = 0.0
        last = 0.0

        def apply(self, records: Any) -> list[str]:
            self.first = self.first or time.perf_counter()
            changed = super().apply(records)
            self.last = time.perf_counter()
            return changed

    settings = load_settings()
    runtime = TimedRuntime(settings, MonitorSettings(evaluate_interval_s=0.1),
                           LedgerView(genesis))
    service = make_app(settings, runtime)

    @service.app.timer(0.1)
    async def finished() -> None:
        if runtime.restored and runtime.check_caught_up() and runtime.last:
            print(json.dumps({"events": sum(runtime.events.values()),
                              "seconds": runtime.last - runtime.first}), flush=True)
            os._exit(0)

    faust.Worker(service.app, loglevel="ERROR", quiet=True, redirect_stdouts=False
                 ).execute_from_commandline()


def cleanup(settings: Settings) -> None:
    """Delete every topic and consumer group under the bench's prefix."""
    admin = AdminClient(settings.kafka_config())
    topics = [t for t in admin.list_topics(timeout=30).topics
              if t.startswith(settings.topic_prefix)]
    if topics:
        for future in admin.delete_topics(topics, operation_timeout=60).values():
            try:
                future.result(60)
            except Exception as exc:
                print(f"could not delete a topic: {exc}", file=sys.stderr)
    groups = [g.group_id for g in admin.list_consumer_groups().result(30).valid
              if g.group_id.startswith(settings.topic_prefix)]
    left = list(groups)
    deadline = time.monotonic() + 40  # a static member ends with its session (10 s)
    while left and time.monotonic() < deadline:
        futures = admin.delete_consumer_groups(left, request_timeout=30)
        left = []
        for group, future in futures.items():
            try:
                future.result(30)
            except Exception:
                left.append(group)
        if left:
            time.sleep(2)
    if left:
        print(f"could not delete consumer groups {left}", file=sys.stderr)
    print(f"deleted {len(topics)} topics and {len(groups) - len(left)} consumer groups",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-s", type=float, default=20.0)
    parser.add_argument("--record-s", type=float, default=60.0)
    parser.add_argument("--speedup", type=int, default=4)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--pass", dest="one_pass", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--genesis", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_pass:
        _pass_main(args.genesis)
        return
    base = load_settings()
    demo = base.model_copy(update={"topic_prefix": f"bench{uuid.uuid4().hex[:8]}demo."})
    recorded = base.model_copy(update={"topic_prefix": f"bench{uuid.uuid4().hex[:8]}rec."})
    try:
        with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
            root = Path(tmp)
            since, until = run_network(demo, root / "demo", args.demo_s, "512KiB", 1000)
            demo_rate = count_records(demo, since, until) / (until - since)
            print(f"demo network: {demo_rate:.1f} records/s on the monitor's topics", flush=True)
            run_network(recorded, root / "rec", args.record_s, f"{512 * args.speedup}KiB",
                        1000 // args.speedup)
            ours = []
            for index in range(args.passes):
                events, seconds = monitor_pass(recorded, root / "rec", index)
                ours.append(events / seconds)
                print(f"monitor pass {index + 1}: {events} records in {seconds:.2f} s = "
                      f"{ours[-1]:.0f}/s", flush=True)
            plain = baseline(recorded, decode=False)
            decoded = baseline(recorded, decode=True)
            print(f"plain consumer: {plain[0]} records in {plain[1]:.2f} s; with decoding: "
                  f"{decoded[1]:.2f} s", flush=True)
    finally:
        cleanup(demo)
        cleanup(recorded)
    ours_rate = statistics.median(ours)
    baseline_rate = plain[0] / plain[1]
    emit({"bench": "monitor", "unit": "events/s", "ours": round(ours_rate, 1),
          "baseline": round(baseline_rate, 1), "ratio": round(ours_rate / baseline_rate, 3),
          "baseline_decode": round(decoded[0] / decoded[1], 1),
          "ratio_to_decode": round(ours_rate / (decoded[0] / decoded[1]), 3),
          "records": plain[0], "demo_events_per_s": round(demo_rate, 1),
          "x_demo": round(ours_rate / demo_rate, 1)})


if __name__ == "__main__":
    main()
