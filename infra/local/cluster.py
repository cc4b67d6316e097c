"""The embedded single-node Kafka (KRaft) and Cassandra, run as detached JVM processes.

State lives under ``settings.state_dir``: ``kafka/`` and ``cassandra/`` each hold ``libs/`` (jars
from Maven Central), ``conf/`` (rendered on every start), ``data/`` (survives ``down``; wiped by
``reset``), ``logs/<name>.out`` (the process's console) and ``<name>.pid``.

Parts that the settings point at an external cluster are never started here; they are reported
as ``external``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from infra.local import config
from infra.local.config import COMPONENTS, LOOPBACK, ComponentLayout
from infra.local.errors import InfraError, PortInUseError, StartError
from infra.local.jars import resolve_jars
from infra.local.java import find_java_home
from infra.local.process import (
    exit_description,
    find_java_process,
    pid_alive,
    port_open,
    read_pid,
    spawn_detached,
    tail_lines,
    terminate,
    write_pid,
)
from streams.settings import Settings

State = Literal["up", "starting", "dead", "stopped", "external", "port-busy"]
_MAIN_CLASS = {"kafka": config.KAFKA_MAIN, "cassandra": config.CASSANDRA_MAIN}
STATE_HELP: dict[str, str] = {
    "up": "process alive and its port answers",
    "starting": "process alive, port not answering yet (starting, or hung)",
    "dead": "pid file left behind by a process that is gone (crashed or killed)",
    "stopped": "not running",
    "external": "configured to use an external cluster; nothing local",
    "port-busy": "not running here, but another process answers on its port",
}


@dataclass(frozen=True)
class ComponentStatus:
    """What ``status`` knows about one server."""

    component: str
    state: State
    pid: int | None
    port: int
    address: str
    data_dir: Path | None

    @property
    def is_up(self) -> bool:
        return self.state in ("up", "external")

    def to_dict(self) -> dict[str, Any]:
        return {"component": self.component, "state": self.state, "pid": self.pid,
                "port": self.port, "address": self.address,
                "data_dir": str(self.data_dir) if self.data_dir else None}


class LocalCluster:
    """Start, stop, inspect and wipe the embedded cluster described by ``settings``.

    ``jars_from`` names another state dir whose resolved jars to reuse (tests run extra clusters
    without copying 150 MB of jars again). ``cassandra_gc`` is "G1" or "Serial".
    """

    def __init__(self, settings: Settings, *, console: Console | None = None,
                 jars_from: Path | None = None, cassandra_gc: str = "G1") -> None:
        self.settings = settings
        self.state_dir = Path(settings.state_dir).resolve()
        self.console = console or Console(stderr=True)
        libs_root = Path(jars_from).resolve() if jars_from else None
        self.layouts = {name: ComponentLayout.under(self.state_dir, name, libs_root)
                        for name in COMPONENTS}
        self.cassandra_gc = cassandra_gc
        self.timings: dict[str, float] = {}
        self._started_at: dict[str, float] = {}

    # -- addresses ------------------------------------------------------------------------------

    @property
    def kafka_bootstrap(self) -> str:
        return self.settings.kafka_bootstrap()

    @property
    def cassandra_contact(self) -> tuple[str, int]:
        hosts, port = self.settings.cassandra_endpoint()
        return hosts[0], port

    def _external(self, component: str) -> bool:
        if component == "kafka":
            return self.settings.uses_external_kafka
        return self.settings.uses_external_cassandra

    def _ports(self, component: str) -> tuple[int, int]:
        """(client port, internal port): Kafka's controller, Cassandra's storage port."""
        infra = self.settings.infra
        if component == "kafka":
            return infra.kafka_port, infra.kafka_controller_port
        return infra.cassandra_native_port, infra.cassandra_storage_port

    def _address(self, component: str) -> str:
        if component == "kafka":
            return self.kafka_bootstrap
        host, port = self.cassandra_contact
        return f"{host}:{port}"

    def _marker(self, component: str) -> str:
        # Our servers' command lines name their conf dir; a recycled pid will not.
        return str(self.layouts[component].conf)

    # -- status ---------------------------------------------------------------------------------

    def status(self, components: Sequence[str] = COMPONENTS) -> list[ComponentStatus]:
        return [self._status(_check_component(name)) for name in components]

    def _status(self, component: str) -> ComponentStatus:
        layout = self.layouts[component]
        port = self._ports(component)[0] if not self._external(component) else 0
        if self._external(component):
            return ComponentStatus(component, "external", None, port, self._address(component),
                                   None)
        pid = read_pid(layout.pid_file)
        alive = pid is not None and pid_alive(pid, self._marker(component))
        answering = port_open(port)
        if not alive:
            orphan = find_java_process(_MAIN_CLASS[component], self._marker(component))
            if orphan is not None:
                write_pid(layout.pid_file, orphan)
                pid, alive = orphan, True
        state: State
        if alive:
            state = "up" if answering else "starting"
        elif answering:
            state = "port-busy"
        else:
            state = "dead" if pid is not None else "stopped"
        return ComponentStatus(component, state, pid if alive or state == "dead" else None, port,
                               self._address(component), layout.data)

    # -- up -------------------------------------------------------------------------------------

    def up(self, components: Sequence[str] = COMPONENTS) -> list[ComponentStatus]:
        """Make the named components run and answer; already-running ones are left alone.

        Dead processes (crashed, killed) are restarted on their existing data. Both servers
        start in parallel: Cassandra first (the slower), then Kafka, then both are awaited.
        """
        wanted = [_check_component(name) for name in components]
        with self._lock():
            to_start: list[str] = []
            to_wait: list[str] = []
            for status in self.status(wanted):
                if status.state == "port-busy":
                    raise PortInUseError(
                        f"port {status.port} needed by the embedded {status.component} answers, "
                        f"but not from a process started under {self.state_dir}; stop that "
                        f"process or choose other ports (QUSTREAM_INFRA_*_PORT)")
                if status.state == "starting":
                    to_wait.append(status.component)
                elif status.state in ("dead", "stopped"):
                    self._check_internal_port_free(status.component)
                    to_start.append(status.component)
            if to_start:
                java_home = find_java_home(self.settings.infra.java_home)
                java = java_home / "bin" / "java"
                for component in to_start:
                    self._resolve(component, java_home)
                # Cassandra takes the longest: get it going before Kafka's storage format.
                for component in sorted(to_start, key=lambda c: c != "cassandra"):
                    self._start(component, java)
            if to_start or to_wait:
                try:
                    self._wait_ready(to_start + to_wait)
                except StartError:
                    # A half-started server would hold ports and the data dir's lock and make
                    # the next `up` report "port-busy"; stop what did not come up.
                    self._down([c for c in to_start + to_wait if self._status(c).state != "up"])
                    raise
            return self.status(wanted)

    def _check_internal_port_free(self, component: str) -> None:
        internal = self._ports(component)[1]
        if port_open(internal):
            raise PortInUseError(
                f"port {internal} needed by the embedded {component} is taken by another "
                f"process; stop it or choose another port (QUSTREAM_INFRA_*_PORT)")

    def _resolve(self, component: str, java_home: Path) -> None:
        layout = self.layouts[component]
        version = (self.settings.infra.kafka_version if component == "kafka"
                   else self.settings.infra.cassandra_version)
        started = time.monotonic()
        with self.console.status(f"resolving {component} {version} jars from Maven Central "
                                 f"(first time only, takes about a minute)"):
            ran = resolve_jars(component, version, layout.libs, java_home)
        if ran:
            self.timings[f"{component}_resolve_s"] = time.monotonic() - started
            self.console.print(f"[green]✓[/] {component} {version} jars resolved into "
                               f"{layout.libs} in {time.monotonic() - started:.1f}s")

    def _write_configs(self, component: str) -> None:
        layout = self.layouts[component]
        for folder in (layout.conf, layout.data, layout.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
        infra = self.settings.infra
        if component == "kafka":
            (layout.conf / "server.properties").write_text(config.kafka_server_properties(
                port=infra.kafka_port, controller_port=infra.kafka_controller_port,
                data_dir=layout.data))
            (layout.conf / "log4j2.properties").write_text(config.kafka_log4j2_properties())
        else:
            (layout.conf / "cassandra.yaml").write_text(config.cassandra_yaml(
                cluster_name="qustream-local", native_port=infra.cassandra_native_port,
                storage_port=infra.cassandra_storage_port, data_root=layout.data))
            (layout.conf / "logback.xml").write_text(config.cassandra_logback_xml())

    def _format_kafka(self, java: Path) -> None:
        """Format the KRaft storage once per data dir (a formatted dir has meta.properties)."""
        layout = self.layouts["kafka"]
        if (layout.data / "meta.properties").exists():
            return
        id_file = layout.home / "cluster-id"
        if not id_file.exists():
            id_file.write_text(config.new_kafka_cluster_id(secrets.token_bytes(16)) + "\n")
        command = config.kafka_format_command(java, layout=layout,
                                              cluster_id=id_file.read_text().strip())
        with self.console.status("formatting Kafka storage (first start only)"):
            done = subprocess.run(command, capture_output=True, text=True, check=False,
                                  cwd=layout.home, timeout=300)
        if done.returncode != 0:
            raise StartError("formatting Kafka storage failed:\n"
                             + "\n".join((done.stdout + done.stderr).splitlines()[-20:]))

    def _start(self, component: str, java: Path) -> None:
        layout = self.layouts[component]
        self._write_configs(component)
        infra = self.settings.infra
        if component == "kafka":
            self._format_kafka(java)
            command = config.kafka_start_command(java, heap=infra.kafka_heap, layout=layout)
        else:
            jamm = sorted(layout.libs.glob("jamm-*.jar"))
            command = config.cassandra_start_command(
                java, heap=infra.cassandra_heap, layout=layout, gc=self.cassandra_gc,
                jamm_jar=jamm[-1] if jamm else None)
        env = {**os.environ, "JAVA_HOME": str(java.parent.parent)}
        pid = spawn_detached(command, log_file=layout.log_file, cwd=layout.home, env=env)
        write_pid(layout.pid_file, pid)
        self._started_at[component] = time.monotonic()
        self.console.print(f"[cyan]…[/] {component} starting (pid {pid}, log {layout.log_file})")

    def _wait_ready(self, components: list[str]) -> None:
        deadline = time.monotonic() + self.settings.infra.start_timeout_s
        began = {c: self._started_at.get(c, time.monotonic()) for c in components}
        pending = list(components)
        probes: dict[str, Callable[[], bool]] = {"kafka": self._kafka_ready,
                                                 "cassandra": self._cassandra_ready}
        with self.console.status("") as spinner:
            while pending:
                spinner.update(f"waiting for {', '.join(pending)} to answer "
                               f"({time.monotonic() - min(began.values()):.0f}s)")
                for component in list(pending):
                    pid = read_pid(self.layouts[component].pid_file)
                    if pid is None or not pid_alive(pid, self._marker(component)):
                        how = exit_description(pid) if pid is not None else None
                        raise StartError(self._failure(
                            component, f"(pid {pid}) exited during start ({how or 'unknown'})"))
                    if probes[component]():
                        pending.remove(component)
                        took = time.monotonic() - began[component]
                        self.timings[f"{component}_start_s"] = took
                        self.console.print(f"[green]✓[/] {component} ready at "
                                           f"{self._address(component)} in {took:.1f}s")
                if pending and time.monotonic() > deadline:
                    limit = self.settings.infra.start_timeout_s
                    raise StartError(self._failure(
                        pending[0], f"did not answer within {limit:.0f}s (raise "
                        "QUSTREAM_INFRA_START_TIMEOUT_S on a slow machine)"))
                if pending:
                    time.sleep(0.5)

    def _failure(self, component: str, what: str) -> str:
        layout = self.layouts[component]
        tail = "\n".join(tail_lines(layout.log_file, 25))
        return f"embedded {component} {what}; last lines of {layout.log_file}:\n{tail}"

    def _kafka_ready(self) -> bool:
        if not port_open(self.settings.infra.kafka_port):
            return False
        from streams.admin import brokers_answer

        quiet = logging.getLogger("infra.local.kafka_probe")
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
        conf: dict[str, Any] = {"bootstrap.servers": self.kafka_bootstrap, "logger": quiet,
                                "socket.timeout.ms": 2000}
        return brokers_answer(conf, 3)

    def _cassandra_ready(self) -> bool:
        host, port = self.cassandra_contact
        if not port_open(port, host):
            return False
        from cassandra.cluster import (
            EXEC_PROFILE_DEFAULT,
            Cluster,
            ExecutionProfile,
            NoHostAvailable,
        )
        from cassandra.policies import DCAwareRoundRobinPolicy

        profile = ExecutionProfile(load_balancing_policy=DCAwareRoundRobinPolicy(
            local_dc=self.settings.cassandra.local_datacenter), request_timeout=5)
        cluster = Cluster([host], port=port, connect_timeout=3, control_connection_timeout=3,
                          execution_profiles={EXEC_PROFILE_DEFAULT: profile})
        try:
            session = cluster.connect()
            row = session.execute("SELECT release_version FROM system.local").one()
            return row is not None
        except (NoHostAvailable, OSError, Exception):  # any failure means: not ready yet
            return False
        finally:
            cluster.shutdown()

    # -- down / reset / logs --------------------------------------------------------------------

    def down(self, components: Sequence[str] = COMPONENTS) -> list[ComponentStatus]:
        """Stop the named local servers gracefully (SIGTERM, then SIGKILL after a grace time)."""
        wanted = [_check_component(name) for name in components]
        with self._lock():
            self._down(wanted)
            return self.status(wanted)

    def _down(self, components: Sequence[str]) -> None:
        for component in components:
            if self._external(component):
                continue
            layout = self.layouts[component]
            pid = read_pid(layout.pid_file)
            if pid is not None:
                with self.console.status(f"stopping {component} (pid {pid})"):
                    stopped = terminate(pid, must_contain=self._marker(component))
                if stopped:
                    self.console.print(f"[green]✓[/] {component} stopped")
            layout.pid_file.unlink(missing_ok=True)

    def reset(self, components: Sequence[str] = COMPONENTS) -> None:
        """Stop the named local servers and delete their data (the jars are kept)."""
        wanted = [_check_component(name) for name in components]
        with self._lock():
            self._down(wanted)
            for component in wanted:
                if self._external(component):
                    continue
                layout = self.layouts[component]
                for path in (layout.data, layout.conf, layout.log_dir,
                             layout.home / "cluster-id"):
                    if path.is_dir():
                        shutil.rmtree(path)
                    else:
                        path.unlink(missing_ok=True)
                self.console.print(f"[green]✓[/] {component} data wiped")

    def logs(self, component: str) -> Path:
        """The file holding the component's console output."""
        return self.layouts[_check_component(component)].log_file

    def tail(self, component: str, lines: int) -> list[str]:
        return tail_lines(self.logs(component), lines)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One `up`/`down`/`reset` at a time per state dir (several pytest runs share one)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".infra.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _check_component(name: str) -> str:
    if name not in COMPONENTS:
        raise InfraError(f"unknown component {name!r}; expected one of {', '.join(COMPONENTS)}")
    return name


__all__ = ["LOOPBACK", "STATE_HELP", "ComponentStatus", "LocalCluster"]
