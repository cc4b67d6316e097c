"""Start-up against a long history: does a node's first answer grow with the chain?

One chain of 5N blocks signed by four ML-DSA-65 validators is made locally
(``sdk.testing.make_local_chain``: consensus would take hours for as many), with the state
snapshot the tally writes after every ``--interval`` heights (the genesis parameter
``snapshot_interval_blocks``, 1,000 by default as in a new genesis). Its first N blocks and all
5N are written to two fresh ``chain.blocks`` topics on the bench cluster (``QUSTREAM_*``
settings; ``qustream infra up`` starts one), each with the newest three snapshots up to there on
``chain.snapshots`` (what the tally keeps). For each topic, timed from process start, each
process on its own with an empty state directory:

- ``validator``: ``qustream validator run`` with a key of the chain (one that does not propose
  the next height), until its first prevote for height N+1 (5N+1) is on ``chain.consensus``;
  the bench plays the rest of the network and has already written that height's proposal;
- ``validator_full`` (its baseline): the same with ``--from-genesis``, the fold every node did
  before snapshots;
- ``gateway``: ``qustream gateway run`` (no keys, no users) until ``/readyz`` answers 200;
- ``chain_head``: ``qustream chain head --json``, a newcomer's first call: light verification
  from the genesis (``services.consensus.light_reads``);
- ``chain_head_full`` (baseline): ``--full``.

Last line, one JSON object: the seconds of each at N and 5N, ``growth`` (the largest 5N/N ratio
of ``validator``, ``gateway`` and ``chain_head``; the target is <= 1.3), ``ratio`` =
validator / validator_full at 5N, and ``ratio_chain_head`` = chain_head / chain_head_full at 5N.

    python -m bench.startup [--n 2000] [--interval 1000]
"""

from __future__ import annotations

import argparse
import dataclasses
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
from protocol.keys import Algorithm, SigningKey
from protocol.messages import Vote, VoteType
from protocol.proposal import Proposal
from protocol.proposer import proposer
from protocol.snapshot import restore
from sdk.testing import LocalChain, make_local_chain
from services.block_builder.core.logic import NodeBlockLogic
from services.block_builder.core.proposal import EntropyRules
from services.block_builder.pool import EntropyPool
from services.consensus.snapshots import KEEP
from services.ledger.core.chain_spec import ChainSpec
from streams.admin import ensure_topics
from streams.chain_wire import decode_consensus, encode_consensus, encode_snapshot_chunks
from streams.codec import default_codec
from streams.kafka import Position, make_consumer
from streams.settings import Settings, load_settings

CLI = (sys.executable, "-m", "streams.cli")


def _write(settings: Settings, chain: LocalChain, count: int) -> None:
    """Blocks 1..count, and the newest ``KEEP`` snapshots at or below ``count``."""
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                         "enable.idempotence": True, "linger.ms": 20})
    topic = settings.topic("chain.blocks")
    for raw in chain.records[:count]:
        producer.produce(topic, raw, partition=0)
        producer.poll(0)
    kept = [s for s in chain.snapshots if s.height <= count][-KEEP:]
    for snapshot in kept:
        for key, value in encode_snapshot_chunks(snapshot, "bench"):
            producer.produce(settings.topic("chain.snapshots"), value, key, partition=0)
    assert producer.flush(60) == 0


def _next_height(settings: Settings, chain: LocalChain, count: int) -> tuple[SigningKey, ...]:
    """Play the network at height count + 1: write its proposal (from the round-0 proposer) to
    chain.consensus; the keys that do not propose it, for the validators to be timed."""
    spec = ChainSpec.load(chain.genesis)
    snapshot = next(s for s in chain.snapshots if s.height == count)
    follower = restore(snapshot, spec.app, spec.app)
    state = follower.chain
    chosen = proposer(follower.priorities, state.validators, 0)
    key = next(k for k in chain.validator_keys if k.address == chosen)
    logic = NodeBlockLogic(state, spec.app, EntropyPool({}).proposer_view(0), (), (),
                           EntropyRules(), int(time.time() * 1000), key.address)
    unsigned = Proposal(count + 1, 0, -1, logic.propose(count + 1, 0), key.address, b"")
    proposal = dataclasses.replace(unsigned, signature=key.sign(unsigned.sign_bytes(
        spec.chain_id)))
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    producer.produce(settings.topic("chain.consensus"),
                     encode_consensus(spec.chain_id, proposal), partition=0)
    assert producer.flush(30) == 0
    return tuple(k for k in chain.validator_keys if k.address != chosen)


