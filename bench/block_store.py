"""Old blocks and pulses by time through the gateway: from the block store vs from Kafka.

One chain of 5N blocks is made locally (``sdk.testing.make_local_chain``, ML-DSA-65 validators
unless ``--ed25519``); its first N blocks, then all 5N, are written to fresh ``chain.blocks``
topics on the bench cluster (``QUSTREAM_*`` settings; ``qustream infra up`` starts one) and
projected into a fresh keyspace by the block projector (``services.block_store``, timed:
``project_s``). For each size two ``qustream gateway run`` processes keep ``RETAIN`` blocks in
memory and follow the topic: ``store`` reads older blocks from the block store, ``kafka`` (the
baseline, what every gateway did before) from ``chain.blocks`` at the offsets it verified and
by Kafka's time index. Measured, per gateway, as a client sees it (HTTP on loopback):

- ``block1``: the first ``GET /v1/blocks/1`` (nothing cached);
- ``block``: ``GET /v1/blocks/{h}`` for ``--samples`` distinct heights older than the window,
  each asked once (documents are cached per height), the two gateways interleaved (store,
  kafka, kafka, store ...) so a change of the machine's load weighs on both alike: p50, p95;
- ``pulse``: ``GET /v1/beacon/at?time=T`` for as many distinct times between old blocks.

Last line, one JSON object: milliseconds of each at N and 5N, ``ratio`` (store / kafka, the p50
of ``block`` at 5N) and ``growth`` (store at 5N / store at N, the p50 of ``block``; 1.0 is a
cost independent of the chain's length). Topics, groups and the keyspace are deleted at the end.

    python -m bench.block_store [--n 2000] [--samples 100] [--ed25519]
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Producer
from rich.console import Console

from bench.common import emit, scratch_kafka
from protocol.keys import Algorithm
from sdk.testing import LocalChain, make_local_chain
from services.block_store.projector import BlockProjector
from services.ledger.core.chain_spec import ChainSpec
from services.shard_writer.store import connect, drop_keyspace
from streams.admin import ensure_topics
from streams.chain_wire import decode_finalized
from streams.settings import Settings, load_settings
from tests.support.gateway_http import wait_for_head

CLI = (sys.executable, "-m", "streams.cli")
RETAIN = 100


def _write(settings: Settings, records: tuple[bytes, ...]) -> None:
    """Append ``records``, each timestamped just after its header time (as the tally's are)."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap(),
                         "enable.idempotence": True, "linger.ms": 20})
    topic = settings.topic("chain.blocks")
    for raw in records:
        producer.produce(topic, raw, partition=0,
                         timestamp=decode_finalized(raw).block.header.time_ms + 100)
        producer.poll(0)
    assert producer.flush(60) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _gateway(settings: Settings, genesis: Path, state: Path, store: bool
             ) -> tuple[str, subprocess.Popen[bytes]]:
    port = _free_port()
    env = {**os.environ, **settings.to_env(), "QUSTREAM_STATE_DIR": str(state),
           "QUSTREAM_CASSANDRA_KEYSPACE": settings.cassandra.keyspace,
           "QUSTREAM_GATEWAY_KEYS_FILE": str(state / f"keys-{port}.json")}
    process = subprocess.Popen(
        [*CLI, "gateway", "run", "--host", "127.0.0.1", "--port", str(port), "--genesis",
         str(genesis), "--no-keys", "--no-users", "--retain-blocks", str(RETAIN),
         "--public-rps", "100000", "--public-burst", "100000",
         "--block-store" if store else "--no-block-store"],
        env=env, stdout=subprocess.DEVNULL, stderr=(state / f"gateway-{port}.log").open("wb"))
    return f"http://127.0.0.1:{port}", process


def _timed_get(client: httpx.Client, url: str, field: str, expected: object) -> float:
    """Milliseconds for ``GET url``, which must answer 200 with ``expected`` as ``field``."""
    started = time.perf_counter()
    response = client.get(url)
    took = (time.perf_counter() - started) * 1000
    if response.status_code != 200 or response.json().get(field) != expected:
        raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")
    return took


