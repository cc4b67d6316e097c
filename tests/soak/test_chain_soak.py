"""Soak: the chain under a few minutes of repeated crashes (make soak, not make test).

Four validators, the tally and a QRNG server run with short block intervals while, every few
seconds, one random validator or the tally is killed with SIGKILL (at most one validator down at
a time, so +2/3 remains). Afterwards every block is re-verified from genesis: no gap, no repeated
height, every certificate and state hash valid, and the chain kept finalizing throughout.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable

import pytest

from tests.integration.test_chain_e2e import Network, finalized_height, network_factory  # noqa: F401

pytestmark = pytest.mark.integration

DURATION_S = 180.0
KILL_EVERY_S = 12.0


def test_chain_keeps_finalizing_through_repeated_kills(
    network_factory: Callable[..., Network],  # noqa: F811
) -> None:
    network = network_factory(validators=4, interval_ms=200, sources=1)
    assert network.wait_height(3, 180) >= 3, network.log("tally")
    chooser = random.Random(20261123)  # a fixed seed: a failing run can be repeated
    kills: list[str] = []
    progress: list[int] = []
    started = time.monotonic()
    next_kill = started + KILL_EVERY_S
    while time.monotonic() - started < DURATION_S:
        network.supervisor.tick()
        if time.monotonic() >= next_kill:
            victim = chooser.choice([f"validator-{i}" for i in range(4)] + ["tally"])
            network.supervisor.kill(victim, signal.SIGKILL)
            kills.append(victim)
            progress.append(finalized_height(network.settings))
            next_kill += KILL_EVERY_S
        time.sleep(0.5)
    network.supervisor.stop(grace_s=10)

    assert len(kills) >= DURATION_S // KILL_EVERY_S - 1
    assert progress == sorted(progress) and progress[-1] > progress[0], progress
    blocks = network.blocks()  # re-verified from genesis
    heights = [b.record.height for b in blocks]
    assert heights == list(range(1, len(blocks) + 1))
    assert len(blocks) >= 100, f"only {len(blocks)} blocks in {DURATION_S:.0f} s with {kills}"
