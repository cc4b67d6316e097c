"""qrng_ingest against the real Kafka: publish + verify, faults, kill -9 and resume, forgeries."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from protocol.entropy.chain import Checkpoint, CheckpointPolicy, Chunk, extend
from protocol.entropy.registry import SourceRegistry, SourceRegistryEntry
from protocol.entropy.verifier import (
    BadSignatureError,
    ChainVerifier,
    ConflictingChunkError,
    DuplicateChunkError,
    EntropyRejectedError,
)
from protocol.keys import SigningKey
from services.qrng_ingest.core.health import HealthParameters, RctCarry, check_block
from services.qrng_ingest.core.liveness import LivenessPolicy
from services.qrng_ingest.monitor import StatusBoard
from services.qrng_ingest.service import IngestConfig, build_service
from services.qrng_ingest.sources import FaultSource, SimulatorSource
from streams.admin import ensure_topics
from streams.codec import default_codec
from streams.dlq import DeadLetters
from streams.kafka import Position, Record, make_consumer, make_producer, make_reader
from streams.settings import Settings

pytestmark = pytest.mark.integration

CHUNK = 64 * 1024
REPO = Path(__file__).resolve().parents[2]


def _read_all(settings: Settings, topic: str, idle_s: float = 3.0) -> list[Record]:
    """Every record of a topic, all partitions, in partition order (any consumer error
    fails the test: ``make_reader``)."""
    consumer = make_reader(settings, f"qrng-test-{time.time_ns()}",
                           **{"isolation.level": "read_uncommitted"})
    try:
        ends = {partition: consumer.watermarks(topic, partition, 30)[1]
                for partition in consumer.partitions(topic)}
        consumer.assign([Position(topic, p, 0) for p in ends])
        messages: list[Record] = []
        positions = dict.fromkeys(ends, 0)
        deadline = time.monotonic() + 120
        last = time.monotonic()
        while any(positions[p] < ends[p] for p in ends) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                if time.monotonic() - last > idle_s and not any(
                        positions[p] < ends[p] for p in ends):
                    break
                continue
            positions[message.partition] = message.offset + 1
            messages.append(message)
            last = time.monotonic()
        return messages
    finally:
        consumer.close()


def _decode(messages: list[Record]) -> list[tuple[str, object]]:
    codec = default_codec()
    out: list[tuple[str, object]] = []
    for message in messages:
        decoded = codec.decode(message.value)
        if decoded.schema == "EntropyChunkPublished":
            out.append((decoded.schema, Chunk.from_record(decoded.record)))
        elif decoded.schema == "EntropyCheckpointSigned":
            out.append((decoded.schema, Checkpoint.from_record(decoded.record)))
        else:
            out.append((decoded.schema, decoded.record))
    return out


def _verify(registry: SourceRegistry, items: list[tuple[str, object]]) -> list[Chunk]:
    verifier = ChainVerifier(registry, allow_mid_stream=False)
    verified: list[Chunk] = []
    for schema, item in items:
        if schema == "EntropyChunkPublished":
            assert isinstance(item, Chunk)
            verifier.accept_chunk(item)
        else:
            assert isinstance(item, Checkpoint)
            verified.extend(verifier.accept_checkpoint(item))
    return verified


def _config(source_id: str, **overrides: object) -> IngestConfig:
    values: dict[str, object] = dict(
        source_id=source_id, chunk_size=CHUNK, alpha_exponent=30, recovery_windows=256,
        checkpoint=CheckpointPolicy(every_chunks=8, every_ms=200), heartbeat_ms=200,
        liveness=LivenessPolicy(stall_after_ms=60_000))
    values.update(overrides)
    return IngestConfig(**values)  # type: ignore[arg-type]


def test_simulated_source_publishes_verifiable_gapless_chains(settings: Settings) -> None:
    ensure_topics(settings)
    key = SigningKey.generate()
    registry = SourceRegistry([SourceRegistryEntry("sim-1", key.public_key, simulated=True)])
    service = build_service(settings, _config("sim-1", private_share=0.25), SimulatorSource(),
                            key)
    report = service.run(max_bytes=64 * CHUNK)
    assert report.health_state == "HEALTHY"
    public = _decode(_read_all(settings, settings.topic("entropy.raw")))
    private = _decode(_read_all(settings, settings.topic("entropy.private")))
    verified_public = _verify(registry, public)
    verified_private = _verify(registry, private)
    assert [c.seq for c in verified_public] == list(range(len(verified_public)))
    assert [c.seq for c in verified_private] == list(range(len(verified_private)))
    total = len(verified_public) + len(verified_private)
    assert total == report.published_chunks
    assert len(verified_private) == report.published_chunks // 4
    assert all(c.simulated and not c.private for c in verified_public)
    assert all(c.private for c in verified_private)
    # startup windows were dropped, never published
    assert report.dropped_bytes == CHUNK
    status = _decode(_read_all(settings, settings.topic("qrng.status")))
    board = StatusBoard()
    codec = default_codec()
    for message in _read_all(settings, settings.topic("qrng.status")):
        board.apply(codec.decode(message.value))
    assert board.rows["sim-1"].health_state == "HEALTHY"
    assert any(schema == "QrngHeartbeatEmitted" for schema, _ in status)
    assert board.table().row_count == 1


def test_fault_windows_never_reach_the_topic_and_raise_alerts(settings: Settings) -> None:
    ensure_topics(settings)
    key = SigningKey.generate()
    registry = SourceRegistry([SourceRegistryEntry("faulty-1", key.public_key, simulated=True)])
    fault = FaultSource("stuck", after=16 * CHUNK + 1000, length=3 * CHUNK, value=0x77)
    service = build_service(settings, _config("faulty-1"), fault, key)
    report = service.run(max_bytes=48 * CHUNK)
    assert report.rct_failures > 0
    params = HealthParameters.derive(8, 30, binary=False)
    verified = _verify(registry, _decode(_read_all(settings, settings.topic("entropy.raw"))))
    assert [c.seq for c in verified] == list(range(len(verified)))
    assert len(verified) == report.published_chunks
    for chunk in verified:  # no published chunk holds a failing window
        health, _ = check_block(params, RctCarry(), chunk.payload)
        assert health.passed, chunk.seq
        assert b"\x77" * params.rct_cutoff not in chunk.payload
    # 1 startup + 4 chunks touched by the fault (+ recovery) were dropped
    assert report.dropped_bytes >= 5 * CHUNK
    alerts = [record for schema, record in _decode(_read_all(settings,
                                                             settings.topic("qrng.status")))
              if schema == "QrngAlertRaised"]
    kinds = [a["kind"] for a in alerts]  # type: ignore[index]
    assert "HEALTH_FAILURE" in kinds and "RECOVERED" in kinds
    assert kinds.index("HEALTH_FAILURE") < kinds.index("RECOVERED")
    failure = alerts[kinds.index("HEALTH_FAILURE")]
    assert "RCT" in failure["test"]  # type: ignore[index]  # a stuck value fails the APT too


def test_stalled_source_alerts(settings: Settings) -> None:
    ensure_topics(settings)
    key = SigningKey.generate()
    stall = FaultSource("stall", after=4 * CHUNK, length=2)
    config = _config("stall-1", liveness=LivenessPolicy(stall_after_ms=500), heartbeat_ms=100)
    report = build_service(settings, config, stall, key).run(max_bytes=10 * CHUNK,
                                                              duration_s=30)
    kinds = [a.kind.value for a in report.alerts]
    assert "STALLED" in kinds
    assert "RECOVERED" in kinds[kinds.index("STALLED"):]


def _run_cli(settings: Settings, key: Path, *args: str,
             source_id: str = "crash-1") -> subprocess.Popen[bytes]:
    env = {**os.environ,
           "QUSTREAM_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap(),
           "QUSTREAM_TOPIC_PREFIX": settings.topic_prefix,
           "QUSTREAM_STATE_DIR": str(settings.state_dir)}
    # Ingest alone: no chain runs, so nothing to pace by (``test_qrng_pacing`` has one).
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "qrng", "run", "--source", "sim", "--key",
         str(key), "--source-id", source_id, "--chunk-size", str(CHUNK), "--quiet",
         "--checkpoint-chunks", "16", "--checkpoint-ms", "300", "--private-share", "0.2",
         "--no-pace", *args], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_chunks(settings: Settings, count: int, timeout_s: float = 60) -> None:
    consumer = make_consumer(settings, f"qrng-wait-{time.time_ns()}")
    consumer.subscribe([settings.topic("entropy.raw")])
    seen = 0
    deadline = time.monotonic() + timeout_s
    try:
        while seen < count:
            assert time.monotonic() < deadline, f"only {seen} chunks appeared"
            if consumer.poll(0.5) is not None:
                seen += 1
    finally:
        consumer.close()


def test_kill_9_and_restart_gives_no_gap_and_no_reused_sequence(
    settings: Settings, tmp_path: Path,
) -> None:
    ensure_topics(settings)
    key = SigningKey.generate()
    key_file = tmp_path / "crash.key"
    key.save(key_file)
    registry = SourceRegistry([SourceRegistryEntry("crash-1", key.public_key, simulated=True)])
    state_file = settings.state_dir / "qrng" / "crash-1.json"
    for round_ in range(3):
        process = _run_cli(settings, key_file)
        _wait_for_chunks(settings, 20 * (round_ + 1))
        if round_ == 0:  # a second process of the source is refused while this one runs
            twin = _run_cli(settings, key_file, "--max-bytes", str(4 * CHUNK))
            _, err = twin.communicate(timeout=60)
            assert twin.returncode != 0 and b"already running" in err, err.decode()[-3000:]
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        if round_ == 1:
            state_file.unlink(missing_ok=True)  # lost state: resume from the topic alone
    final = _run_cli(settings, key_file, "--max-bytes", str(40 * CHUNK))
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, err.decode()[-3000:]
    for topic in ("entropy.raw", "entropy.private"):
        _assert_one_gapless_verified_chain(registry, _decode(_read_all(settings,
                                                                       settings.topic(topic))))


def _assert_one_gapless_verified_chain(registry: SourceRegistry, items: list[tuple[str, object]],
                                       source_id: str | None = None) -> list[Chunk]:
    """The chunks of ``source_id`` (all when None) among ``items`` form one chain from seq 0:
    no gap, no reused seq, each chunk on the topic once (idempotence across restarts), and
    every one verifies. Returns them."""
    chunks = [item for _, item in items
              if isinstance(item, Chunk) and source_id in (None, item.source_id)]
    by_seq: dict[int, set[bytes]] = defaultdict(set)
    for chunk in chunks:
        by_seq[chunk.seq].add(chunk.chunk_digest)
    assert chunks, f"no chunks of {source_id}"
    assert all(len(d) == 1 for d in by_seq.values()), "a sequence number was reused"
    assert sorted(by_seq) == list(range(len(by_seq))), "gap in the sequence"
    assert len(chunks) == len(by_seq)
    verified = _verify(registry, items)
    assert [c.seq for c in verified if source_id in (None, c.source_id)] == sorted(by_seq)
    return chunks


# A lane of a device (issue 22) is a source like any other: the same attacks, the same answers.
@pytest.mark.parametrize("source_id", ["real-1", "real-1.lane-1"])
def test_forged_and_replayed_chunks_are_rejected_and_dead_lettered(
    settings: Settings, source_id: str,
) -> None:
    ensure_topics(settings)
    key = SigningKey.generate()
    registry = SourceRegistry([SourceRegistryEntry(source_id, key.public_key, simulated=True)])
    build_service(settings, _config(source_id), SimulatorSource(), key).run(max_bytes=10 * CHUNK)
    topic = settings.topic("entropy.raw")
    genuine = _read_all(settings, topic)
    items = _decode(genuine)
    chunks = [item for schema, item in items if schema == "EntropyChunkPublished"]
    last = chunks[-1]
    assert isinstance(last, Chunk)
    # An attacker with write access to Kafka: replays a genuine chunk, then forges a chunk
    # continuing the chain with its own checkpoint (wrong key), then re-sequences a forged chunk
    # at an existing seq.
    codec = default_codec()
    forger = SigningKey.generate()
    from protocol.entropy.chain import ChainHead, HealthSummary, sign_checkpoint

    forged, forged_head = extend(ChainHead(last.seq + 1, last.chunk_digest), source_id=source_id,
                                 private=False, payload=os.urandom(CHUNK),
                                 produced_at_ms=last.produced_at_ms + 1, simulated=True,
                                 health=HealthSummary())
    forged_checkpoint = sign_checkpoint(forger, source_id=source_id, private=False,
                                        first_seq=forged.seq, head=forged_head,
                                        signed_at_ms=last.produced_at_ms + 2)
    conflicting, _ = extend(ChainHead(last.seq, last.prev_digest), source_id=source_id,
                            private=False, payload=os.urandom(CHUNK),
                            produced_at_ms=1, simulated=True, health=HealthSummary())
    producer = make_producer(settings)
    producer.produce(topic, genuine[0].value, key=source_id.encode())
    producer.produce(topic, codec.encode("EntropyChunkPublished", conflicting.to_record()),
                     key=source_id.encode())
    producer.produce(topic, codec.encode("EntropyChunkPublished", forged.to_record()),
                     key=source_id.encode())
    producer.produce(topic, codec.encode("EntropyCheckpointSigned",
                                         forged_checkpoint.to_record()), key=source_id.encode())
    assert producer.flush(30) == 0

    dlq = DeadLetters(producer, settings.topic("dlq.entropy"), "qrng-test")
    verifier = ChainVerifier(registry, allow_mid_stream=False)
    verified: list[Chunk] = []
    rejected: list[EntropyRejectedError] = []
    for message in _read_all(settings, topic):
        decoded = codec.decode(message.value)
        try:
            if decoded.schema == "EntropyChunkPublished":
                verifier.accept_chunk(Chunk.from_record(decoded.record))
            else:
                verified.extend(verifier.accept_checkpoint(Checkpoint.from_record(
                    decoded.record)))
        except EntropyRejectedError as exc:
            rejected.append(exc)
            dlq.send(message, exc)
    assert producer.flush(30) == 0
    assert [type(e) for e in rejected] == [DuplicateChunkError, ConflictingChunkError,
                                           BadSignatureError]
    assert [c.seq for c in verified] == [c.seq for c in chunks]  # type: ignore[union-attr]
    assert forged.seq not in {c.seq for c in verified}
    assert dlq.counts == {"duplicate": 1, "conflicting_replay": 1, "bad_signature": 1}
    dead = _decode(_read_all(settings, settings.topic("dlq.entropy")))
    assert len(dead) == 3
