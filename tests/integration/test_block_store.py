"""The block store on the real Kafka and Cassandra: ``qustream blocks project`` verifies
chain.blocks into Cassandra, survives kill -9, and the gateway serves old blocks and pulses by
time from it, also once Kafka no longer holds them.

Chains are made locally (``sdk.testing.make_local_chain``: consensus would take minutes for as
many blocks) and written to a fresh chain.blocks with garbage, duplicates and a block nobody
signed among them: what anyone who can write the topic can append.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from protocol.codec import WireError
from sdk.beacon import BeaconClient
from sdk.subscriber import TrustedCheckpoint
from sdk.testing import LocalChain, make_local_chain, tamper
from services.block_store.core import chain_key, height_buckets
from services.block_store.projector import BlockProjector
from services.block_store.queries import BlockQueries
from services.ledger.core.chain_spec import ChainSpec
from services.shard_writer.store import drop_keyspace
from streams.admin import ensure_topics
from streams.chain_wire import decode_finalized, encode_snapshot_chunks
from streams.codec import default_codec
from streams.kafka import read_to_end
from streams.settings import Settings
from tests.integration.test_beacon_failover import _free_port
from tests.integration.test_chain_e2e import CLI
from tests.support.gateway_http import wait_for_head

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store_settings(cassandra_settings: Settings, cassandra_session: Any) -> Iterator[Settings]:
    ensure_topics(cassandra_settings)
    yield cassandra_settings
    drop_keyspace(cassandra_session, cassandra_settings.cassandra.keyspace)


def _write(settings: Settings, records: list[bytes]) -> None:
    """Append ``records`` to chain.blocks, each timestamped just after its header time (as the
    tally's would be; garbage gets the broker's time)."""
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                         "enable.idempotence": True, "linger.ms": 20})
    for raw in records:
        try:
            stamp = decode_finalized(raw).block.header.time_ms + 100
        except WireError:
            stamp = 0  # garbage has no header time: 0 is "now"
        producer.produce(settings.topic("chain.blocks"), raw, partition=0, timestamp=stamp)
        producer.poll(0)
    assert producer.flush(60) == 0


def _chain_key(chain: LocalChain) -> str:
    spec = ChainSpec.load(chain.genesis)
    return chain_key(spec.chain_id, spec.initial.tip.previous_block_hash)


def _stored(session: Any, settings: Settings, chain: LocalChain, last: int) -> dict[int, Any]:
    """Every stored block row up to ``last``, by height (from Cassandra, not the archive)."""
    rows: dict[int, Any] = {}
    for bucket, low, high in height_buckets(0, last):
        for row in session.execute(
                f"SELECT * FROM {settings.cassandra.keyspace}.chain_blocks WHERE chain = %s "
                "AND bucket = %s AND height >= %s AND height <= %s",
                (_chain_key(chain), bucket, low, high)):
            assert row.height not in rows
            rows[row.height] = row
    return rows


def _times(session: Any, settings: Settings, chain: LocalChain) -> dict[int, int]:
    """The time index: header time -> height, over every time bucket stored."""
    ks, key = settings.cassandra.keyspace, _chain_key(chain)
    found: dict[int, int] = {}
    for bucket in session.execute(f"SELECT bucket FROM {ks}.chain_time_buckets WHERE chain = %s",
                                  (key,)):
        for row in session.execute(f"SELECT time_ms, height FROM {ks}.chain_block_times "
                                   "WHERE chain = %s AND bucket = %s", (key, bucket.bucket)):
            found[row.time_ms] = row.height
    return found


def _queries(session: Any, settings: Settings, chain: LocalChain) -> BlockQueries:
    return BlockQueries(session, settings.cassandra.keyspace, _chain_key(chain))


def _dead_letters(settings: Settings) -> list[dict[str, Any]]:
    codec = default_codec()
    return [codec.decode(message.value, "MessageDeadLettered")[1]
            for message in read_to_end(settings, settings.topic("dlq.chain"),
                                       f"dlq-check-{time.time_ns()}")]


def _end_offset(settings: Settings) -> int:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                         "group.id": f"end-{time.time_ns()}"})
    try:
        return int(consumer.get_watermark_offsets(
            TopicPartition(settings.topic("chain.blocks"), 0), timeout=10)[1])
    finally:
        consumer.close()


def _run_projector(settings: Settings, spec: ChainSpec, session: Any, *,
                   max_batch: int = 500) -> BlockProjector:
    """One projector run until the topic has been idle for 2 s, closed; returned for its
    stats."""
    projector = BlockProjector.create(settings, spec, session, max_batch=max_batch)
    try:
        projector.run(idle_timeout_s=2)
    finally:
        projector.close()
    return projector


def _assert_stored_as_the_chain(session: Any, settings: Settings, chain: LocalChain,
                                heights: int) -> None:
    rows = _stored(session, settings, chain, heights + 2 * 1000)
    assert sorted(rows) == list(range(1, heights + 1))
    for height, row in rows.items():
        assert row.record == chain.records[height - 1], f"height {height} differs"
        record = decode_finalized(row.record)
        assert (row.block_hash, row.time_ms, row.randomness, row.validators_hash) == (
            record.block.hash, record.block.header.time_ms, record.block.header.randomness,
            record.block.header.validators_hash)
    times = {decode_finalized(raw).block.header.time_ms: h
             for h, raw in enumerate(chain.records[:heights], start=1)}
    assert _times(session, settings, chain) == times


def test_the_projector_stores_what_verifies_dead_letters_the_rest_and_resumes(
        store_settings: Settings, cassandra_session: Any, tmp_path: Path) -> None:
    settings = store_settings
    chain = make_local_chain(tmp_path / "chain", 60)
    spec = ChainSpec.load(chain.genesis)
    unsigned = tamper(chain.records[30], header=lambda h: dataclasses.replace(
        h, time_ms=h.time_ms + 1))  # block 31 with its certificate no longer matching
    _write(settings, [*chain.records[:30], b"garbage", chain.records[9], unsigned,
                      *chain.records[30:40]])

    projector = _run_projector(settings, spec, cassandra_session, max_batch=16)
    assert projector.stats.stored == 40 and projector.stored_height == 40
    _assert_stored_as_the_chain(cassandra_session, settings, chain, 40)
    queries = _queries(cassandra_session, settings, chain)
    assert queries.position() == (40, _end_offset(settings))
    genesis_set = spec.initial.validators
    assert queries.set_changes(0, 100) == [(1, genesis_set.hash())]
    assert queries.validator_set(genesis_set.hash()) == genesis_set
    letters = _dead_letters(settings)
    assert [(d["offset"], d["error_type"]) for d in letters] == [
        (30, "WireError"), (32, "FollowError")]
    assert letters[1]["value"] == unsigned

    # A restart verifies up to the stored position again and writes nothing stored before.
    _write(settings, list(chain.records[40:]))
    again = _run_projector(settings, spec, cassandra_session, max_batch=16)
    assert again.stats.verified == 60 and again.stats.stored == 20
    assert again.stats.statements == 20 * 3  # block, time, time bucket: no set change
    assert len(_dead_letters(settings)) == 2
    _assert_stored_as_the_chain(cassandra_session, settings, chain, 60)
    assert queries.position() == (60, _end_offset(settings))


def _project(settings: Settings, genesis: Path, log: Path, *extra: str
             ) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*CLI, "blocks", "project", "--genesis", str(genesis), *extra],
                            env={**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)},
                            cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def test_kill_9_at_any_instant_then_restart_stores_every_height_once(
        store_settings: Settings, cassandra_session: Any, tmp_path: Path) -> None:
    settings = store_settings
    heights = 1500
    chain = make_local_chain(tmp_path / "chain", heights)
    _write(settings, list(chain.records))
    queries = None
    rng = random.Random(17)
    log = tmp_path / "projector.log"
    for kill_at in (200, 700, 1200):
        process = _project(settings, chain.genesis, log, "--max-batch", "20")
        deadline = time.monotonic() + 180
        try:
            while True:
                assert process.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the projector made no progress"
                if queries is None:
                    try:
                        queries = _queries(cassandra_session, settings, chain)
                    except Exception:  # the tables are not there yet
                        time.sleep(0.1)
                        continue
                position = queries.position()
                if position is not None and position[0] >= kill_at:
                    break
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.2))  # anywhere in the batch that follows
        finally:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(30)
    assert queries is not None
    stopped_at = queries.position()
    assert stopped_at is not None and stopped_at[0] < heights, "killed after the end"
    final = _project(settings, chain.genesis, log, "--idle-exit-s", "3")
    assert final.wait(300) == 0, log.read_text()[-3000:]
    _assert_stored_as_the_chain(cassandra_session, settings, chain, heights)
    assert queries.position() == (heights, _end_offset(settings))
    assert _dead_letters(settings) == []
    assert "stored up to height 1500" in log.read_text()


def _gateway(settings: Settings, genesis: Path, port: int, logs: Path, *extra: str
             ) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT),
           "QUSTREAM_GATEWAY_KEYS_FILE": str(logs / f"keys-{port}.json")}
    return subprocess.Popen([*CLI, "gateway", "run", "--host", "127.0.0.1", "--port", str(port),
                             "--genesis", str(genesis), "--no-keys", "--no-users",
                             "--retain-blocks", "20", "--public-rps", "1000",
                             "--public-burst", "2000", *extra],
                            env=env, cwd=ROOT, stdout=(logs / f"gateway-{port}.log").open("wb"),
                            stderr=subprocess.STDOUT)


def test_the_gateway_serves_old_blocks_and_pulses_by_time_from_the_store(
        store_settings: Settings, cassandra_session: Any, tmp_path: Path) -> None:
    """Both gateways keep 20 blocks in memory; once Kafka no longer holds the first 250
    blocks, the one with the store still serves them (checked), the other answers 410."""
    settings = store_settings
    heights = 300
    chain = make_local_chain(tmp_path / "chain", heights)
    records = [decode_finalized(raw) for raw in chain.records]
    _write(settings, list(chain.records))
    _run_projector(settings, ChainSpec.load(chain.genesis), cassandra_session)
    ports = [_free_port(), _free_port()]
    gateways = [_gateway(settings, chain.genesis, ports[0], tmp_path, "--block-store"),
                _gateway(settings, chain.genesis, ports[1], tmp_path)]
    stored, kafka_only = (f"http://127.0.0.1:{port}" for port in ports)
    try:
        for url in (stored, kafka_only):
            wait_for_head(url, heights, 120)
        admin = AdminClient(settings.kafka_config())
        for future in admin.delete_records(
                [TopicPartition(settings.topic("chain.blocks"), 0, 250)]).values():
            future.result(30)  # retention took blocks 1..250 off chain.blocks

        block = httpx.get(f"{stored}/v1/blocks/1", timeout=30)
        assert block.status_code == 200, block.text
        assert block.json()["hash"] == records[0].block.hash.hex()
        assert block.json()["commit"]["signed_power"] == 40_000
        assert httpx.get(f"{kafka_only}/v1/blocks/1", timeout=30).status_code == 410

        moment = records[99].block.header.time_ms - 1  # between blocks 99 and 100
        pulse = httpx.get(f"{stored}/v1/beacon/at", params={"time": moment}, timeout=30)
        assert pulse.status_code == 200, pulse.text
        assert pulse.json()["height"] == 100
        assert pulse.json()["randomness"] == records[99].block.header.randomness.hex()
        assert httpx.get(f"{kafka_only}/v1/beacon/at", params={"time": moment},
                         timeout=30).status_code == 410
        assert httpx.get(f"{stored}/v1/validators/7", timeout=30).json()["hash"] == \
            records[6].block.header.validators_hash.hex()
        page = httpx.get(f"{stored}/v1/blocks", params={"from": 240, "limit": 20},
                         timeout=30).json()
        assert [b["hash"] for b in page["blocks"]] == \
            [r.block.hash.hex() for r in records[239:259]]

        # the SDK verifies 300 pulses from the store and the window, one certificate a page
        client = BeaconClient([stored], checkpoint=TrustedCheckpoint.from_genesis(chain.genesis),
                              timeout_s=30)
        assert [p.randomness for p in client.range(1, heights)] == \
            [r.block.header.randomness for r in records]
        assert client.at_or_after(records[4].block.header.time_ms).height == 5

        # a row changed in Cassandra is refused, never served (and Kafka no longer has it)
        forged = tamper(chain.records[8], header=lambda h: dataclasses.replace(
            h, time_ms=h.time_ms + 1))
        cassandra_session.execute(
            f"UPDATE {settings.cassandra.keyspace}.chain_blocks USING TIMESTAMP 10 "
            "SET record = %s WHERE chain = %s AND bucket = 0 AND height = 9",
            (forged, _chain_key(chain)))
        refused = httpx.get(f"{stored}/v1/blocks/9", timeout=30)
        assert refused.status_code == 410, refused.text
    finally:
        for process in gateways:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def test_a_restarted_projector_starts_from_a_snapshot_below_its_position(
        store_settings: Settings, cassandra_session: Any, tmp_path: Path) -> None:
    """With snapshots on chain.snapshots, a restart re-verifies from the newest one at or below
    the stored height, not from genesis; nothing is stored twice or left out."""
    settings = store_settings
    chain = make_local_chain(tmp_path / "chain", 300, snapshot_every=100)
    spec = ChainSpec.load(chain.genesis)
    _write(settings, list(chain.records[:250]))
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    for snapshot in chain.snapshots[:2]:  # after 100 and 200, as the tally would have written
        for key, value in encode_snapshot_chunks(snapshot, "test"):
            producer.produce(settings.topic("chain.snapshots"), value, key)
    assert producer.flush(30) == 0

    first = _run_projector(settings, spec, cassandra_session, max_batch=64)
    assert first.stats.stored == 250
    assert first.start_report.snapshot_height is None  # nothing stored yet: from genesis

    _write(settings, list(chain.records[250:]))
    again = _run_projector(settings, spec, cassandra_session, max_batch=64)
    assert again.start_report.snapshot_height == 200, again.start_report.describe()
    assert again.stats.verified == 100 and again.stats.stored == 50
    _assert_stored_as_the_chain(cassandra_session, settings, chain, 300)
