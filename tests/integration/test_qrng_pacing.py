"""Issue 19 item 1 against the real Kafka: a paced QRNG server (``qustream qrng run --pace``)
reveals a public chunk only once its predecessor is in a finalized block on ``chain.blocks``,
every chunk commits to the next, and after kill -9 the chain continues with one uncommitted
chunk, then committed ones again.

The blocks are real: ``sdk.testing.make_local_chain`` builds and signs them (block h includes
chunk h-1 of ``qrng-0``), and the test writes each one to ``chain.blocks`` when the step needs
it, so "not before its block" is observed, not inferred from timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from protocol.entropy.chain import Checkpoint, Chunk, commits_to
from protocol.entropy.registry import SourceRegistry, SourceRegistryEntry
from protocol.keys import SigningKey
from sdk.testing import make_local_chain
from streams.admin import ensure_topics
from streams.chain_wire import height_key
from streams.codec import default_codec
from streams.kafka import KafkaConsumer, Position, make_consumer, make_producer
from streams.settings import Settings
from tests.integration.test_qrng_ingest import _decode, _read_all, _verify

pytestmark = pytest.mark.integration

SOURCE = "qrng-0"  # make_local_chain's first source
REPO = Path(__file__).resolve().parents[2]
QUIET_S = 3.0  # how long a chunk that must wait is watched for (it never comes)


class _Chunks:
    """The public chunks of ``SOURCE`` as they appear on ``entropy.raw``, and the heartbeats
    on ``qrng.status``."""

    def __init__(self, settings: Settings) -> None:
        self._codec = default_codec()
        self._consumer: KafkaConsumer = make_consumer(settings, f"pace-test-{time.time_ns()}")
        topic = settings.topic("entropy.raw")
        status = settings.topic("qrng.status")
        self._consumer.assign([Position(topic, p, 0) for p in self._consumer.partitions(topic)]
                              + [Position(status, p, 0)
                                 for p in self._consumer.partitions(status)])
        self._status = status
        self.by_seq: dict[int, Chunk] = {}
        self.heartbeats = 0

    def _read(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            record = self._consumer.poll(min(left, 0.2))
            if record is None or record.key != SOURCE.encode():
                continue
            decoded = self._codec.decode(record.value)
            if record.topic == self._status:
                self.heartbeats += decoded.schema == "QrngHeartbeatEmitted"
            elif decoded.schema == "EntropyChunkPublished":
                chunk = Chunk.from_record(decoded.record)
                self.by_seq[chunk.seq] = chunk

    def wait(self, seq: int, timeout_s: float = 90) -> Chunk:
        deadline = time.monotonic() + timeout_s
        while seq not in self.by_seq:
            assert time.monotonic() < deadline, f"chunk {seq} was not published"
            self._read(0.5)
        return self.by_seq[seq]

    def assert_absent(self, seq: int) -> None:
        """Chunk ``seq`` does not appear within ``QUIET_S`` (while heartbeats do)."""
        beats = self.heartbeats
        self._read(QUIET_S)
        assert seq not in self.by_seq, f"chunk {seq} was revealed before its predecessor's block"
        assert self.heartbeats > beats, "no heartbeat while waiting for the chain"

    def close(self) -> None:
        self._consumer.close()


def _run(settings: Settings, key: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings.to_env()}
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "qrng", "run", "--source", "sim", "--key",
         str(key), "--source-id", SOURCE, "--chunk-size", "64KiB", "--quiet", "--pace",
         "--heartbeat-ms", "200", "--checkpoint-ms", "300"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_paced_source_reveals_each_public_chunk_after_its_predecessor_is_finalized(
    settings: Settings, tmp_path: Path,
) -> None:
    ensure_topics(settings)
    chain = make_local_chain(tmp_path / "chain", 6, sources=1)
    key = SigningKey.generate()
    key_file = tmp_path / "qrng.key"
    key.save(key_file)
    producer = make_producer(settings)

    def finalize(height: int) -> None:  # block ``height`` includes chunk height - 1
        producer.produce(settings.topic("chain.blocks"), chain.records[height - 1],
                         height_key(height))
        assert producer.flush(30) == 0

    chunks = _Chunks(settings)
    process = _run(settings, key_file)
    try:
        first = chunks.wait(0)  # nothing is revealed yet: the first chunk needs no block
        chunks.assert_absent(1)
        finalize(1)
        second = chunks.wait(1)
        assert commits_to(first, second)
        chunks.assert_absent(2)
        finalize(2)
        third = chunks.wait(2)
        assert commits_to(second, third)

        process.send_signal(signal.SIGKILL)  # the payload chunk 2 commits to is lost
        process.wait(30)
        process = _run(settings, key_file)
        # The chain includes up to chunk 1 (block 2); chunk 2 is revealed and not in a block,
        # so the restarted source, reading the chain back, must not reveal chunk 3 yet.
        chunks.assert_absent(3)
        finalize(3)
        fourth = chunks.wait(3)
        assert fourth.prev_digest == third.chunk_digest  # one chain across the crash
        assert not commits_to(third, fourth)  # its committed payload died with the process
        chunks.assert_absent(4)
        finalize(4)
        fifth = chunks.wait(4)
        assert commits_to(fourth, fifth)

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)  # while paced and waiting for block 5
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err.decode()[-3000:]
        assert time.monotonic() - started < 15, "a waiting paced source did not stop promptly"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        chunks.close()

    # A clean stop keeps the held payload secret (chunk 4 is not in a block): nothing after
    # chunk 4, and everything published verifies under checkpoints.
    items = _decode(_read_all(settings, settings.topic("entropy.raw")))
    published = sorted((item for _, item in items if isinstance(item, Chunk)),
                       key=lambda chunk: chunk.seq)
    assert [chunk.seq for chunk in published] == [0, 1, 2, 3, 4]
    assert not any(isinstance(item, Checkpoint) and item.last_seq > 4 for _, item in items)
    registry = SourceRegistry([SourceRegistryEntry(SOURCE, key.public_key, simulated=True)])
    assert [chunk.seq for chunk in _verify(registry, items)] == [0, 1, 2, 3, 4]
