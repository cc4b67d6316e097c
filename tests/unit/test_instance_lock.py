"""One process per identity: the lock refuses a second holder, names the first, and is the
kernel's to drop when its holder dies, however it dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from protocol.keys import Algorithm
from services.qrng_ingest.publisher import open_publisher
from streams.instance_lock import InstanceLock, InstanceLockedError
from streams.settings import KafkaSettings, Settings
from tests.support.peers import network_spec, node_under_test, validator_keys

_HOLDER = """
import sys, time
from pathlib import Path
from streams.instance_lock import InstanceLock
lock = InstanceLock(Path(sys.argv[1]), "test", "why")
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    path = tmp_path / "state" / "x.lock"
    with InstanceLock(path, "source 'x'", "the chain forks") as first:
        with pytest.raises(InstanceLockedError, match=rf"source 'x' is already running .*"
                                                        rf"pid {os.getpid()} .*chain forks"):
            InstanceLock(path, "source 'x'", "the chain forks")
        assert first.held
    with InstanceLock(path, "source 'x'", "the chain forks") as again:  # released: free
        assert again.held
    assert not again.held


def test_the_lock_of_a_killed_process_is_free_at_once(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(InstanceLockedError, match=f"pid {holder.pid} "):
            InstanceLock(path, "test", "why")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with InstanceLock(path, "test", "why") as lock:  # no stale lock to clean up
        assert lock.held


def test_a_validator_key_runs_in_one_node_at_a_time(tmp_path: Path) -> None:
    keys = validator_keys(4, Algorithm.ED25519)
    spec = network_spec(keys)
    node, _ = node_under_test(spec, keys[0], tmp_path / "guard")
    try:
        with pytest.raises(InstanceLockedError, match="double signing"):
            node_under_test(spec, keys[0], tmp_path / "guard")
        other, _ = node_under_test(spec, keys[1], tmp_path / "guard-1")  # another key: fine
        other.close()
    finally:
        node.close()
    again, _ = node_under_test(spec, keys[0], tmp_path / "guard")
    again.close()


def test_a_qrng_source_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    """The lock comes first: a refused process reads neither the state file nor the topic (an
    address nothing listens on would fail otherwise)."""
    settings = Settings(state_dir=tmp_path, kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"))
    path = tmp_path / "qrng" / "qd-1.json.lock"
    with InstanceLock(path, "test", "why"), pytest.raises(InstanceLockedError, match="forks"):
        open_publisher(settings, "qd-1", None)  # type: ignore[arg-type]
