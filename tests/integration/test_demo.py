"""`qustream demo` runs the whole network as separate processes and finalizes blocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _env(settings: Settings) -> dict[str, str]:
    hosts, port = settings.cassandra_endpoint()
    return {
        **os.environ,
        "QUSTREAM_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap(),
        "QUSTREAM_CASSANDRA_CONTACT_POINTS": ",".join(hosts),
        "QUSTREAM_CASSANDRA_PORT": str(port),
        "QUSTREAM_CASSANDRA_KEYSPACE": settings.cassandra.keyspace,
        "QUSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "QUSTREAM_STATE_DIR": str(settings.state_dir),
        "PYTHONPATH": str(ROOT),
    }


def _demo(settings: Settings, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "demo", "--plain", *args],
        env=_env(settings), cwd=ROOT, capture_output=True, text=True, timeout=400,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((settings.state_dir / "demo" / "summary.json").read_text())
    assert summary["errors"] == [], summary
    return summary


def test_demo_runs_the_network_and_a_second_run_continues_the_chain(
    cassandra_settings: Settings,
) -> None:
    first = _demo(cassandra_settings, "--duration", "50", "--users", "1")
    assert first["blocks_finalized"] >= 5, first
    assert first["first_height"] == 1
    assert first["entropy_chunks"] > 0
    assert first["users_registered"] == 1
    assert len(first["head_randomness"]) == 128

    # Every service restarts from the topics: the chain continues where it stopped.
    second = _demo(cassandra_settings, "--duration", "30", "--users", "0")
    assert second["first_height"] == first["head_height"] + 1, (first, second)
    assert second["blocks_finalized"] >= 3, second
