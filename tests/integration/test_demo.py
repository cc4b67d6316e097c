"""`qustream demo` runs the whole network as separate processes and finalizes blocks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from streams.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _demo(settings: Settings, *args: str, probe_gateway: bool = False) -> dict:
    """Run the demo; with ``probe_gateway``, call its HTTP API while it runs."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "demo", "--plain", "--gateway-port", str(port),
         *args],
        env=_env(settings), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    beacon = None
    explorer = None
    if probe_gateway:
        key_file = settings.state_dir / "demo" / "gateway" / "demo-api-key"
        deadline = time.monotonic() + 120
        while beacon is None and time.monotonic() < deadline and process.poll() is None:
            time.sleep(2)
            if not key_file.exists():
                continue
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/v1/beacon/latest", timeout=5,
                                   headers={"X-API-Key": key_file.read_text().strip()})
            except httpx.HTTPError:
                continue
            if answer.status_code == 200:
                beacon = answer.json()
                explorer = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
    output, _ = process.communicate(timeout=400)
    assert process.returncode == 0, output[-4000:]
    if probe_gateway:
        assert beacon is not None, output[-4000:]
        assert "gateway: http://127.0.0.1" in output
        assert f"explorer: http://127.0.0.1:{port}/" in output
        assert explorer is not None and explorer.status_code == 200, output[-4000:]
        assert "<title>QuStream explorer</title>" in explorer.text
    # The gateway waits (not ready) for the projection's tables instead of exiting, and
    # --plain prints one line per block on a pipe (no wrapping at 80 columns).
    assert "gateway exited" not in output, output[-4000:]
    blocks = [line for line in output.splitlines() if line.startswith("block ")]
    assert blocks and all(line.endswith(" ms") and " randomness " in line for line in blocks), (
        blocks[:5])
    summary: dict = json.loads((settings.state_dir / "demo" / "summary.json").read_text())
    assert summary["errors"] == [], summary
    return summary


def test_demo_runs_the_network_and_a_second_run_continues_the_chain(
    cassandra_settings: Settings,
) -> None:
    first = _demo(cassandra_settings, "--duration", "60", "--users", "1", probe_gateway=True)
    assert first["blocks_finalized"] >= 5, first
    assert first["first_height"] == 1
    assert first["entropy_chunks"] > 0
    assert first["users_registered"] == 1
    assert len(first["head_randomness"]) == 128

    # Every service restarts from the topics: the chain continues where it stopped.
    second = _demo(cassandra_settings, "--duration", "30", "--users", "0")
    assert second["first_height"] == first["head_height"] + 1, (first, second)
    assert second["blocks_finalized"] >= 3, second
