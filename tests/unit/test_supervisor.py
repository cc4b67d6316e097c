"""The process supervisor restarts crashed services, gives up after a bound, and stops all."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from streams.supervisor import ServiceSpec, ServiceState, Supervisor, SupervisorError

SLEEPER = (sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)")


def _wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_kill_9_is_restarted_and_stop_terminates_everything(tmp_path: Path) -> None:
    supervisor = Supervisor([ServiceSpec("a", SLEEPER), ServiceSpec("b", SLEEPER)], tmp_path,
                            backoff_s=0.05)
    supervisor.start()
    try:
        first_pid = supervisor.status()[0].pid
        assert first_pid is not None
        supervisor.kill("a", signal.SIGKILL)

        def restarted() -> bool:
            supervisor.tick()
            status = supervisor.status()[0]
            return status.state is ServiceState.RUNNING and status.pid not in (None, first_pid)

        _wait_for(restarted)
        assert supervisor.status()[0].restarts == 1
        assert supervisor.status()[0].last_exit == -signal.SIGKILL
        _wait_for(lambda: "up" in supervisor.log_path("a").read_text())
    finally:
        pids = [s.pid for s in supervisor.status() if s.pid]
        supervisor.stop(grace_s=5)
    assert all(s.state is ServiceState.STOPPED and s.pid is None for s in supervisor.status())
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_gives_up_after_max_restarts(tmp_path: Path) -> None:
    crasher = (sys.executable, "-c", "raise SystemExit(3)")
    supervisor = Supervisor([ServiceSpec("c", crasher)], tmp_path, max_restarts=2, backoff_s=0.01)
    supervisor.start()

    def failed() -> bool:
        supervisor.tick()
        return supervisor.status()[0].state is ServiceState.FAILED

    _wait_for(failed)
    status = supervisor.status()[0]
    assert status.restarts == 2 and status.last_exit == 3


def test_one_shot_service_is_not_restarted(tmp_path: Path) -> None:
    supervisor = Supervisor([ServiceSpec("once", (sys.executable, "-c", "pass"), restart=False)],
                            tmp_path)
    supervisor.start()

    def stopped() -> bool:
        supervisor.tick()
        return supervisor.status()[0].state is ServiceState.STOPPED

    _wait_for(stopped)
    assert supervisor.status()[0].last_exit == 0


def test_unknown_service_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(SupervisorError):
        Supervisor([], tmp_path).kill("nope")
