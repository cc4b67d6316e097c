"""The paced simulator delivers at the configured rate without stalling."""

from __future__ import annotations

import pytest

from services.qrng_ingest.sources import PacedSource, SimulatorSource, SourceSpecError, parse_source


def test_paced_source_sleeps_to_hold_the_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    source = PacedSource(SimulatorSource(), 1000, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        assert len(source.read(500)) == 500
    assert now[0] == pytest.approx(2.5)  # 2,500 bytes at 1,000 bytes/s
    assert source.simulated


def test_sim_rate_spec_parses_and_rejects_nonsense() -> None:
    source = parse_source("sim,rate=2MiB")
    assert isinstance(source, PacedSource)
    assert "paced to 2097152" in source.describe()
    for bad in ("sim,rate=", "sim,speed=1", "sim,rate=abc", "sim,rate=0"):
        with pytest.raises(SourceSpecError):
            parse_source(bad)
