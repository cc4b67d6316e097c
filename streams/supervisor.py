"""A small process supervisor for running the network's services side by side.

``qustream demo`` and the end-to-end tests run every service as a separate OS process, as a
deployment would. The supervisor starts them in their own sessions (so a stop reaches their
children too), writes each one's output to ``<log_dir>/<name>.log``, restarts a service that
exits unexpectedly (with a bounded count and a growing delay), and stops everything with
SIGTERM, then SIGKILL after a grace period. It deliberately does not try to be systemd: it is
the local stand-in for the Kubernetes controllers of the Helm chart.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
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
    ) -> None:
        self._services = {spec.name: _Service(spec) for spec in specs}
        self._log_dir = log_dir
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
                if not service.spec.restart:
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

    def _launch(self, service: _Service) -> None:
        env = {**os.environ, **service.spec.env, "PYTHONUNBUFFERED": "1"}
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


def _signal_group(pid: int, sig: int) -> None:
    # The group may already be gone (the service exited between poll and signal): fine.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
