"""`qustream demo` runs the whole network as separate processes and finalizes blocks; every way
of ending it stops its services, and the next start finds and stops what a run left behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from streams.settings import Settings
from tests.support.processes import running

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SLEEPER = (sys.executable, "-c", "import time; time.sleep(300)")


def _env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_pids(settings: Settings) -> dict[str, int]:
    """The services the running demo recorded (empty once it stopped them)."""
    run_file = settings.state_dir / "demo" / "services.json"
    try:
        return {name: int(entry["pid"])
                for name, entry in json.loads(run_file.read_text())["services"].items()}
    except (OSError, ValueError, KeyError):
        return {}


def _get(port: int, key: str, path: str) -> httpx.Response | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5, headers={"X-API-Key": key})
    except httpx.HTTPError:
        return None


def _demo(settings: Settings, *args: str, probe_gateway: bool = False,
          stop_with: signal.Signals | None = None, blocks: int = 3) -> tuple[dict, str]:
    """Run the demo; with ``probe_gateway``, call its HTTP API while it runs, with its own key
    and with one made by ``qustream gateway api-key create`` as docs/api.md says; with
    ``stop_with``, end it with that signal once ``blocks`` blocks were printed."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "demo", "--plain", "--gateway-port", str(port),
         *args],
        env=_env(settings), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    beacon: dict | None = None
    by_hand: int | None = None
    explorer: httpx.Response | None = None
    made = ""
    seen: dict[str, int] = {}
    deadline = time.monotonic() + 300
    try:
        for line in process.stdout:
            lines.append(line)
            seen.update(service_pids(settings))
            if probe_gateway and (beacon is None or by_hand != 200) and line.startswith("block "):
                key = (settings.state_dir / "demo" / "gateway" / "demo-api-key").read_text()
                answer = _get(port, key.strip(), "/v1/beacon/latest")
                beacon = answer.json() if answer and answer.status_code == 200 else None
                explorer = _get(port, "", "/") if beacon is not None else None
                made = made or subprocess.run(
                    [sys.executable, "-m", "streams.cli", "gateway", "api-key", "create",
                     "--scopes", "read"], env=_env(settings), cwd=ROOT, capture_output=True,
                    text=True, check=True).stdout.strip().splitlines()[-1]
                answer = _get(port, made, "/v1/chain/head")
                by_hand = answer.status_code if answer is not None else None
            if stop_with is not None and sum(x.startswith("block ") for x in lines) >= blocks:
                process.send_signal(stop_with)
                stop_with = None
            if time.monotonic() > deadline:
                break
        process.wait(60)
    finally:
        process.kill()
    output = "".join(lines)
    assert process.returncode == 0, output[-4000:]
    block_lines = [line for line in lines if line.startswith("block ")]
    assert block_lines and all(line.rstrip().endswith(" ms") for line in block_lines), \
        "--plain prints one line per block, never wrapped"
    assert not service_pids(settings), "the run file outlived the demo"
    left = [name for name, pid in seen.items() if running(pid)]
    assert not left, (left, output[-3000:])
    assert len(seen) >= 8, seen  # the services were recorded while they ran
    if probe_gateway:
        assert beacon is not None, output[-4000:]
        assert by_hand == 200, "a key from `qustream gateway api-key create` must work"
        assert "gateway: http://127.0.0.1" in output
        assert f"explorer: http://127.0.0.1:{port}/" in output
        assert explorer is not None and explorer.status_code == 200, output[-4000:]
        assert "<title>QuStream explorer</title>" in explorer.text
    # The gateway waits (not ready) for the projection's tables instead of exiting.
    assert "gateway exited" not in output, output[-4000:]
    summary: dict = json.loads((settings.state_dir / "demo" / "summary.json").read_text())
    assert summary["errors"] == [], summary
    return summary, output


def test_demo_runs_the_network_and_a_second_run_continues_the_chain(
    cassandra_settings: Settings,
) -> None:
    # What a run killed without a chance to clean up would have left behind.
    leftover = subprocess.Popen(SLEEPER, start_new_session=True)
    run_file = cassandra_settings.state_dir / "demo" / "services.json"
    run_file.parent.mkdir(parents=True)
    run_file.write_text(json.dumps({"supervisor_pid": 999_999_999, "services": {
        "validator-0": {"pid": leftover.pid, "argv": list(SLEEPER)}}}))
    try:
        first, output = _demo(cassandra_settings, "--duration", "60", "--users", "1",
                              probe_gateway=True)
        assert leftover.wait(30) is not None  # found, reported and stopped
        assert f"validator-0 (pid {leftover.pid})" in output
    finally:
        leftover.kill()
        leftover.wait()
    assert first["blocks_finalized"] >= 5, first
    assert first["first_height"] == 1
    assert first["entropy_chunks"] > 0
    assert first["users_registered"] == 1
    assert len(first["head_randomness"]) == 128
    assert ".venv/bin/qustream chain head" in output or "/bin/qustream chain head" in output

    # Every service restarts from the topics: the chain continues where it stopped. This run
    # is ended by SIGTERM, as `kill PID` would: the services stop with it.
    second, _ = _demo(cassandra_settings, "--users", "0", stop_with=signal.SIGTERM)
    assert second["first_height"] == first["head_height"] + 1, (first, second)
    assert second["blocks_finalized"] >= 3, second
