"""The gateway starts from the newest usable state snapshot, not from genesis (issue 17).

300 signed blocks are made locally with a snapshot after every 100th (``make_local_chain``), and
written with the snapshots' chunks to fresh topics. The snapshot after 300 cannot be used yet
(block 301 does not exist, so nothing verified commits to its state): the gateway takes the one
after 200, verifies block 201 from the genesis (light, skipping verification) and folds from
there. What it serves agrees with the chain, and its ledger view is the chain's final state."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
from confluent_kafka import Producer

from sdk.beacon import verify_pulse_proof
from sdk.subscriber import TrustedCheckpoint
from sdk.testing import LocalChain, make_local_chain
from streams.admin import ensure_topics
from streams.chain_wire import decode_finalized, encode_snapshot_chunks
from streams.settings import Settings
from tests.integration.test_chain_e2e import CLI

ROOT = Path(__file__).resolve().parents[2]


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _publish(settings: Settings, chain: LocalChain) -> Producer:
    """The chain's blocks on chain.blocks and its snapshots' chunks on chain.snapshots."""
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                         "enable.idempotence": True})
    for raw in chain.records:
        producer.produce(settings.topic("chain.blocks"), raw, partition=0)
    for snapshot in chain.snapshots:
        for key, value in encode_snapshot_chunks(snapshot, "test"):
            producer.produce(settings.topic("chain.snapshots"), value, key)
    assert producer.flush(30) == 0
    return producer


def test_the_gateway_starts_from_the_newest_usable_snapshot(settings: Settings,
                                                            tmp_path: Path) -> None:
    ensure_topics(settings)
    chain = make_local_chain(tmp_path / "chain", 300, snapshot_every=100)
    assert [s.height for s in chain.snapshots] == [100, 200, 300]
    _publish(settings, chain)

    port = _port()
    env = {**os.environ, **settings.to_env(), "QUSTREAM_STATE_DIR": str(tmp_path / "state"),
           "QUSTREAM_GATEWAY_KEYS_FILE": str(tmp_path / "keys.json")}
    process = subprocess.Popen(
        [*CLI, "gateway", "run", "--port", str(port), "--genesis", str(chain.genesis),
         "--no-keys", "--no-users", "--retain-blocks", "1000"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, process.communicate()[0]
            time.sleep(0.2)
        else:
            raise AssertionError("the gateway did not get ready")
        head = httpx.get(f"{base}/v1/chain/head", timeout=5).json()
        last = decode_finalized(chain.records[-1])
        assert head["height"] == 300 and head["hash"] == last.block.hash.hex()
        assert head["state_hash"] == last.state_hash.hex()
        # the window starts right after the snapshot it verified: nothing below was folded
        assert head["first_retained_height"] == 201, head
        block = httpx.get(f"{base}/v1/blocks/250", timeout=5).json()
        assert block["hash"] == decode_finalized(chain.records[249]).block.hash.hex()
        # below the snapshot (never verified here): read from chain.blocks, verified light
        for height in (1, 150, 200):
            answer = httpx.get(f"{base}/v1/blocks/{height}", timeout=10)
            assert answer.status_code == 200, (height, answer.text)
            assert answer.json()["hash"] == decode_finalized(
                chain.records[height - 1]).block.hash.hex()
        validators = httpx.get(f"{base}/v1/validators/150", timeout=10)
        assert validators.status_code == 200, validators.text
        at = decode_finalized(chain.records[119]).block.header.time_ms
        pulse = httpx.get(f"{base}/v1/beacon/at", params={"time": at - 300}, timeout=10)
        assert pulse.status_code == 200, pulse.text
        assert pulse.json()["height"] == 120
        # proofs against a later head: for what it verified since the snapshot, and a typed
        # problem below it (the snapshot's peaks do not hold the blocks inside them)
        trusted = TrustedCheckpoint.from_genesis(chain.genesis).next_validators
        proof = httpx.get(f"{base}/v1/beacon/250/proof", params={"head": 300}, timeout=10)
        assert proof.status_code == 200, proof.text
        assert verify_pulse_proof(proof.json(), trusted).block_hash == decode_finalized(
            chain.records[249]).block.hash
        below = httpx.get(f"{base}/v1/beacon/150/proof", timeout=10)
        assert below.status_code == 410, below.text
        assert below.json()["first_provable_height"] == 202
    finally:
        process.terminate()
        process.wait(20)


def test_chain_snapshots_lists_and_verifies_what_is_on_the_topic(settings: Settings,
                                                                tmp_path: Path) -> None:
    ensure_topics(settings)
    chain = make_local_chain(tmp_path / "chain", 60, snapshot_every=20)
    producer = _publish(settings, chain)
    env = {**os.environ, **settings.to_env(), "QUSTREAM_STATE_DIR": str(tmp_path / "state")}
    done = subprocess.run([*CLI, "chain", "snapshots", "--json", "--genesis",
                           str(chain.genesis)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(done.stdout)["snapshots"]
    assert [(r["height"], r["verified"]) for r in rows] == [(60, False), (40, True), (20, True)]
    assert "not on chain.blocks yet" in rows[0]["reason"]
    # a snapshot that is not the chain's state makes the command fail
    forged = dataclasses.replace(chain.snapshots[0], data=chain.snapshots[1].data)
    producer.produce(settings.topic("chain.snapshots"),
                     encode_snapshot_chunks(forged, "attacker")[0][1],
                     encode_snapshot_chunks(forged, "attacker")[0][0])
    assert producer.flush(30) == 0
    done = subprocess.run([*CLI, "chain", "snapshots", "--genesis", str(chain.genesis)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "no:" in done.stdout, done.stdout + done.stderr
