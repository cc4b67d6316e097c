"""The embedded Kafka (KRaft) and Cassandra, run as detached JVM processes.

State lives under ``settings.state_dir``. The single-node cluster (the default): ``kafka/`` and
``cassandra/`` each hold ``libs/`` (jars from Maven Central), ``conf/`` (rendered on every
start), ``data/`` (survives ``down``; wiped by ``reset``), ``logs/<name>.out`` (the process's
console) and ``<name>.pid``. The replicated cluster (``infra.kafka_brokers`` /
``infra.cassandra_nodes`` > 1) keeps the same per-node layout under ``kafka-x<n>/kafka-<i>/``
and ``cassandra-x<n>/cassandra-<i>/`` on its own ports (see ``nodes.py``).

Parts that the settings point at an external cluster are never started here; they are reported
as ``external``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from infra.local import config
from infra.local.config import COMPONENTS, LOOPBACK
from infra.local.errors import InfraError, PortInUseError, StartError
from infra.local.health import (
    NodeSync,
    cassandra_ready,
    cassandra_sync,
    kafka_ready,
    kafka_sync,
)
from infra.local.jars import resolve_jars
from infra.local.java import find_java_home
from infra.local.nodes import Node, plan_nodes
from infra.local.process import (
    exit_description,
    find_java_process,
    pid_alive,
    port_open,
    read_pid,
    spawn_detached,
    tail_lines,
    terminate_all,
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
    """What ``status`` knows about one server process (one node of a component)."""

    component: str
    state: State
    pid: int | None
    port: int
    address: str
    data_dir: Path | None
    node: str = ""  # "kafka-2"; the component's name for the single-node cluster
    role: str = ""
    in_sync: bool | None = None  # None: not asked (``status(sync=False)``) or not up
    sync_detail: str = ""

    @property
    def is_up(self) -> bool:
        return self.state in ("up", "external")

    def to_dict(self) -> dict[str, Any]:
        return {"component": self.component, "node": self.node or self.component,
                "role": self.role, "state": self.state, "pid": self.pid, "port": self.port,
                "address": self.address,
                "data_dir": str(self.data_dir) if self.data_dir else None,
                "in_sync": self.in_sync, "sync_detail": self.sync_detail}


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
        self.plan = plan_nodes(settings.infra, self.state_dir, libs_root)
        self._nodes = {node.name: node for nodes in self.plan.values() for node in nodes}
        self.layouts = {name: node.layout for name, node in self._nodes.items()}
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

    def nodes(self, components: Sequence[str] = COMPONENTS) -> list[Node]:
        """The local server processes of the named components (none for external ones)."""
        return [node for name in components for node in self.plan[_check_component(name)]
                if not self._external(name)]

    def node(self, name: str) -> Node:
        try:
            return self._nodes[name]
        except KeyError as exc:
            raise InfraError(f"no node {name!r}; this cluster has "
                             f"{', '.join(self._nodes)}") from exc

    def _external(self, component: str) -> bool:
        if component == "kafka":
            return self.settings.uses_external_kafka
        return self.settings.uses_external_cassandra

    def _external_address(self, component: str) -> str:
        if component == "kafka":
            return self.kafka_bootstrap
        host, port = self.cassandra_contact
        return f"{host}:{port}"

    @staticmethod
    def _marker(node: Node) -> str:
        # Our servers' command lines name their conf dir; a recycled pid will not.
        return str(node.layout.conf)

    # -- status ---------------------------------------------------------------------------------

    def status(self, components: Sequence[str] = COMPONENTS, *,
               sync: bool = False) -> list[ComponentStatus]:
        """One entry per node (one per external component). ``sync`` also asks the running
        servers whether each node is in sync (slower: it connects to them)."""
        out: list[ComponentStatus] = []
        for component in [_check_component(name) for name in components]:
            if self._external(component):
                out.append(ComponentStatus(component, "external", None, 0,
                                           self._external_address(component), None,
                                           node=component, role="external"))
                continue
            statuses = [self._status(node) for node in self.plan[component]]
            if sync and any(s.state == "up" for s in statuses):
                verdicts = self._sync(component)
                statuses = [_with_sync(s, verdicts.get(s.node)) if s.state == "up" else s
                            for s in statuses]
            out.extend(statuses)
        return out

    def _sync(self, component: str) -> dict[str, NodeSync]:
        nodes = self.plan[component]
        return kafka_sync(nodes) if component == "kafka" else cassandra_sync(nodes)

    def _status(self, node: Node) -> ComponentStatus:
        layout = node.layout
        pid = read_pid(layout.pid_file)
        alive = pid is not None and pid_alive(pid, self._marker(node))
        answering = port_open(node.port, node.host)
        if not alive:
            orphan = find_java_process(_MAIN_CLASS[node.component], self._marker(node))
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
        return ComponentStatus(node.component, state, pid if alive or state == "dead" else None,
                               node.port, node.address, layout.data, node=node.name,
                               role=node.role)

    # -- up -------------------------------------------------------------------------------------

    def up(self, components: Sequence[str] = COMPONENTS) -> list[ComponentStatus]:
        """Make every node of the named components run and answer; running ones are left alone.

        Dead processes (crashed, killed) are restarted on their existing data. Kafka brokers
        start together (a KRaft quorum needs a majority of its voters before any broker is
        ready); Cassandra starts first (the slower) and, in a ring, one node after another,
        each awaited before the next joins, as Cassandra requires.
        """
        wanted = [_check_component(name) for name in components]
        with self._lock():
            to_start: list[Node] = []
            to_wait: list[Node] = []
            for status in self.status(wanted):
                if status.state == "external":
                    continue
                node = self._nodes[status.node]
                if status.state == "port-busy":
                    raise PortInUseError(
                        f"port {status.port} on {node.host} needed by the embedded {node.name} "
                        f"answers, but not from a process started under {self.state_dir}; stop "
                        f"that process or choose other ports (QUSTREAM_INFRA_*_PORT)")
                if status.state == "starting":
                    to_wait.append(node)
                elif status.state in ("dead", "stopped"):
                    self._check_internal_port_free(node)
                    to_start.append(node)
            if to_start or to_wait:
                try:
                    self._bring_up(to_start, to_wait)
                except StartError:
                    # A half-started server would hold ports and the data dir's lock and make
                    # the next `up` report "port-busy"; stop what did not come up.
                    self._down([n for n in to_start + to_wait if self._status(n).state != "up"])
                    raise
            return self.status(wanted)

    def _bring_up(self, to_start: list[Node], to_wait: list[Node]) -> None:
        java = Path()
        if to_start:
            java_home = find_java_home(self.settings.infra.java_home)
            java = java_home / "bin" / "java"
            for component in dict.fromkeys(node.component for node in to_start):
                self._resolve(component, java_home)
        cassandra = sorted((n for n in to_start if n.component == "cassandra"),
                           key=lambda n: n.index)
        kafka = [n for n in to_start if n.component == "kafka"]
        pending = list(to_wait)
        # Cassandra takes the longest: get its first node going before Kafka's storage format.
        if cassandra:
            self._start(cassandra[0], java)
            pending.append(cassandra[0])
        if kafka:
            self._format_kafka(kafka, java)
            for node in kafka:
                self._start(node, java)
            pending.extend(kafka)
        if len(cassandra) > 1 or (cassandra and any(n.component == "cassandra" for n in to_wait)):
            # A ring: every other Cassandra node must be up before the next one joins.
            joined = [n for n in pending if n.component == "cassandra"]
            self._wait_ready(joined)
            pending = [n for n in pending if n not in joined]
            for node in cassandra[1:]:
                self._start(node, java)
                self._wait_ready([node])
        self._wait_ready(pending)

    def _check_internal_port_free(self, node: Node) -> None:
        if port_open(node.internal_port, node.host):
            raise PortInUseError(
                f"port {node.internal_port} on {node.host} needed by the embedded {node.name} is "
                f"taken by another process; stop it or choose another port "
                f"(QUSTREAM_INFRA_*_PORT)")

    def _resolve(self, component: str, java_home: Path) -> None:
        libs = self.plan[component][0].layout.libs
        version = (self.settings.infra.kafka_version if component == "kafka"
                   else self.settings.infra.cassandra_version)
        started = time.monotonic()
        with self.console.status(f"resolving {component} {version} jars from Maven Central "
                                 f"(first time only, takes about a minute)"):
            ran = resolve_jars(component, version, libs, java_home)
        if ran:
            self.timings[f"{component}_resolve_s"] = time.monotonic() - started
            self.console.print(f"[green]✓[/] {component} {version} jars resolved into "
                               f"{libs} in {time.monotonic() - started:.1f}s")

    def _write_configs(self, node: Node) -> None:
        layout = node.layout
        for folder in (layout.conf, layout.data, layout.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
        if node.component == "kafka":
            if node.replicated:
                properties = config.kafka_replicated_properties(
                    node_id=node.index, ports=self.settings.infra.kafka_broker_ports(),
                    data_dir=layout.data)
            else:
                properties = config.kafka_server_properties(
                    port=node.port, controller_port=node.internal_port, data_dir=layout.data)
            (layout.conf / "server.properties").write_text(properties)
            (layout.conf / "log4j2.properties").write_text(config.kafka_log4j2_properties())
            return
        if node.replicated:
            yaml = config.cassandra_ring_yaml(
                cluster_name="qustream-ring", node_index=node.index, nodes=node.members,
                native_port=node.port, storage_port=node.internal_port, data_root=layout.data)
            (layout.conf / "cassandra-rackdc.properties").write_text(
                config.cassandra_rackdc_properties())
        else:
            yaml = config.cassandra_yaml(
                cluster_name="qustream-local", native_port=node.port,
                storage_port=node.internal_port, data_root=layout.data)
        (layout.conf / "cassandra.yaml").write_text(yaml)
        (layout.conf / "logback.xml").write_text(config.cassandra_logback_xml())

    def _format_kafka(self, nodes: list[Node], java: Path) -> None:
        """Format the KRaft storage once per data dir (a formatted dir has meta.properties),
        with one cluster id for all brokers of the cluster; formats run in parallel."""
        unformatted = [n for n in nodes if not (n.layout.data / "meta.properties").exists()]
        if not unformatted:
            return
        id_file = unformatted[0].cluster_home / "cluster-id"
        if not id_file.exists() or id_file.read_text().strip().startswith("-"):
            id_file.parent.mkdir(parents=True, exist_ok=True)
            id_file.write_text(config.fresh_kafka_cluster_id(secrets.token_bytes) + "\n")
        cluster_id = id_file.read_text().strip()
        running: list[tuple[Node, subprocess.Popen[str]]] = []
        with self.console.status("formatting Kafka storage (first start only)"):
            for node in unformatted:
                self._write_configs(node)
                command = config.kafka_format_command(java, layout=node.layout,
                                                      cluster_id=cluster_id)
                running.append((node, subprocess.Popen(
                    command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                    cwd=node.layout.home)))
            for node, process in running:
                try:
                    output, _ = process.communicate(timeout=300)
                except subprocess.TimeoutExpired:
                    process.kill()
                    output, _ = process.communicate()
                if process.returncode != 0:
                    raise StartError(f"formatting Kafka storage of {node.name} failed:\n"
                                     + "\n".join(output.splitlines()[-20:]))

    def _start(self, node: Node, java: Path) -> None:
        layout = node.layout
        self._write_configs(node)
        infra = self.settings.infra
        if node.component == "kafka":
            heap = infra.replicated_kafka_heap if node.replicated else infra.kafka_heap
            command = config.kafka_start_command(java, heap=heap, layout=layout)
        else:
            jamm = sorted(layout.libs.glob("jamm-*.jar"))
            heap = infra.replicated_cassandra_heap if node.replicated else infra.cassandra_heap
            token = (config.cassandra_ring_token(node.index, node.members) if node.replicated
                     else "0")
            command = config.cassandra_start_command(
                java, heap=heap, layout=layout, gc=self.cassandra_gc,
                jamm_jar=jamm[-1] if jamm else None, initial_token=token, ring=node.replicated)
        env = {**os.environ, "JAVA_HOME": str(java.parent.parent)}
        pid = spawn_detached(command, log_file=layout.log_file, cwd=layout.home, env=env)
        write_pid(layout.pid_file, pid)
        self._started_at[node.name] = time.monotonic()
        self.console.print(f"[cyan]…[/] {node.name} starting (pid {pid}, log {layout.log_file})")

    def _wait_ready(self, nodes: list[Node]) -> None:
        if not nodes:
            return
        deadline = time.monotonic() + self.settings.infra.start_timeout_s
        began = {n.name: self._started_at.get(n.name, time.monotonic()) for n in nodes}
        pending = list(nodes)
        probes: dict[str, Callable[[Node], bool]] = {"kafka": kafka_ready,
                                                     "cassandra": cassandra_ready}
        with self.console.status("") as spinner:
            while pending:
                spinner.update(f"waiting for {', '.join(n.name for n in pending)} to answer "
                               f"({time.monotonic() - min(began.values()):.0f}s)")
                for node in list(pending):
                    pid = read_pid(node.layout.pid_file)
                    if pid is None or not pid_alive(pid, self._marker(node)):
                        how = exit_description(pid) if pid is not None else None
                        raise StartError(self._failure(
                            node, f"(pid {pid}) exited during start ({how or 'unknown'})"))
                    if probes[node.component](node):
                        pending.remove(node)
                        took = time.monotonic() - began[node.name]
                        self.timings[f"{node.name}_start_s"] = took
                        self.console.print(f"[green]✓[/] {node.name} ready at {node.address} "
                                           f"in {took:.1f}s")
                if pending and time.monotonic() > deadline:
                    limit = self.settings.infra.start_timeout_s
                    raise StartError(self._failure(
                        pending[0], f"did not answer within {limit:.0f}s (raise "
                        "QUSTREAM_INFRA_START_TIMEOUT_S on a slow machine)"))
                if pending:
                    time.sleep(0.5)

    def _failure(self, node: Node, what: str) -> str:
        log_file = node.layout.log_file
        tail = "\n".join(tail_lines(log_file, 25))
        return f"embedded {node.name} {what}; last lines of {log_file}:\n{tail}"

    # -- faults, down / reset / logs ------------------------------------------------------------

    def kill(self, name: str) -> int:
        """kill -9 one node (fault injection for tests and benchmarks); returns its pid. The
        next ``up`` restarts it on its data."""
        node = self.node(name)
        status = self._status(node)
        if status.state not in ("up", "starting") or status.pid is None:
            raise InfraError(f"{name} is {status.state}, nothing to kill")
        os.kill(status.pid, 9)
        deadline = time.monotonic() + 30
        while pid_alive(status.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        return status.pid

    def down(self, components: Sequence[str] = COMPONENTS) -> list[ComponentStatus]:
        """Stop the named local servers gracefully (SIGTERM, then SIGKILL after a grace time)."""
        wanted = [_check_component(name) for name in components]
        with self._lock():
            self._down(self.nodes(wanted))
            return self.status(wanted)

    def _down(self, nodes: Sequence[Node]) -> None:
        # All nodes of a component at once: a broker's controlled shutdown needs the quorum,
        # which stopping the brokers one after another would take away from the last ones.
        for component in COMPONENTS:
            group = [n for n in nodes if n.component == component]
            running = [(n, read_pid(n.layout.pid_file)) for n in group]
            targets = [(pid, self._marker(n)) for n, pid in running if pid is not None]
            if targets:
                names = ", ".join(n.name for n, pid in running if pid is not None)
                with self.console.status(f"stopping {names}"):
                    stopped = terminate_all(targets)
                for (node, _pid), was_running in zip(
                        [(n, p) for n, p in running if p is not None], stopped, strict=True):
                    if was_running:
                        self.console.print(f"[green]✓[/] {node.name} stopped")
            for node in group:
                node.layout.pid_file.unlink(missing_ok=True)

    def reset(self, components: Sequence[str] = COMPONENTS) -> None:
        """Stop the named local servers and delete their data (the jars are kept)."""
        wanted = [_check_component(name) for name in components]
        with self._lock():
            nodes = self.nodes(wanted)
            self._down(nodes)
            for node in nodes:
                layout = node.layout
                for path in (layout.data, layout.conf, layout.log_dir,
                             node.cluster_home / "cluster-id"):
                    if path.is_dir():
                        shutil.rmtree(path)
                    else:
                        path.unlink(missing_ok=True)
                self.console.print(f"[green]✓[/] {node.name} data wiped")

    def logs(self, component: str, index: int = 1) -> Path:
        """The file holding the console output of a component's node ``index`` (1-based)."""
        nodes = self.plan[_check_component(component)]
        if not 1 <= index <= len(nodes):
            raise InfraError(f"{component} has nodes 1..{len(nodes)}, not {index}")
        return nodes[index - 1].layout.log_file

    def tail(self, component: str, lines: int, index: int = 1) -> list[str]:
        return tail_lines(self.logs(component, index), lines)

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


def _with_sync(status: ComponentStatus, verdict: NodeSync | None) -> ComponentStatus:
    if verdict is None:
        return status
    return replace(status, in_sync=verdict.in_sync, sync_detail=verdict.detail)


def _check_component(name: str) -> str:
    if name not in COMPONENTS:
        raise InfraError(f"unknown component {name!r}; expected one of {', '.join(COMPONENTS)}")
    return name


__all__ = ["LOOPBACK", "STATE_HELP", "ComponentStatus", "LocalCluster"]
