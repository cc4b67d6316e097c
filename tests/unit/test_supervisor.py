"""The process supervisor restarts crashed services, gives up after a bound, and stops all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streams.supervisor import (
    ServiceSpec,
    ServiceState,
    Supervisor,
    SupervisorError,
    leftovers,
    previous_supervisor,
    stop_leftovers,
)
from tests.support.processes import running

REPO = Path(__file__).resolve().parents[2]

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


def test_a_service_done_on_a_clean_exit_is_restarted_only_after_a_failure(
        tmp_path: Path) -> None:
    marker = tmp_path / "ran-once"
    # Fails the first time, exits cleanly the second.
    script = f"import pathlib,sys; m=pathlib.Path({str(marker)!r}); " \
             "sys.exit(0) if m.exists() else (m.touch(), sys.exit(3))"
    supervisor = Supervisor([ServiceSpec("budget", (sys.executable, "-c", script),
                                         done_on_clean_exit=True)], tmp_path, backoff_s=0.01)
    supervisor.start()

    def stopped() -> bool:
        supervisor.tick()
        return supervisor.status()[0].state is ServiceState.STOPPED

    _wait_for(stopped)
    status = supervisor.status()[0]
    assert (status.restarts, status.last_exit) == (1, 0)


def test_unknown_service_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(SupervisorError):
        Supervisor([], tmp_path).kill("nope")


def test_the_run_file_lists_running_services_until_they_stop(tmp_path: Path) -> None:
    run_file = tmp_path / "run" / "services.json"
    supervisor = Supervisor([ServiceSpec("a", SLEEPER), ServiceSpec("b", SLEEPER)], tmp_path,
                            run_file=run_file)
    supervisor.start()
    try:
        recorded = json.loads(run_file.read_text())
        assert recorded["supervisor_pid"] == os.getpid()
        assert {n: e["pid"] for n, e in recorded["services"].items()} == {
            s.name: s.pid for s in supervisor.status()}
        # as the next run sees them (once exec has filled in their command lines)
        _wait_for(lambda: {f.name for f in leftovers(run_file)} == {"a", "b"})
        assert previous_supervisor(run_file) is None  # that is us, not another one
    finally:
        supervisor.stop(grace_s=5)
    assert not run_file.exists()


def test_leftovers_of_a_previous_run_are_found_and_stopped(tmp_path: Path) -> None:
    run_file = tmp_path / "services.json"
    left = subprocess.Popen(SLEEPER, start_new_session=True, stdout=subprocess.DEVNULL)
    other = subprocess.Popen(SLEEPER, start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        run_file.write_text(json.dumps({"supervisor_pid": 999_999_999, "services": {
            "left": {"pid": left.pid, "argv": list(SLEEPER)},
            # a recycled pid: another program now runs under it
            "recycled": {"pid": other.pid, "argv": ["qustream", "validator", "run"]},
            "gone": {"pid": 999_999_998, "argv": list(SLEEPER)}}}))
        assert previous_supervisor(run_file) is None
        found = leftovers(run_file)
        assert [(f.name, f.pid) for f in found] == [("left", left.pid)]
        stop_leftovers(found, run_file, grace_s=5)
        assert left.wait(5) == -signal.SIGTERM
        assert other.poll() is None  # not ours: untouched
        assert not run_file.exists()
    finally:
        for process in (left, other):
            process.kill()
            process.wait()


SUPERVISING = """
import sys, time
from pathlib import Path
from streams.supervisor import ServiceSpec, Supervisor
service = (sys.executable, "-c",
           "from streams.supervisor import die_with_parent; import time; die_with_parent(); "
           "print('up', flush=True); time.sleep(60)")
supervisor = Supervisor([ServiceSpec("s", service)], Path(sys.argv[1]))
supervisor.start()
print(supervisor.status()[0].pid, flush=True)
time.sleep(60)
"""


def test_services_end_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    """kill -9 of the supervisor (no chance to clean up): the kernel stops its services."""
    parent = subprocess.Popen([sys.executable, "-c", SUPERVISING, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        _wait_for(lambda: "up" in (tmp_path / "s.log").read_text()
                  if (tmp_path / "s.log").exists() else False)
        parent.kill()
        parent.wait(5)
        _wait_for(lambda: not running(child), timeout_s=10)
    finally:
        parent.kill()
        parent.wait()