def _validator(settings: Settings, chain: LocalChain, key: SigningKey, height: int,
               *extra: str) -> float:
    """Seconds from starting ``qustream validator run`` until its prevote for ``height``."""
    codec = default_codec()
    chain_id = ChainSpec.load(chain.genesis).chain_id
    consumer = make_consumer(settings, f"bench-votes-{time.time_ns()}")
    topic = settings.topic("chain.consensus")
    with tempfile.TemporaryDirectory() as state:
        key_path = Path(state) / "key.json"
        key.save(key_path)
        started = time.perf_counter()
        process = subprocess.Popen(
            [*CLI, "validator", "run", "--key", str(key_path), "--genesis", str(chain.genesis),
             "--state-dir", state, *extra], env=_env(settings, Path(state)),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            consumer.assign([Position(topic, 0, 0)])
            while process.poll() is None and time.perf_counter() - started < 3600:
                record = consumer.poll(0.05)
                if record is None:
                    continue
                message = decode_consensus(record.value, chain_id, codec)
                if (isinstance(message, Vote) and message.vote_type is VoteType.PREVOTE
                        and message.height == height
                        and message.validator_address == key.address):
                    return time.perf_counter() - started
            raise RuntimeError(f"the validator did not vote (exit {process.poll()})")
        finally:
            consumer.close()
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


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
    parser.add_argument("--interval", type=int, default=1000,
                        help="heights between two state snapshots (N must be a multiple)")
    args = parser.parse_args()
    if args.n % args.interval:
        parser.error("--n must be a multiple of --interval")
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory() as folder:
        with console.status(f"signing {5 * args.n} blocks with ML-DSA-65 validators ..."):
            chain: LocalChain = make_local_chain(Path(folder), 5 * args.n,
                                                 algorithm=Algorithm.ML_DSA_65,
                                                 snapshot_every=args.interval)
        results: dict[str, float] = {}
        base = load_settings()
        for label, count in (("n", args.n), ("5n", 5 * args.n)):
            with scratch_kafka(base) as settings:
                ensure_topics(settings)
                with console.status(f"writing {count} blocks"):
                    _write(settings, chain, count)
                    voters = _next_height(settings, chain, count)
                for name, measure in (
                        ("validator", lambda s=settings, c=count, v=voters[0]: _validator(
                            s, chain, v, c + 1)),
                        ("validator_full", lambda s=settings, c=count, v=voters[1]: _validator(
                            s, chain, v, c + 1, "--from-genesis")),
                        ("gateway", lambda s=settings: _gateway(s, chain.genesis)),
                        ("chain_head", lambda s=settings: _chain_head(s, chain.genesis)),
                        ("chain_head_full",
                         lambda s=settings: _chain_head(s, chain.genesis, "--full"))):
                    with console.status(f"{name} over {count} blocks"):
                        results[f"{name}_s_{label}"] = round(measure(), 3)
                    console.print(f"{name} over {count} blocks: "
                                  f"{results[f'{name}_s_{label}']} s")
    growth = max(results[f"{name}_s_5n"] / results[f"{name}_s_n"]
                 for name in ("validator", "gateway", "chain_head"))
    emit({"bench": "startup", "n": args.n, "interval": args.interval,
          **{f"{name}_s_{label}": results[f"{name}_s_{label}"]
             for name in ("validator", "gateway", "chain_head", "validator_full",
                          "chain_head_full") for label in ("n", "5n")},
          "growth": round(growth, 3),
          "ratio": round(results["validator_s_5n"] / results["validator_full_s_5n"], 3),
          "ratio_chain_head": round(results["chain_head_s_5n"]
                                    / results["chain_head_full_s_5n"], 3),
          "load_1m": round(os.getloadavg()[0], 2)})


if __name__ == "__main__":
    main()
