"""Process and port checks, Java discovery and status logic, without starting any server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from infra.local import JavaNotFoundError, LocalCluster, MavenNotFoundError, PortInUseError
from infra.local.java import find_java_home, find_maven, java_major_version
from infra.local.process import (
    exit_description,
    find_java_process,
    free_port,
    pid_alive,
    port_open,
    read_pid,
    tail_lines,
    terminate,
    write_pid,
)
from streams.settings import CassandraSettings, InfraSettings, KafkaSettings, Settings


def _fake_java_home(root: Path, name: str, version: str | None) -> Path:
    home = root / name
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "java").write_text("#!/bin/sh\n")
    if version is not None:
        (home / "release").write_text(f'IMPLEMENTOR="x"\nJAVA_VERSION="{version}"\n')
    return home


def test_java_major_version_from_release_file(tmp_path: Path) -> None:
    assert java_major_version(_fake_java_home(tmp_path, "a", "17.0.15")) == 17
    assert java_major_version(_fake_java_home(tmp_path, "b", "25")) == 25
    assert java_major_version(_fake_java_home(tmp_path, "c", "1.8.0_412")) == 8
    assert java_major_version(tmp_path / "nothing") is None


def test_find_java_prefers_settings_then_java_home_then_jvm_dir(tmp_path: Path) -> None:
    jvm = tmp_path / "jvm"
    system17 = _fake_java_home(jvm, "java-17-openjdk-amd64", "17.0.15")
    _fake_java_home(jvm, "temurin-25-jdk-amd64", "25.0.1")
    other17 = _fake_java_home(tmp_path, "custom17", "17.0.9")
    newer = _fake_java_home(tmp_path, "jdk25", "25")
    assert find_java_home(str(other17), {}, jvm) == other17.resolve()
    assert find_java_home(None, {"JAVA_HOME": str(other17)}, jvm) == other17.resolve()
    # JAVA_HOME pointing at a newer JDK is passed over, not used for Cassandra.
    assert find_java_home(None, {"JAVA_HOME": str(newer)}, jvm) == system17.resolve()


def test_wrong_explicit_java_is_an_error(tmp_path: Path) -> None:
    newer = _fake_java_home(tmp_path, "jdk25", "25")
    with pytest.raises(JavaNotFoundError, match="Java 25"):
        find_java_home(str(newer), {}, tmp_path / "jvm")


def test_missing_java_names_the_package(tmp_path: Path) -> None:
    _fake_java_home(tmp_path / "jvm", "temurin-25", "25")
    with pytest.raises(JavaNotFoundError, match="apt-get install openjdk-17-jre-headless"):
        find_java_home(None, {}, tmp_path / "jvm")


def test_missing_maven_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(MavenNotFoundError, match="apt-get install maven"):
        find_maven()


@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield int(server.getsockname()[1])


def test_port_checks(listening_port: int) -> None:
    assert port_open(listening_port)
    assert not port_open(free_port())


def test_pid_files(tmp_path: Path) -> None:
    pid_file = tmp_path / "x.pid"
    assert read_pid(pid_file) is None
    write_pid(pid_file, 4242)
    assert read_pid(pid_file) == 4242
    pid_file.write_text("garbage")
    assert read_pid(pid_file) is None


def test_pid_alive_sees_a_killed_child_as_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert pid_alive(child.pid)
        assert pid_alive(child.pid, must_contain="time.sleep")
        assert not pid_alive(child.pid, must_contain="kafka.Kafka")  # a recycled pid
        child.kill()
        # Until reaped, the killed child is a zombie that kill(pid, 0) still finds.
        deadline = time.monotonic() + 10
        while pid_alive(child.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(child.pid)
        assert exit_description(child.pid) == "killed by signal 9"
    finally:
        child.returncode = -9  # reaped above; keep Popen from waiting on it again


def test_terminate_stops_a_process_group() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             start_new_session=True)
    child.returncode = 0  # reaped by pid_alive(), not by Popen
    assert terminate(child.pid, grace_s=10)
    assert not pid_alive(child.pid)
    assert not terminate(child.pid)


def test_tail_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    assert tail_lines(log, 5) == []
    log.write_text("".join(f"line {i}\n" for i in range(1000)))
    assert tail_lines(log, 3) == ["line 997", "line 998", "line 999"]
    assert tail_lines(log, 0) == []


def _settings(tmp_path: Path, kafka_port: int, *, external_kafka: bool = False) -> Settings:
    return Settings(
        state_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers="broker:9092" if external_kafka else None),
        cassandra=CassandraSettings(contact_points=None),
        infra=InfraSettings(kafka_port=kafka_port, kafka_controller_port=free_port(),
                            cassandra_native_port=free_port(),
                            cassandra_storage_port=free_port()),
    )


def test_status_stopped_dead_and_port_busy(tmp_path: Path, listening_port: int) -> None:
    quiet = Console(quiet=True)
    cluster = LocalCluster(_settings(tmp_path, free_port()), console=quiet)
    assert [s.state for s in cluster.status()] == ["stopped", "stopped"]

    cluster.layouts["kafka"].home.mkdir(parents=True)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    write_pid(cluster.layouts["kafka"].pid_file, child.pid)
    dead = cluster.status(("kafka",))[0]
    assert (dead.state, dead.pid) == ("dead", child.pid)

    busy = LocalCluster(_settings(tmp_path, listening_port), console=quiet)
    assert busy.status(("kafka",))[0].state == "port-busy"
    with pytest.raises(PortInUseError, match=str(listening_port)):
        busy.up(("kafka",))


def test_external_parts_are_never_started(tmp_path: Path) -> None:
    cluster = LocalCluster(_settings(tmp_path, free_port(), external_kafka=True),
                           console=Console(quiet=True))
    status = cluster.status(("kafka",))[0]
    assert status.state == "external" and status.is_up
    assert cluster.kafka_bootstrap == "broker:9092"
    assert cluster.up(("kafka",))[0].state == "external"
    assert not cluster.layouts["kafka"].home.exists()


def test_a_server_whose_pid_file_was_lost_is_found(tmp_path: Path) -> None:
    fake_java = tmp_path / "bin" / "java"
    fake_java.parent.mkdir()
    # A POSIX shell stands in for the JVM: it starts in microseconds wherever the suite runs
    # (a symlinked interpreter may not, e.g. a relocatable Python that cannot find its prefix
    # through the link), and "sleep; true" keeps it from exec-ing sleep in its own place.
    fake_java.symlink_to(shutil.which("sh") or "/bin/sh")
    marker = str(tmp_path / "kafka" / "conf")
    child = subprocess.Popen([str(fake_java), "-c", "sleep 60; true",
                              f"-Dx={marker}/log4j2.properties", "kafka.Kafka"])
    try:
        assert child.poll() is None, "the stand-in JVM exited at once"
        # The scan may run while the child is still between fork and exec on a loaded machine
        # (its /proc entry then shows the parent's command line): look again for a while.
        deadline = time.monotonic() + 10
        found = find_java_process("kafka.Kafka", marker)
        while found != child.pid and time.monotonic() < deadline:
            time.sleep(0.1)
            found = find_java_process("kafka.Kafka", marker)
        cmdline = Path(f"/proc/{child.pid}/cmdline").read_bytes().split(b"\0")
        assert found == child.pid, (found, cmdline, child.poll())
        assert find_java_process("org.apache.cassandra.service.CassandraDaemon", marker) is None
        assert find_java_process("kafka.Kafka", str(tmp_path / "elsewhere")) is None
    finally:
        child.kill()
        child.wait()
