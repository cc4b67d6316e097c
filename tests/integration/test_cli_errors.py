"""The ``qustream`` command as a newcomer meets it, run as a process: errors are one line on
stderr and exit status 2, an unreachable Kafka or Cassandra is given up on within a bounded
time with the address and the setting that chose it, and checks exit 1 when they find
something wrong (a block that does not exist, a tampered export)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.audit.export import write_export
from services.audit.sources import MemorySource
from streams.admin import ensure_topics
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CONNECT_TIMEOUT_S = 3


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUSTREAM_")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def qustream(*args: str, env: dict[str, str], cwd: Path, timeout_s: float = 120
             ) -> tuple[int, str, str, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout_s)
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


def assert_one_line_error(code: int, stderr: str, *needles: str) -> None:
    assert code == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("qustream: error: "), stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def genesis(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli-genesis")
    code, _out, err, _ = qustream("genesis", "new", "--out", str(out), "--validators", "1",
                                  "--sources", "1", env=_clean_env(), cwd=out)
    assert code == 0, err
    return out / "genesis.json"


def test_usage_and_input_errors_are_one_line(tmp_path: Path, genesis: Path) -> None:
    env = _clean_env()
    code, _out, err, _ = qustream("chain", "head", "--genesis", "/no/such/file", env=env,
                                  cwd=tmp_path)
    assert_one_line_error(code, err, "/no/such/file")

    assert qustream("users", "keygen", env=env, cwd=tmp_path)[0] == 0
    code, _out, err, _ = qustream("users", "keygen", env=env, cwd=tmp_path)
    assert_one_line_error(code, err, "user.json", "already exists")

    config = tmp_path / "qustream.toml"
    config.write_text('[kafka]\nbootstrap_server = "localhost:9092"\n')
    code, _out, err, _ = qustream("--config", str(config), "topics", "ensure", env=env,
                                  cwd=tmp_path)
    assert_one_line_error(code, err, "bootstrap_server", "[kafka]")
    config.write_text('state_dri = "x"\n')
    code, _out, err, _ = qustream("--config", str(config), "topics", "list", env=env,
                                  cwd=tmp_path)
    assert_one_line_error(code, err, "state_dri")

    code, _out, err, _ = qustream("--debug", "chain", "head", "--genesis", "/no/such/file",
                                  env=env, cwd=tmp_path)
    assert code != 0 and "Traceback" in err and len(err.splitlines()) > 3  # --debug: all of it


UNREACHABLE_KAFKA_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("chain", "head"),
    ("chain", "block", "3"),
    ("audit", "--no-users", "--no-progress", "--workers", "0"),
    ("topics", "ensure"),
    ("alerts", "list"),
    ("qrng", "status", "--once"),
    ("export", "--to", "export-dir", "--no-users"),
    ("monitor", "run", "--quiet"),
    ("alerts", "watch", "--duration", "5"),
    ("users", "handler"),
    ("gateway", "run", "--no-users", "--port", "0"),
)


def test_an_unreachable_kafka_is_given_up_on_in_bounded_time(tmp_path: Path,
                                                             genesis: Path) -> None:
    """Each command on its own process, all at once (they mostly wait for the timeout)."""
    port = _closed_port()
    env = _clean_env(QUSTREAM_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{port}",
                     QUSTREAM_KAFKA_CONNECT_TIMEOUT_S=str(CONNECT_TIMEOUT_S),
                     QUSTREAM_GENESIS=str(genesis))
    started = time.monotonic()
    running = []
    for index, args in enumerate(UNREACHABLE_KAFKA_COMMANDS):
        cwd = tmp_path / str(index)
        cwd.mkdir()
        running.append((args, subprocess.Popen(
            [sys.executable, "-m", "streams.cli", *args], env=env, cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    for args, process in running:
        try:
            _out, err = process.communicate(timeout=120)
        finally:
            process.kill()
        assert process.returncode == 2, (args, err)
        assert_one_line_error(process.returncode, err, f"127.0.0.1:{port}",
                              "QUSTREAM_KAFKA_BOOTSTRAP_SERVERS")
    # bounded: the connect timeout (plus start-up of a dozen processes on a busy machine)
    assert time.monotonic() - started < CONNECT_TIMEOUT_S + 60, UNREACHABLE_KAFKA_COMMANDS


def test_the_embedded_default_names_the_port_setting(tmp_path: Path, genesis: Path) -> None:
    port = _closed_port()
    env = _clean_env(QUSTREAM_INFRA_KAFKA_PORT=str(port),
                     QUSTREAM_KAFKA_CONNECT_TIMEOUT_S=str(CONNECT_TIMEOUT_S))
    code, _out, err, _ = qustream("chain", "head", "--genesis", str(genesis), env=env,
                                  cwd=tmp_path)
    assert_one_line_error(code, err, f"127.0.0.1:{port}", "QUSTREAM_INFRA_KAFKA_PORT",
                          "qustream infra up")


def test_an_unreachable_cassandra_is_one_line(tmp_path: Path) -> None:
    port = _closed_port()
    env = _clean_env(QUSTREAM_CASSANDRA_CONTACT_POINTS="127.0.0.1",
                     QUSTREAM_CASSANDRA_PORT=str(port))
    assert qustream("users", "keygen", "--out", "me.json", env=env, cwd=tmp_path)[0] == 0
    for args in (("users", "get", "--identity", "me.json"), ("users", "shard-writer")):
        code, _out, err, took = qustream(*args, env=env, cwd=tmp_path)
        assert_one_line_error(code, err, f"127.0.0.1:{port}",
                              "QUSTREAM_CASSANDRA_CONTACT_POINTS")
        assert took < 30


def test_a_block_that_does_not_exist_exits_1(settings: Settings, tmp_path: Path,
                                            genesis: Path) -> None:
    ensure_topics(settings)
    env = _clean_env(**settings.to_env())
    code, out, err, _ = qustream("chain", "block", "999999", "--genesis", str(genesis),
                                 env=env, cwd=tmp_path)
    assert code == 1, (out, err)
    assert "999999" in err and "Traceback" not in err


def test_audit_exit_status_of_an_export(tmp_path: Path, genesis: Path) -> None:
    """0 when every check holds, 1 when the export was altered, 2 when it cannot run."""
    export = tmp_path / "export"
    write_export(MemorySource({}), export, genesis, None)
    unreachable = _clean_env(QUSTREAM_KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{_closed_port()}",
                             QUSTREAM_CASSANDRA_CONTACT_POINTS="127.0.0.1",
                             QUSTREAM_CASSANDRA_PORT=str(_closed_port()))
    audit = ("audit", "--from-export", str(export), "--no-progress", "--workers", "0")

    code, out, err, _ = qustream(*audit, "--json", env=unreachable, cwd=tmp_path)
    assert code == 0, (out, err)
    assert json.loads(out)["ok"] is True

    began = json.loads(genesis.read_text())["genesis_time_ms"]
    code, out, err, _ = qustream(*audit, "--at-time", str(began - 1), env=unreachable,
                                 cwd=tmp_path)
    assert_one_line_error(code, err, "--at-time", "before the chain's genesis")

    code, out, err, _ = qustream("audit", "--from-export", str(tmp_path / "nothing"),
                                 env=unreachable, cwd=tmp_path)
    assert code == 2, (out, err)

    manifest = json.loads((export / "manifest.json").read_text())
    manifest["note"] = "altered after export"
    (export / "manifest.json").write_text(json.dumps(manifest))
    code, out, err, _ = qustream(*audit, "--json", env=unreachable, cwd=tmp_path)
    assert code == 1, (out, err)
    report = json.loads(out)
    assert report["ok"] is False and report["first_divergence"]["check"] == "export"


def _listening(port: int) -> set[str]:
    """Local addresses listening on ``port`` (IPv4), from /proc/net/tcp."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


@pytest.mark.parametrize(("host_args", "expected"), [((), "127.0.0.1"),
                                                     (("--host", "0.0.0.0"), "0.0.0.0")])
def test_the_gateway_listens_on_loopback_unless_asked(
        settings: Settings, tmp_path: Path, genesis: Path, host_args: tuple[str, ...],
        expected: str) -> None:
    port = _closed_port()
    env = _clean_env(**settings.to_env())
    process = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "gateway", "run", "--no-keys", "--no-users",
         "--port", str(port), "--genesis", str(genesis), *host_args],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not _listening(port):
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "the gateway did not start listening"
            time.sleep(0.2)
        assert _listening(port) == {expected}
    finally:
        process.terminate()
        process.wait(30)
