"""Issue 22, item 1: one device as two lanes, two processes, against the real Kafka: each lane
a verifiable gapless chain of its own, a lane killed with -9 resumes its own chain, the lanes
never publish the same bytes, and a block builder's pool counts them as one device."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from protocol.entropy.registry import SourceRegistry, SourceRegistryEntry, lane_source_ids
from protocol.keys import SigningKey
from services.block_builder.pool import EntropyPool
from streams.admin import ensure_topics
from streams.kafka import Position, make_reader
from streams.settings import Settings
from tests.integration.test_qrng_ingest import (
    _assert_one_gapless_verified_chain,
    _decode,
    _read_all,
    _run_cli,
)
from tests.unit.test_block import build, tip, validate

pytestmark = pytest.mark.integration


def _lane_pid(parent: int, lane: int, timeout_s: float = 30) -> int:
    """The pid of the process running ``lane`` under the lanes supervisor ``parent``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except (OSError, IndexError, ValueError):
                continue
            if ppid == parent and b"--lane" in argv and argv[argv.index(b"--lane") + 1] == (
                    str(lane).encode()):
                return int(entry.name)
        time.sleep(0.1)
    raise AssertionError(f"no process of lane {lane} under {parent}")


class _ChunkCount:
    """Records per source on ``entropy.raw`` so far, read on as the lanes publish (reading the
    whole topic again each time grew with it: a minute under ``make test``'s load)."""

    def __init__(self, settings: Settings) -> None:
        topic = settings.topic("entropy.raw")
        self._consumer = make_reader(settings, f"qrng-count-{time.time_ns()}",
                                     **{"isolation.level": "read_uncommitted"})
        self._consumer.assign([Position(topic, p, 0)
                               for p in self._consumer.partitions(topic)])
        self._seen: Counter[bytes] = Counter()

    def of(self, source_id: str) -> int:
        started = time.monotonic()
        while time.monotonic() - started < 0.3:  # the lanes never stop: read a while, count
            batch = self._consumer.consume(1000, 0.1)
            if not batch:
                break
            self._seen.update(record.key for record in batch if record.key is not None)
        return self._seen[source_id.encode()]

    def close(self) -> None:
        self._consumer.close()


def test_two_lanes_are_two_chains_of_one_device_and_a_killed_lane_resumes(
    settings: Settings, tmp_path: Path,
) -> None:
    ensure_topics(settings)
    key = SigningKey.generate()
    key_file = tmp_path / "device.key"
    key.save(key_file)
    lanes = lane_source_ids("dev-1", 2)
    registry = SourceRegistry(SourceRegistryEntry(lane, key.public_key, simulated=True)
                              for lane in lanes)
    process = _run_cli(settings, key_file, "--lanes", "2", source_id="dev-1")
    count = _ChunkCount(settings)
    try:
        # Both lanes up (one may start later than the other on a loaded machine: a lane
        # stopped before its start-up ends dies of the signal, and this test is not about that).
        deadline = time.monotonic() + 90
        while min(count.of(lane) for lane in lanes) < 10:
            assert time.monotonic() < deadline, "a lane did not start publishing"
            time.sleep(0.2)
        killed = _lane_pid(process.pid, 1)
        os.kill(killed, signal.SIGKILL)
        time.sleep(0.5)  # what it had in flight lands (or never does)
        at_kill = count.of(lanes[1])
        deadline = time.monotonic() + 90
        # Restarted, the lane resumes its own chain and publishes again.
        while count.of(lanes[1]) < at_kill + 10:
            assert time.monotonic() < deadline, "the killed lane did not resume publishing"
            time.sleep(0.2)
        assert _lane_pid(process.pid, 1) != killed
    finally:
        count.close()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err.decode()[-3000:]
    report = json.loads(out.decode().splitlines()[-1])
    assert report["device"] == "dev-1"
    assert [(lane["source_id"], lane["restarts"], lane["exit_code"])
            for lane in report["lanes"]] == [(lanes[0], 0, 0), (lanes[1], 1, 0)]

    payloads: dict[str, set[bytes]] = defaultdict(set)
    for topic in ("entropy.raw", "entropy.private"):
        items = _decode(_read_all(settings, settings.topic(topic)))
        for lane in lanes:
            chunks = _assert_one_gapless_verified_chain(registry, items, lane)
            payloads[lane] |= {chunk.payload_digest for chunk in chunks}
    assert not payloads[lanes[0]] & payloads[lanes[1]], "two lanes published the same bytes"

    # A block builder's pool over the topic: both lanes' chunks, one device.
    pool = EntropyPool(registry)
    for schema, item in _decode(_read_all(settings, settings.topic("entropy.raw"))):
        if schema == "EntropyChunkPublished":
            pool.accept_chunk(item)  # type: ignore[arg-type]
        else:
            pool.accept_checkpoint(item)  # type: ignore[arg-type]
    chain_tip = tip(height=1, last_seq=())
    block = build(chain_tip, pool.proposer_view(0))  # type: ignore[arg-type]
    assert [r.source_id for r in block.header.entropy_ranges] == list(lanes)
    assert block.header.fresh_sources == 0  # first chunks: committed to by nothing
    validate(block, chain_tip, pool.validator_view(0))  # type: ignore[arg-type]
    # The next block: both lanes' chunks committed to by the block before, one device.
    chain_tip = chain_tip.advanced(block, chain_tip.app_hash, chain_tip.next_validators_hash)
    pool.advance(chain_tip)
    block = build(chain_tip, pool.proposer_view(0))  # type: ignore[arg-type]
    assert [r.committed for r in block.body.entropy] == [True, True]
    assert block.header.fresh_sources == 1
    validate(block, chain_tip, pool.validator_view(0))  # type: ignore[arg-type]
