"""Longer qrng_ingest runs for `make soak`: repeated kill -9 under load, every fault mode."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from protocol.entropy.registry import SourceRegistry, SourceRegistryEntry
from protocol.keys import SigningKey
from services.qrng_ingest.core.health import HealthParameters, RctCarry, check_block
from services.qrng_ingest.service import build_service
from services.qrng_ingest.sources import FaultSource
from streams.admin import ensure_topics
from streams.settings import Settings
from tests.integration.test_qrng_ingest import (
    CHUNK,
    _config,
    _decode,
    _read_all,
    _run_cli,
    _verify,
)

pytestmark = pytest.mark.integration


def test_many_kills_keep_the_chain_gapless(settings: Settings, tmp_path: Path) -> None:
    ensure_topics(settings)
    key = SigningKey.generate()
    key_file = tmp_path / "soak.key"
    key.save(key_file)
    registry = SourceRegistry([SourceRegistryEntry("crash-1", key.public_key, simulated=True)])
    rng = random.Random(3)
    for _ in range(10):
        process = _run_cli(settings, key_file)
        time.sleep(rng.uniform(2.0, 5.0))  # killed at a random point of a run
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    for topic in ("entropy.raw", "entropy.private"):
        items = _decode(_read_all(settings, settings.topic(topic)))
        seqs = [item.seq for schema, item in items  # type: ignore[attr-defined]
                if schema == "EntropyChunkPublished"]
        assert seqs == list(range(len(seqs)))
        verified = _verify(registry, items)
        assert [c.seq for c in verified] == seqs[:len(verified)]


@pytest.mark.parametrize("spec", [
    dict(mode="stuck", after=20 * CHUNK, length=8 * CHUNK, value=1),
    dict(mode="biased", after=20 * CHUNK, length=8 * CHUNK, value=0x33, p=0.2),
    dict(mode="burst", after=20 * CHUNK, length=64, every=5 * CHUNK, value=9),
])
def test_fault_modes_never_publish_failing_data(settings: Settings, spec: dict) -> None:
    ensure_topics(settings)
    key = SigningKey.generate()
    registry = SourceRegistry([SourceRegistryEntry("soak-f", key.public_key, simulated=True)])
    fault = FaultSource(spec.pop("mode"), **spec)
    report = build_service(settings, _config("soak-f"), fault, key).run(max_bytes=400 * CHUNK)
    assert report.rct_failures + report.apt_failures > 0
    params = HealthParameters.derive(8, 30, binary=False)
    verified = _verify(registry, _decode(_read_all(settings, settings.topic("entropy.raw"))))
    assert len(verified) == report.published_chunks
    for chunk in verified:
        assert check_block(params, RctCarry(), chunk.payload)[0].passed
