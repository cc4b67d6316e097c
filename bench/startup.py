"""Start-up against a long history: does a reader's first answer grow with the chain?

One chain of 5N blocks signed by four ML-DSA-65 validators is made locally
(``sdk.testing.make_local_chain``: consensus would take hours for as many), and its first N
blocks and all 5N are written to two fresh ``chain.blocks`` topics on the bench cluster
(``QUSTREAM_*`` settings; ``qustream infra up`` starts one). For each topic, timed from process
start, each process on its own:

- ``chain_head``: ``qustream chain head --json`` with an empty state directory, a newcomer's
  first call: light verification from the genesis (``services.consensus.light_reads``);
- ``chain_head_full`` (the baseline, the fold every reader did before): ``--full``;
- ``gateway``: ``qustream gateway run`` (no keys, no users) until ``/readyz`` answers 200.

Not measured yet: a restarted validator until its first vote (that needs the rest of a live
network on this history), so ``validator_s_*`` are null.

Last line, one JSON object: the seconds of each at N and 5N, ``growth`` (the largest 5N/N ratio
of ``chain_head`` and ``gateway``; the target is <= 1.3), and ``ratio`` = chain_head / the full
fold at 5N.

    python -m bench.startup [--n 2000]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from confluent_kafka import Producer
from rich.console import Console

from bench.common import emit, scratch_kafka
from protocol.keys import Algorithm
from sdk.testing import LocalChain, make_local_chain
from streams.admin import ensure_topics
from streams.settings import Settings, load_settings

CLI = (sys.executable, "-m", "streams.cli")


def _write(settings: Settings, records: tuple[bytes, ...]) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                         "enable.idempotence": True, "linger.ms": 20})
    topic = settings.topic("chain.blocks")
    for raw in records:
        producer.produce(topic, raw, partition=0)
        producer.poll(0)
    assert producer.flush(60) == 0


def _env(settings: Settings, state: Path) -> dict[str, str]:
    return {**os.environ, **settings.to_env(), "QUSTREAM_STATE_DIR": str(state)}


def _chain_head(settings: Settings, genesis: Path, *extra: str) -> float:
    with tempfile.TemporaryDirectory() as state:
        started = time.perf_counter()
        done = subprocess.run([*CLI, "chain", "head", "--json", "--genesis", str(genesis),
                               *extra], env=_env(settings, Path(state)), capture_output=True,
                              text=True, timeout=3600)
        took = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"chain head {extra} failed: {done.stderr[-2000:]}")
    return took


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _gateway(settings: Settings, genesis: Path) -> float:
    port = _free_port()
    with tempfile.TemporaryDirectory() as state:
        started = time.perf_counter()
        process = subprocess.Popen(
            [*CLI, "gateway", "run", "--host", "127.0.0.1", "--port", str(port), "--genesis",
             str(genesis), "--no-keys", "--no-users"],
            env={**_env(settings, Path(state)),
                 "QUSTREAM_GATEWAY_KEYS_FILE": str(Path(state) / "keys.json")},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while process.poll() is None and time.perf_counter() - started < 3600:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code \
                            == 200:
                        return time.perf_counter() - started
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
            raise RuntimeError(f"the gateway did not get ready (exit {process.poll()})")
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="N: chains of N and 5N blocks")
    args = parser.parse_args()
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory() as folder:
        with console.status(f"signing {5 * args.n} blocks with ML-DSA-65 validators ..."):
            chain: LocalChain = make_local_chain(Path(folder), 5 * args.n,
                                                 algorithm=Algorithm.ML_DSA_65)
        results: dict[str, float | None] = {}
        base = load_settings()
        for label, count in (("n", args.n), ("5n", 5 * args.n)):
            with scratch_kafka(base) as settings:
                ensure_topics(settings)
                with console.status(f"writing {count} blocks"):
                    _write(settings, chain.records[:count])
                for name, measure in (
                        ("chain_head", lambda s=settings: _chain_head(s, chain.genesis)),
                        ("chain_head_full",
                         lambda s=settings: _chain_head(s, chain.genesis, "--full")),
                        ("gateway", lambda s=settings: _gateway(s, chain.genesis))):
                    with console.status(f"{name} over {count} blocks"):
                        results[f"{name}_s_{label}"] = round(measure(), 3)
                    console.print(f"{name} over {count} blocks: "
                                  f"{results[f'{name}_s_{label}']} s")
    growth = max(results[f"{name}_s_5n"] / results[f"{name}_s_n"]  # type: ignore[operator]
                 for name in ("chain_head", "gateway"))
    emit({"bench": "startup", "n": args.n, "validator_s_n": None, "validator_s_5n": None,
          "gateway_s_n": results["gateway_s_n"], "gateway_s_5n": results["gateway_s_5n"],
          "chain_head_s_n": results["chain_head_s_n"],
          "chain_head_s_5n": results["chain_head_s_5n"],
          "chain_head_full_s_n": results["chain_head_full_s_n"],
          "chain_head_full_s_5n": results["chain_head_full_s_5n"],
          "growth": round(growth, 3),
          "ratio": round(results["chain_head_s_5n"]  # type: ignore[operator]
                         / results["chain_head_full_s_5n"], 3),  # type: ignore[operator]
          "load_1m": round(os.getloadavg()[0], 2)})


if __name__ == "__main__":
    main()
