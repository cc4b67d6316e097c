"""Pulses by time, ranges, old blocks and exactly-once failover against real Kafka and two real
gateways.

1,100 correctly signed blocks are made locally (``sdk.testing.make_local_chain``: consensus would
take minutes for as many) and written to a fresh ``chain.blocks`` with the Kafka timestamp the
tally would give them (just after their header time). Two ``qustream gateway run`` processes
follow and verify the topic, each keeping only the last 200 blocks in memory, so older pulses
come back from Kafka (by offset for a height, by Kafka's time index for a time). The SDK:

- verifies a range of 1,000 pulses (five pages of 200 from Kafka, then the window) and time
  lookups older than the window and inside it, through the first gateway's URL;
- follows the chain through a ``FailoverBlockSource`` (gateway A, gateway B, Kafka) while the
  last 100 blocks are written; gateway A is killed mid-stream, later gateway B too (Kafka,
  entered through its time index, serves the rest): every height arrives exactly once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Producer

from sdk.beacon import BeaconClient, FailoverBlockSource, KafkaHeights, SseHeights
from sdk.subscriber import BlockSubscriber, TrustedCheckpoint
from sdk.testing import LocalChain, make_local_chain
from streams.admin import ensure_topics
from streams.chain_wire import decode_finalized
from streams.settings import Settings
from tests.integration.test_chain_e2e import CLI
from tests.support.gateway_http import wait_for_head

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
FIRST_PART = 1000
TOTAL = 1100
RETAIN = 200


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write(settings: Settings, records: tuple[bytes, ...], pace_s: float = 0.0) -> None:
    """Append ``records`` to chain.blocks, each timestamped 100 ms after its header time."""
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                         "enable.idempotence": True})
    topic = settings.topic("chain.blocks")
    for raw in records:
        header_time = decode_finalized(raw).block.header.time_ms
        producer.produce(topic, raw, partition=0, timestamp=header_time + 100)
        if pace_s:
            producer.flush(10)
            time.sleep(pace_s)
    assert producer.flush(30) == 0


def _gateway(settings: Settings, genesis: Path, port: int, logs: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT),
           "QUSTREAM_GATEWAY_KEYS_FILE": str(logs / f"keys-{port}.json")}
    log = (logs / f"gateway-{port}.log").open("wb")
    return subprocess.Popen([*CLI, "gateway", "run", "--host", "127.0.0.1", "--port", str(port),
                             "--genesis", str(genesis), "--no-keys", "--no-users",
                             "--retain-blocks", str(RETAIN), "--heartbeat-s", "0.5",
                             "--public-rps", "1000", "--public-burst", "2000"],
                            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture
def network(settings: Settings, tmp_path: Path) -> Iterator[tuple[LocalChain, list[str],
                                                                  list[subprocess.Popen[bytes]]]]:
    ensure_topics(settings)
    chain = make_local_chain(tmp_path / "chain", TOTAL)
    _write(settings, chain.records[:FIRST_PART])
    ports = [_free_port(), _free_port()]
    gateways = [_gateway(settings, chain.genesis, port, tmp_path) for port in ports]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for url in urls:
            wait_for_head(url, FIRST_PART, 120)
        yield chain, urls, gateways
    finally:
        for process in gateways:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()


def test_time_lookups_a_range_of_1000_and_failover_without_loss_or_repeat(
        settings: Settings, network: tuple[LocalChain, list[str],
                                           list[subprocess.Popen[bytes]]]) -> None:
    chain, urls, gateways = network
    anchor = TrustedCheckpoint.from_genesis(chain.genesis)
    records = [decode_finalized(raw) for raw in chain.records]

    client = BeaconClient(urls, checkpoint=anchor, timeout_s=30)
    pulses = client.range(1, FIRST_PART)
    assert [p.height for p in pulses] == list(range(1, FIRST_PART + 1))
    assert [p.randomness for p in pulses] == [r.block.header.randomness
                                              for r in records[:FIRST_PART]]
    old = records[99].block.header.time_ms  # far older than the window: Kafka's time index
    assert client.at_or_after(old).height == 100
    assert client.at_or_after(old - 1).height == 100
    assert client.previous(old).height == 99 and client.next(old).height == 101
    recent = records[949].block.header.time_ms  # inside the window
    assert client.at_or_after(recent).height == 950
    assert client.at_height(10).height == 10
    # Blocks older than the window come back from Kafka too (no 410), the verified record.
    old_block = httpx.get(f"{urls[0]}/v1/blocks/1", timeout=30)
    assert old_block.status_code == 200, old_block.text
    assert old_block.json()["hash"] == records[0].block.hash.hex()
    assert old_block.json()["commit"]["signed_power"] == 40_000
    page = httpx.get(f"{urls[0]}/v1/blocks", params={"from": 5, "limit": 3}, timeout=30).json()
    assert [b["hash"] for b in page["blocks"]] == [r.block.hash.hex() for r in records[4:7]]
    assert httpx.get(f"{urls[0]}/v1/validators/2", timeout=30).json()["hash"] == \
        records[1].block.header.validators_hash.hex()

    # Follow from height 950 while the last 100 blocks arrive; kill gateway A mid-stream.
    start = records[949]
    checkpoint = TrustedCheckpoint(start.chain_id, start.height, start.block.hash,
                                   start.block.header.randomness, start.block.header.time_ms,
                                   anchor.next_validators)
    failover = FailoverBlockSource([("gateway-a", SseHeights(urls[0], timeout_s=5)),
                                    ("gateway-b", SseHeights(urls[1], timeout_s=5)),
                                    ("kafka", KafkaHeights(settings))], pause_s=0.2,
                                   after_time_ms=checkpoint.time_ms)
    subscriber = BlockSubscriber(failover, checkpoint=checkpoint,
                                 resume_after=(start.height, start.height))
    writer = threading.Thread(target=_write, args=(settings, chain.records[FIRST_PART:], 0.05),
                              daemon=True)
    heights: list[int] = []
    readers: dict[int, str] = {}
    writer.start()
    for block in subscriber:
        heights.append(block.height)
        readers[block.height] = failover.reading
        if block.height == FIRST_PART + 20:
            gateways[0].kill()  # the gateway being read
            gateways[0].wait(10)
        if block.height == FIRST_PART + 60:
            # the SDK's URL list skips the dead gateway for lookups too
            assert client.at_height(FIRST_PART + 60).height == FIRST_PART + 60
            assert client.reading == urls[1]
            gateways[1].kill()  # and then the other: Kafka, entered by its time index
            gateways[1].wait(10)
        if block.height == TOTAL:
            break
    writer.join(30)
    client.close()
    assert heights == list(range(start.height + 1, TOTAL + 1))  # none missed, none repeated
    assert readers[start.height + 1] == "gateway-a"
    assert readers[FIRST_PART + 40] == "gateway-b" and readers[TOTAL] == "kafka"
    assert failover.switches >= 2
