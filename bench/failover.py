"""Failover benchmark: finality on the three-broker cluster, steady vs. with the leader of
``chain.consensus`` killed once.

On a replicated Kafka of its own (three combined KRaft brokers, replication factor 3,
``min.insync.replicas`` 2, started under ``<state>/bench-failover`` on free ports and stopped at
the end), four validators and the tally run with no block interval (``--block-interval-ms 0``,
no QRNG sources: this measures consensus and failover, not ingest):

1. steady (the baseline, measured in the same run): after a warm-up, blocks per second and the
   p99 of proposal-to-finalized time (the ProposalMade log time carried in the block record to
   the BlockFinalized log time) over ``QUSTREAM_BENCH_SECONDS`` (default 20);
2. fault: ``kill -9`` of the broker leading ``chain.consensus``; the chain must continue on the
   other two. The longest pause between two consecutive finalized blocks (their log times) is
   compared with the election bound the cluster is configured for
   (``infra.local.config.kafka_failover_bound_ms``); the broker is restarted after
   ``QUSTREAM_BENCH_FAULT_SECONDS`` (default 30) and must rejoin every ISR;
3. check: every block finalized before the kill is still there with the same hash (``lost``),
   no height is committed twice (``duplicated``), heights have no gap (``gaps``).

Run: ``python -m bench.failover``. The last line is one JSON object.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from bench.common import emit
from infra.local import LocalCluster
from infra.local.config import kafka_failover_bound_ms
from infra.local.faults import free_port_block, partition_leader, wait_in_sync
from streams.admin import ensure_topics
from streams.chain_wire import decode_finalized
from streams.kafka import Position, make_consumer
from streams.settings import InfraSettings, KafkaSettings, Settings, load_settings
from streams.supervisor import ServiceSpec, Supervisor

CLI = (sys.executable, "-m", "streams.cli")


@dataclass(frozen=True, slots=True)
class Finalized:
    height: int
    block_hash: bytes
    proposed_at_ms: int
    written_at_ms: int  # the BlockFinalized record's log time (set by the tally's producer)
    seen_at_ms: int  # when this reader received it: what a subscriber of the chain sees


class FinalizedLog:
    """Every committed BlockFinalized of ``chain.blocks``, read as it is written
    (``read_committed``, so a transaction aborted by a failover is never counted)."""

    def __init__(self, settings: Settings) -> None:
        self.records: list[Finalized] = []
        self._consumer = make_consumer(settings, f"finalized-log-{uuid.uuid4().hex[:8]}",
                                       **{"fetch.wait.max.ms": 50})
        self._consumer.assign([Position(settings.topic("chain.blocks"), 0, 0)])

    def poll(self, seconds: float) -> int:
        """Read for ``seconds``; returns how many records arrived."""
        before = len(self.records)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            first = self._consumer.poll(max(0.0, min(0.1, deadline - time.monotonic())))
            if first is None:
                continue
            seen_at_ms = int(time.time() * 1000)
            for message in [first, *self._consumer.consume(500, 0)]:
                record = decode_finalized(message.value)
                self.records.append(Finalized(record.height, record.block.hash,
                                              record.proposed_at_ms, message.timestamp_ms,
                                              seen_at_ms))
        return len(self.records) - before

    def wait_for(self, count: int, timeout_s: float,
                 tick: Callable[[], object] | None = None) -> bool:
        """Read until ``count`` records are in (True) or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        while len(self.records) < count and time.monotonic() < deadline:
            if tick is not None:
                tick()
            self.poll(0.5)
        return len(self.records) >= count

    def close(self) -> None:
        self._consumer.close()


def longest_pause_ms(records: list[Finalized], *, log_time: bool = False) -> int:
    """The longest time between two consecutive finalized blocks as a reader of the chain saw
    them arrive (``log_time``: between their log times, which leaves out a block's delivery
    delayed by the failover); 0 for fewer than two."""
    times = [r.written_at_ms if log_time else r.seen_at_ms for r in records]
    return max((b - a for a, b in itertools.pairwise(times)), default=0)


def rate_and_p99(records: list[Finalized]) -> tuple[float, float]:
    """Blocks per second and the p99 proposal-to-finalized time (ms) of ``records``."""
    if len(records) < 2:
        return 0.0, float("nan")
    span_ms = records[-1].written_at_ms - records[0].written_at_ms
    latencies = sorted(r.written_at_ms - r.proposed_at_ms for r in records)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    return (len(records) - 1) * 1000 / max(span_ms, 1), float(p99)


def integrity(before: list[Finalized], after: list[Finalized]) -> dict[str, int]:
    """``lost``: blocks seen before that are missing or changed after; ``duplicated``: heights
    committed more than once; ``gaps``: heights missing between 1 and the highest."""
    final = {r.height: r.block_hash for r in after}
    counts = Counter(r.height for r in after)
    top = max(counts, default=0)
    return {"lost": sum(1 for r in before if final.get(r.height) != r.block_hash),
            "duplicated": sum(n - 1 for n in counts.values() if n > 1),
            "gaps": sum(1 for h in range(1, top + 1) if h not in counts)}


