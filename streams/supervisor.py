"""A small process supervisor for running the network's services side by side.

``qustream demo`` and the end-to-end tests run every service as a separate OS process, as a
deployment would. The supervisor starts them in their own sessions (so a stop reaches their
children too), writes each one's output to ``<log_dir>/<name>.log``, restarts a service that
exits unexpectedly (with a bounded count and a growing delay), and stops everything with
SIGTERM, then SIGKILL after a grace period. It deliberately does not try to be systemd: it is
the local stand-in for the Kubernetes controllers of the Helm chart.

Nothing is left behind, however the supervising process ends:

- ``stop`` (the supervisor's owner calls it on Ctrl-C, SIGTERM, SIGHUP or a closed terminal)
  stops every service's process group;
- each service is told, through ``QUSTREAM_PARENT_PID``, to ask the kernel for SIGTERM when the
  supervisor dies (``die_with_parent``, Linux ``PR_SET_PDEATHSIG``): a ``kill -9`` of the
  supervisor still ends its services. The kernel ties this to the *thread* that started the
  service, so ``start`` and ``tick`` belong on a thread that lives as long as the supervisor
  (the main thread, as in the demo and the tests);
- with a ``run_file``, the running services (pid, command line) are recorded there while they
  run, and ``leftovers`` lets the next start find whatever a previous supervisor left alive (a
  service that ignored the signal, or a platform without ``PR_SET_PDEATHSIG``) and stop it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from protocol.errors import OperationError


class SupervisorError(OperationError):
    """A service could not be started or named."""


class ServiceState(StrEnum):
    RUNNING = "running"
    BACKOFF = "backoff"  # exited; waiting to be restarted
    FAILED = "failed"  # exited too often; given up
    STOPPED = "stopped"  # stopped on request (or exited cleanly with restart off)


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    restart: bool = True
    # With ``restart``, a clean exit (code 0) still ends the service: for a service given a
    # budget (the lanes of ``qustream qrng run --duration``), restarted only after a crash or
    # a kill.
    done_on_clean_exit: bool = False


@dataclass(slots=True)
class _Service:
    spec: ServiceSpec
    process: subprocess.Popen[bytes] | None = None
    state: ServiceState = ServiceState.STOPPED
    restarts: int = 0
    restart_at: float = 0.0
    last_exit: int | None = None


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    name: str
    pid: int | None
    state: ServiceState
    restarts: int
    last_exit: int | None


class Supervisor:
    """Runs services; call ``tick()`` often (it restarts what died) and ``stop()`` at the end."""

    def __init__(
        self,
        specs: Iterable[ServiceSpec],
        log_dir: Path,
        *,
        max_restarts: int = 10,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        run_file: Path | None = None,
    ) -> None:
        self._services = {spec.name: _Service(spec) for spec in specs}
        self._log_dir = log_dir
        self._run_file = run_file
        self._max_restarts = max_restarts
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s

    def start(self, names: Iterable[str] | None = None) -> None:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        for name in names or list(self._services):
            self._launch(self._get(name))

    def tick(self) -> list[str]:
        """Reap exited services and restart those due; returns human-readable events."""
        events: list[str] = []
        now = time.monotonic()
        for service in self._services.values():
            if service.state is ServiceState.RUNNING and service.process is not None:
                code = service.process.poll()
                if code is None:
                    continue
                service.last_exit = code
                service.process = None
                if not service.spec.restart or (code == 0 and service.spec.done_on_clean_exit):
                    service.state = ServiceState.STOPPED
                    events.append(f"{service.spec.name} exited with {code}")
                elif service.restarts >= self._max_restarts:
                    service.state = ServiceState.FAILED
                    events.append(f"{service.spec.name} exited with {code}; gave up")
                else:
                    delay = min(self._backoff_s * 2**service.restarts, self._max_backoff_s)
                    service.state = ServiceState.BACKOFF
                    service.restart_at = now + delay
                    events.append(
                        f"{service.spec.name} exited with {code}; restart in {delay:.1f}s"
                    )
            elif service.state is ServiceState.BACKOFF and now >= service.restart_at:
                service.restarts += 1
                self._launch(service)
                events.append(f"{service.spec.name} restarted (#{service.restarts})")
        if events:
            self._record()
        return events

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send a signal to a service's whole process group (fault injection, e.g. kill -9)."""
        service = self._get(name)
        if service.process is not None:
            _signal_group(service.process.pid, sig)

    def stop(self, names: Iterable[str] | None = None, grace_s: float = 10.0) -> None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL; stopped services are not restarted."""
        targets = [self._get(n) for n in (names or list(self._services))]
        for service in targets:
            service.state = ServiceState.STOPPED
            if service.process is not None:
                _signal_group(service.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for service in targets:
            process = service.process
            if process is None:
                continue
            try:
                service.last_exit = process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                service.last_exit = process.wait()
            service.process = None
            # The service's own children (its process group) go with it.
            _signal_group(process.pid, signal.SIGKILL)
        self._record()

    def status(self) -> list[ServiceStatus]:
        return [
            ServiceStatus(
                s.spec.name,
                s.process.pid if s.process is not None else None,
                s.state,
                s.restarts,
                s.last_exit,
            )
            for s in self._services.values()
        ]

    def log_path(self, name: str) -> Path:
        return self._log_dir / f"{self._get(name).spec.name}.log"

    def _get(self, name: str) -> _Service:
        try:
            return self._services[name]
        except KeyError as exc:
            raise SupervisorError(f"no service named {name!r}") from exc

    def _record(self) -> None:
        """Write the running services to the run file (removed when none runs)."""
        if self._run_file is None:
            return
        running = {s.spec.name: {"pid": s.process.pid, "argv": list(s.spec.argv)}
                   for s in self._services.values() if s.process is not None}
        if not running:
            self._run_file.unlink(missing_ok=True)
            return
        self._run_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._run_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"supervisor_pid": os.getpid(), "services": running},
                                  indent=2))
        tmp.replace(self._run_file)

    def _launch(self, service: _Service) -> None:
        env = {**os.environ, **service.spec.env, "PYTHONUNBUFFERED": "1",
               PARENT_PID_VARIABLE: str(os.getpid())}
        log = open(self.log_path(service.spec.name), "ab")  # noqa: SIM115 - owned by the child
        try:
            service.process = subprocess.Popen(
                service.spec.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise SupervisorError(f"cannot start {service.spec.name}: {exc}") from exc
        finally:
            log.close()
        service.state = ServiceState.RUNNING
        self._record()


# ---------------------------------------------------------------- what a previous run left

PARENT_PID_VARIABLE = "QUSTREAM_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a service started by a ``Supervisor``: have the kernel send SIGTERM to this process
    when the supervisor dies (Linux; elsewhere the run file's ``leftovers`` covers it). If the
    supervisor is already gone, stop now."""
    parent = os.environ.pop(PARENT_PID_VARIABLE, None)
    if parent is None or not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(parent):  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass(frozen=True, slots=True)