def _measure(settings: Settings, chain: LocalChain, count: int, samples: int,
             console: Console) -> dict[str, float]:
    """Project ``count`` blocks, start both gateways, and time their answers."""
    headers = [decode_finalized(raw).block for raw in chain.records[:count]]
    with console.status(f"writing {count} blocks"):
        _write(settings, chain.records[:count])
    cluster, session = connect(settings)
    results: dict[str, float] = {}
    try:
        with console.status(f"projecting {count} blocks into the block store"):
            started = time.perf_counter()
            projector = BlockProjector.create(settings, ChainSpec.load(chain.genesis), session)
            try:
                while projector.stored_height < count:
                    projector.run_once()
            finally:
                projector.close()
            results["project_s"] = round(time.perf_counter() - started, 3)
        with tempfile.TemporaryDirectory() as folder:
            gateways = {name: _gateway(settings, chain.genesis, Path(folder), name == "store")
                        for name in ("store", "kafka")}
            try:
                with console.status(f"both gateways verifying {count} blocks"):
                    for url, process in gateways.values():
                        wait_for_head(url, count, 3600, process=process, poll_s=0.2)
                results.update(_ask(gateways, headers, samples))
            finally:
                for _, process in gateways.values():
                    process.terminate()
                    try:
                        process.wait(20)
                    except subprocess.TimeoutExpired:
                        process.kill()
    finally:
        drop_keyspace(session, settings.cassandra.keyspace)
        cluster.shutdown()
    return results


def _ask(gateways: dict[str, tuple[str, subprocess.Popen[bytes]]], blocks: list[Any],
         samples: int) -> dict[str, float]:
    """The timings of ``_measure`` (module doc), interleaved store/kafka/kafka/store."""
    old = len(blocks) - RETAIN  # heights 1..old are older than the window
    rng = random.Random(7)
    heights = rng.sample(range(2, old + 1), min(samples, old - 1))
    times = [blocks[h - 1].header.time_ms - rng.randrange(1, 500) for h in
             rng.sample(range(2, old + 1), min(samples, old - 1))]
    expected = {b.header.time_ms: b.height for b in blocks}
    timings: dict[str, list[float]] = {f"{name}_{what}": [] for name in gateways
                                       for what in ("block", "pulse")}
    out: dict[str, float] = {}
    with httpx.Client(timeout=60) as client:
        for name, (url, _) in gateways.items():
            out[f"{name}_block1_ms"] = round(_timed_get(
                client, f"{url}/v1/blocks/1", "hash", blocks[0].hash.hex()), 2)
        for index, (height, moment) in enumerate(zip(heights, times, strict=False)):
            order = list(gateways) if index % 2 == 0 else list(reversed(gateways))
            for name in order:
                url = gateways[name][0]
                timings[f"{name}_block"].append(_timed_get(
                    client, f"{url}/v1/blocks/{height}", "hash",
                    blocks[height - 1].hash.hex()))
                timings[f"{name}_pulse"].append(_timed_get(
                    client, f"{url}/v1/beacon/at?time={moment}", "height",
                    expected[min(t for t in expected if t >= moment)]))
    for key, values in timings.items():
        values.sort()
        out[f"{key}_p50_ms"] = round(statistics.median(values), 2)
        out[f"{key}_p95_ms"] = round(values[min(len(values) - 1, int(len(values) * 0.95))], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="N: chains of N and 5N blocks")
    parser.add_argument("--samples", type=int, default=100,
                        help="distinct old heights (and times) asked of each gateway")
    parser.add_argument("--ed25519", action="store_true",
                        help="Ed25519 validators (faster to make and verify; default ML-DSA-65)")
    args = parser.parse_args()
    if args.n <= RETAIN + 2:
        parser.error(f"--n must exceed the gateways' window of {RETAIN} blocks")
    console = Console(stderr=True)
    algorithm = Algorithm.ED25519 if args.ed25519 else Algorithm.ML_DSA_65
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        with console.status(f"signing {5 * args.n} blocks ({algorithm.value} validators)"):
            chain = make_local_chain(Path(folder), 5 * args.n, algorithm=algorithm)
        base = load_settings()
        for label, count in (("n", args.n), ("5n", 5 * args.n)):
            with scratch_kafka(base) as settings:
                settings.cassandra.keyspace = f"bench_blocks_{uuid.uuid4().hex[:10]}"
                ensure_topics(settings)
                measured = _measure(settings, chain, count, args.samples, console)
            console.print(f"{count} blocks: {measured}")
            results.update({f"{key}_{label}": value for key, value in measured.items()})
    emit({"bench": "block_store", "n": args.n, "samples": args.samples,
          "algorithm": algorithm.value, "retain": RETAIN, **results,
          "ratio": round(results["store_block_p50_ms_5n"] / results["kafka_block_p50_ms_5n"], 3),
          "growth": round(results["store_block_p50_ms_5n"] / results["store_block_p50_ms_n"], 3),
          "load_1m": round(os.getloadavg()[0], 2)})


if __name__ == "__main__":
    main()
