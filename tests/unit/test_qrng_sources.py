"""Sources: simulator, device file, HTTP appliance (with a local server), faults, spec parsing."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from services.qrng_ingest.cli import app
from services.qrng_ingest.core.health import HealthParameters, RctCarry, check_block
from services.qrng_ingest.sources import (
    Backoff,
    DeviceFileSource,
    FaultSource,
    HttpApplianceSource,
    SimulatorSource,
    SourceSpecError,
    parse_source,
)


def test_simulator_is_flagged_and_random() -> None:
    source = SimulatorSource(rekey_bytes=1 << 16)
    assert source.simulated
    blocks = [source.read(1 << 15) for _ in range(4)]
    assert all(len(b) == 1 << 15 for b in blocks)
    assert len(set(blocks)) == 4
    params = HealthParameters.derive(8, 40, binary=False)
    health, _ = check_block(params, RctCarry(), b"".join(blocks))
    assert health.passed


def test_device_file_source(tmp_path: Path) -> None:
    path = tmp_path / "hwrng"
    path.write_bytes(os.urandom(3000))
    source = DeviceFileSource(str(path))
    assert not source.simulated
    assert len(source.read(2048)) == 2048
    assert len(source.read(2048)) == 952
    assert source.read(2048) == b""
    source.close()


class _Appliance:
    """A tiny QRNG appliance: streams random bytes, drops the connection after ``per_connection``
    bytes, and refuses requests without the expected auth header."""

    def __init__(self, per_connection: int, fail_first: int = 0) -> None:
        self.connections = 0
        self.refused = 0
        self.fail_first = fail_first
        appliance = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.headers.get("Authorization") != "Bearer s3cret":
                    appliance.refused += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                appliance.connections += 1
                if appliance.connections <= appliance.fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                self.wfile.write(os.urandom(per_connection))

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def appliance() -> Iterator[_Appliance]:
    server = _Appliance(per_connection=10_000, fail_first=2)
    yield server
    server.close()


def test_http_appliance_reconnects_with_backoff(appliance: _Appliance) -> None:
    source = HttpApplianceSource(appliance.url, auth_header="Authorization: Bearer s3cret",
                                 backoff=Backoff(initial_s=0.01, max_s=0.05))
    assert not source.simulated
    received = 0
    deadline = time.monotonic() + 20
    while received < 35_000 and time.monotonic() < deadline:
        received += len(source.read(4096))
    source.close()
    assert received >= 35_000
    assert appliance.connections >= 2 + 4  # two refused with 503, then one per 10 kB
    assert source.reconnects >= 3
    assert appliance.refused == 0


def test_http_appliance_without_auth_is_refused_and_reports_stall(appliance: _Appliance) -> None:
    source = HttpApplianceSource(appliance.url, backoff=Backoff(initial_s=0.01, max_s=0.02))
    assert source.read(100) == b""
    assert "401" in (source.last_error or "")
    source.close()


def test_fault_sources() -> None:
    stuck = FaultSource("stuck", after=1024, length=2048, value=7)
    data = np.frombuffer(stuck.read(8192), dtype=np.uint8)
    assert (data[1024:3072] == 7).all() and not (data[3072:] == 7).all()
    biased = FaultSource("biased", p=0.5, value=0x5A)
    data = np.frombuffer(biased.read(1 << 16), dtype=np.uint8)
    assert 0.45 < (data == 0x5A).mean() < 0.56
    burst = FaultSource("burst", after=0, length=16, every=4096, value=1)
    data = np.frombuffer(burst.read(8192), dtype=np.uint8)
    assert (data[:16] == 1).all() and (data[4096:4112] == 1).all()
    stall = FaultSource("stall", after=512, length=0)
    assert len(stall.read(512)) == 512
    params = HealthParameters.derive(8, 30, binary=False)
    health, _ = check_block(params, RctCarry(), FaultSource("stuck").read(4096))
    assert health.rct_failed.all()
    timed = FaultSource("stall", after=0, length=1)
    assert timed.read(10) == b""


def test_parse_source_specs(tmp_path: Path) -> None:
    assert isinstance(parse_source("sim"), SimulatorSource)
    path = tmp_path / "dev"
    path.write_bytes(b"x")
    assert isinstance(parse_source(f"file:{path}"), DeviceFileSource)
    assert isinstance(parse_source("http://127.0.0.1:1/x"), HttpApplianceSource)
    fault = parse_source("fault:stuck,after=1MiB,length=4k,value=3")
    assert isinstance(fault, FaultSource) and fault.mode == "stuck"
    for bad in ("nope", "fault:melt", "fault:stuck,after", "fault:stuck,colour=3",
                "ftp://x/y"):
        with pytest.raises(SourceSpecError):
            parse_source(bad)


def test_health_params_command() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["health-params", "--min-entropy", "1", "--alpha-exp", "30",
                                 "--binary"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"rct_cutoff": 31, "apt_cutoff": 609,
                                         "apt_window": 1024}
    result = runner.invoke(app, ["health-params", "--min-entropy", "8", "--alpha-exp", "30"])
    assert json.loads(result.stdout) == {"rct_cutoff": 5, "apt_cutoff": 16, "apt_window": 512}
    result = runner.invoke(app, ["health-params", "--min-entropy", "9", "--alpha-exp", "30"])
    assert result.exit_code != 0


def test_keygen_and_registry_entry_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    key = tmp_path / "qrng.key"
    assert runner.invoke(app, ["keygen", "--out", str(key)]).exit_code == 0
    result = runner.invoke(app, ["registry-entry", "--key", str(key), "--source-id", "qd-eu-1"])
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)
    assert entry["source_id"] == "qd-eu-1" and entry["public_key"].startswith("ml-dsa-65:")