def replicated_kafka(base: Settings, console: Console) -> LocalCluster:
    """A three-broker cluster of the bench's own (state dir and ports), not started yet."""
    state = Path(base.state_dir).resolve() / "bench-failover"
    start = 22000 + 20 * (zlib.crc32(str(state).encode()) % 200)
    port = free_port_block(6, start=start)
    infra = InfraSettings(kafka_brokers=3, replicated_kafka_port=port,
                          kafka_version=base.infra.kafka_version,
                          java_home=base.infra.java_home)
    settings = Settings(state_dir=state, infra=infra,
                        kafka=KafkaSettings(bootstrap_servers=None))
    return LocalCluster(settings, console=console, jars_from=Path(base.state_dir).resolve())


def network(settings: Settings, root: Path, validators: int = 4) -> Supervisor:
    env = settings.to_env()
    subprocess.run([*CLI, "genesis", "new", "--validators", str(validators), "--accounts", "1",
                    "--sources", "0", "--out", str(root / "net")], check=True,
                   capture_output=True, env={**os.environ, **env})
    ensure_topics(settings)
    specs = [ServiceSpec(f"validator-{i}", (
        *CLI, "validator", "run", "--key", str(root / "net" / "keys" / f"validator-{i}.json"),
        "--genesis", str(root / "net" / "genesis.json"), "--block-interval-ms", "0"), env=env)
        for i in range(validators)]
    specs.append(ServiceSpec("tally", (*CLI, "tally", "run", "--genesis",
                                       str(root / "net" / "genesis.json")), env=env))
    return Supervisor(specs, root / "logs", max_restarts=3)


def main() -> None:
    console = Console(stderr=True)
    steady_s = float(os.environ.get("QUSTREAM_BENCH_SECONDS", "20"))
    fault_s = float(os.environ.get("QUSTREAM_BENCH_FAULT_SECONDS", "30"))
    cluster = replicated_kafka(load_settings(), console)
    cluster.reset(("kafka",))
    cluster.up(("kafka",))
    settings = Settings(state_dir=cluster.state_dir, topic_prefix=f"fo{uuid.uuid4().hex[:6]}.",
                        kafka=KafkaSettings(bootstrap_servers=cluster.kafka_bootstrap,
                                            replication_factor=3))
    result: dict[str, object] = {"bench": "failover"}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            supervisor = network(settings, Path(tmp))
            supervisor.start()
            log = FinalizedLog(settings)
            try:
                if not log.wait_for(5, 240, supervisor.tick):
                    raise SystemExit("the network did not finalize 5 blocks in 240 s")
                warm = len(log.records)
                steady_end = time.monotonic() + steady_s
                while time.monotonic() < steady_end:
                    supervisor.tick()
                    log.poll(0.5)
                steady = log.records[warm:]
                rate, p99 = rate_and_p99(steady)
                console.print(f"steady: {len(steady)} blocks, {rate:.2f} blocks/s, "
                              f"p99 {p99:.0f} ms, longest pause {longest_pause_ms(steady)} ms")

                before = list(log.records)
                leader = partition_leader(settings.kafka_bootstrap(),
                                          settings.topic("chain.consensus"))
                cluster.kill(f"kafka-{leader}")
                console.print(f"killed kafka-{leader}, the leader of chain.consensus")
                fault_end = time.monotonic() + fault_s
                while time.monotonic() < fault_end:
                    supervisor.tick()
                    log.poll(0.5)
                # Measured before the restart, while the log was being read all along.
                fault = log.records[len(before) - 1:]
                during = len(fault) - 1
                pause = longest_pause_ms(fault)
                pause_log_time = longest_pause_ms(fault, log_time=True)
                cluster.up(("kafka",))
                wait_in_sync(cluster, ("kafka",), 180)
                log.poll(5)
                console.print(f"after the kill: {during} blocks while kafka-{leader} was down, "
                              f"longest pause {pause} ms (election bound "
                              f"{kafka_failover_bound_ms()} ms)")
            finally:
                supervisor.stop(grace_s=10)
                log.poll(3)
                log.close()
            after = FinalizedLog(settings)
            try:
                after.poll(5)
            finally:
                after.close()
            restarts = sum(s.restarts for s in supervisor.status())
            result.update({
                "blocks_per_s_steady": round(rate, 2),
                "p99_ms_steady": round(p99, 1),
                "max_pause_ms_leader_kill": pause,
                **integrity(before, after.records),
                "max_pause_ms_leader_kill_log_time": pause_log_time,
                "max_pause_ms_steady": longest_pause_ms(steady),
                "blocks_while_leader_down": during,
                "election_bound_ms": kafka_failover_bound_ms(),
                "ratio_pause_to_bound": round(pause / kafka_failover_bound_ms(), 2),
                "ratio_pause_to_steady_p99": round(pause / p99, 1) if p99 else None,
                "service_restarts": restarts,
            })
    finally:
        cluster.down(("kafka",))
    emit(result)


if __name__ == "__main__":
    main()
