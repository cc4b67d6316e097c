"""``qustream demo --lanes K``: the genesis it makes registers every simulated source as K lanes,
and each source's one ``qrng run`` starts all K; an existing chain keeps its own shape and says
so. No broker: the commands are checked, not run (tests/integration/test_demo.py runs one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from services.demo import (
    QUSTREAM,
    genesis_command,
    genesis_mismatch,
    qrng_devices,
    service_specs,
)
from services.ledger.genesis_cli import app as genesis_app


def _new_genesis(demo_dir: Path, *, validators: int = 4, sources: int = 2,
                 lanes: int = 1) -> dict[str, Any]:
    """Run the demo's ``genesis new`` command in-process; the genesis it wrote."""
    command = genesis_command(demo_dir, validators, sources, lanes)
    assert command[:len(QUSTREAM) + 1] == (*QUSTREAM, "genesis")
    result = CliRunner().invoke(genesis_app, list(command[len(QUSTREAM) + 1:]))
    assert result.exit_code == 0, result.output
    genesis: dict[str, Any] = json.loads((demo_dir / "genesis.json").read_text())
    return genesis


def _qrng_argv(demo_dir: Path, genesis: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    specs = service_specs(demo_dir, len(genesis["validators"]), qrng_devices(genesis), 1000,
                      "512KiB", 8080)
    return {spec.name: spec.argv[len(QUSTREAM):] for spec in specs
            if spec.argv[len(QUSTREAM):len(QUSTREAM) + 2] == ("qrng", "run")}


def _option(argv: tuple[str, ...], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_lanes_register_each_source_as_lanes_and_one_qrng_run_starts_them(
        tmp_path: Path) -> None:
    genesis = _new_genesis(tmp_path, sources=2, lanes=2)
    assert sorted(s["source_id"] for s in genesis["qrng_sources"]) == [
        "qrng-0.lane-0", "qrng-0.lane-1", "qrng-1.lane-0", "qrng-1.lane-1"]
    assert qrng_devices(genesis) == {"qrng-0": 2, "qrng-1": 2}
    argv = _qrng_argv(tmp_path, genesis)
    assert sorted(argv) == ["qrng-0", "qrng-1"]
    for device, run in argv.items():
        assert _option(run, "--source-id") == device
        assert _option(run, "--lanes") == "2"
        assert "--lane" not in run  # all lanes of the device from this one process
        assert Path(_option(run, "--key")) == tmp_path / "keys" / f"{device}.json"
        assert Path(_option(run, "--key")).exists()


def test_without_lanes_each_source_is_its_own_chain(tmp_path: Path) -> None:
    genesis = _new_genesis(tmp_path, sources=3)
    assert [s["source_id"] for s in genesis["qrng_sources"]] == ["qrng-0", "qrng-1", "qrng-2"]
    argv = _qrng_argv(tmp_path, genesis)
    assert {device: _option(run, "--lanes") for device, run in argv.items()} == {
        "qrng-0": "1", "qrng-1": "1", "qrng-2": "1"}


def test_an_existing_chain_keeps_its_lanes_and_the_demo_says_so(tmp_path: Path) -> None:
    genesis = _new_genesis(tmp_path, validators=1, sources=1, lanes=3)
    assert genesis_mismatch(genesis, 1, 1, 3) is None
    assert genesis_mismatch(genesis, 1, 1, 1) == (
        "the demo chain keeps its genesis (--lanes 3, not 1); --fresh starts a new chain with "
        "the options given")
    assert genesis_mismatch(genesis, 4, 1, 2) == (
        "the demo chain keeps its genesis (--validators 1, not 4; --lanes 3, not 2); --fresh "
        "starts a new chain with the options given")
    assert _option(_qrng_argv(tmp_path, genesis)["qrng-0"], "--lanes") == "3"