class Leftover:
    """A service a previous supervisor recorded that is still running."""

    name: str
    pid: int
    argv: tuple[str, ...]


def _command_line(pid: int) -> tuple[str, ...] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def previous_supervisor(run_file: Path) -> int | None:
    """The pid of the supervisor that wrote ``run_file`` if it is still running (another
    instance is in charge of those services), else None."""
    try:
        pid = int(json.loads(run_file.read_text())["supervisor_pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if pid != os.getpid() and _alive(pid) and _command_line(pid) else None


def leftovers(run_file: Path) -> list[Leftover]:
    """Services recorded in ``run_file`` that still run with the recorded command line (a
    recycled pid of another program is not a leftover)."""
    try:
        services = json.loads(run_file.read_text())["services"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    found = []
    for name, entry in sorted(services.items()):
        pid, argv = int(entry["pid"]), tuple(entry["argv"])
        if _command_line(pid) == argv:
            found.append(Leftover(name, pid, argv))
    return found


def stop_leftovers(found: Iterable[Leftover], run_file: Path, grace_s: float = 10.0) -> None:
    """SIGTERM each leftover's process group, SIGKILL what remains after ``grace_s``; then
    forget the run file."""
    found = list(found)
    for leftover in found:
        _signal_group(leftover.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_command_line(f.pid) for f in found):
        time.sleep(0.1)
    for leftover in found:
        if _command_line(leftover.pid) == leftover.argv:
            _signal_group(leftover.pid, signal.SIGKILL)
    run_file.unlink(missing_ok=True)


def _signal_group(pid: int, sig: int) -> None:
    # The group may already be gone (the service exited between poll and signal): fine.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
