"""Genesis file: JSON round trip, typed errors, the starting state, and the CLI."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from protocol.keys import SigningKey
from services.ledger.core import MICRO, state_hash
from services.ledger.core.genesis_file import (
    GenesisError,
    GenesisFormatError,
    genesis_from_json,
    genesis_state,
    genesis_to_json,
    load_genesis,
    save_genesis,
)
from services.ledger.core.queries import balance, supply_held
from services.ledger.genesis_cli import app
from tests.unit.test_ledger_fixtures import address, make_genesis


def test_json_round_trip_keeps_every_field(tmp_path: Path) -> None:
    genesis = make_genesis()
    save_genesis(genesis, tmp_path / "genesis.json")
    assert load_genesis(tmp_path / "genesis.json") == genesis
    written = json.loads((tmp_path / "genesis.json").read_text())
    assert set(written["params"]) == set(genesis.params.to_dict())  # every parameter is listed


def test_genesis_state_holds_the_genesis_supply() -> None:
    genesis = make_genesis()
    state = genesis_state(genesis)
    assert state.height == 0
    assert supply_held(state) == state.supply.genesis == genesis.total_supply()
    assert balance(state, address(10)) == 1_000 * MICRO
    assert state_hash(state) == state_hash(genesis_state(genesis))


def _mutated(**changes: Any) -> dict[str, Any]:
    data = genesis_to_json(make_genesis())
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        ("[]", GenesisFormatError, "JSON object"),
        (_mutated(format="other"), GenesisFormatError, "format"),
        (_mutated(chain_id=5), GenesisFormatError, "chain_id"),
        (_mutated(genesis_randomness="zz"), GenesisFormatError, "not hex"),
        (_mutated(genesis_randomness="00" * 63), GenesisError, "64 bytes"),
        (_mutated(validators=[]), GenesisError, "at least one validator"),
        (_mutated(params={"no_such_param": 1}), GenesisError, "unknown parameters"),
        (_mutated(params={"community_tax_rate": 2 * 10**9}), GenesisError, "exceeds 100%"),
        (_mutated(accounts=[{"address": "00" * 20}]), GenesisFormatError, "balance"),
    ],
)
def test_bad_genesis_is_a_typed_error(data: Any, error: type[Exception], message: str) -> None:
    if isinstance(data, str):
        data = json.loads(data)
    with pytest.raises(error, match=message):
        genesis_from_json(data)


def test_self_bond_below_minimum_and_duplicates_are_rejected() -> None:
    data = genesis_to_json(make_genesis())
    data["validators"][0]["self_bond"] = 1
    with pytest.raises(GenesisError, match="below the minimum"):
        genesis_from_json(data)
    data = genesis_to_json(make_genesis())
    data["accounts"].append(dict(data["accounts"][0]))
    with pytest.raises(GenesisError, match="duplicate"):
        genesis_from_json(data)
    data = genesis_to_json(make_genesis())
    data["validators"][0]["address"] = "00" * 20
    with pytest.raises(GenesisFormatError, match="does not match"):
        genesis_from_json(data)


def test_unreadable_file_is_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(GenesisFormatError):
        load_genesis(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(GenesisFormatError):
        load_genesis(tmp_path / "bad.json")


def test_cli_new_writes_genesis_and_private_keys(tmp_path: Path) -> None:
    out = tmp_path / "net"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "new",
            "--validators",
            "4",
            "--accounts",
            "3",
            "--sources",
            "2",
            "--out",
            str(out),
            "--algorithm",
            "ed25519",
        ],
    )
    assert result.exit_code == 0, result.output
    genesis = load_genesis(out / "genesis.json")
    assert (len(genesis.validators), len(genesis.qrng_sources)) == (4, 2)
    key_files = sorted(p.name for p in (out / "keys").iterdir())
    assert len(key_files) == 9
    for path in (out / "keys").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    validator_key = SigningKey.load(out / "keys" / "validator-0.json")
    assert validator_key.public_key in {v.public_key for v in genesis.validators}
    shown = runner.invoke(app, ["show", str(out / "genesis.json")])
    assert shown.exit_code == 0 and "state hash" in shown.output
    again = runner.invoke(app, ["new", "--out", str(out)])
    assert again.exit_code != 0  # never overwrites


def test_cli_show_reports_an_invalid_file(tmp_path: Path) -> None:
    (tmp_path / "genesis.json").write_text("{}")
    result = CliRunner().invoke(app, ["show", str(tmp_path / "genesis.json")])
    assert result.exit_code == 1
