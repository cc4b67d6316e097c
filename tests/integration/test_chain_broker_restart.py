"""The chain survives a crash of its Kafka broker: kill -9 mid-run, restart, the chain resumes
and nothing finalized before the crash is lost or changed.

The network runs against a broker of this test's own (the shared test broker must not be
killed under other tests); every block is re-verified from genesis afterwards.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from infra.local import LocalCluster
from infra.local.process import pid_alive, port_open
from streams.settings import KafkaSettings, Settings
from tests.integration.test_chain_e2e import Network, network_factory  # noqa: F401
from tests.integration.test_infra import private_kafka  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(private_kafka: LocalCluster, tmp_path: Path) -> Settings:  # noqa: F811
    """Overrides the session fixture: this test's chain lives on its private broker."""
    private_kafka.up(("kafka",))
    return Settings(state_dir=tmp_path / "state", topic_prefix="restart.",
                    kafka=KafkaSettings(bootstrap_servers=private_kafka.kafka_bootstrap))


def test_broker_crash_mid_run_loses_nothing_and_the_chain_resumes(
    private_kafka: LocalCluster,  # noqa: F811
    network_factory: Callable[..., Network],  # noqa: F811
) -> None:
    network = network_factory(validators=4, interval_ms=300)
    assert network.wait_height(5, 180) >= 5, network.log("tally")
    before = [b.record.block.hash for b in network.blocks()]
    assert len(before) >= 5

    broker = private_kafka.status(("kafka",))[0]
    assert broker.pid is not None
    os.kill(broker.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30  # the broker is gone: the services see errors and retry
    while pid_alive(broker.pid) or port_open(broker.port):
        assert time.monotonic() < deadline, "the killed broker is still there"
        time.sleep(0.1)
    assert private_kafka.up(("kafka",))[0].state == "up"

    target = len(before) + 5
    reached = network.wait_height(target, 240)
    assert reached >= target, (reached, network.log("tally"), network.log("validator-0"))
    network.supervisor.stop(grace_s=10)

    after = network.blocks()  # every block re-verified from genesis: links, commits, state
    heights = [b.record.height for b in after]
    assert heights == list(range(1, len(after) + 1)), "a gap or a repeated height"
    assert [b.record.block.hash for b in after[: len(before)]] == before, "history changed"
