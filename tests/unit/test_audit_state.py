"""`qustream state --at-height H` prints the verified ledger state at any height (time travel),
here from an export of a locally signed chain, so it needs no cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sdk.testing import LocalChain, make_local_chain
from services.audit.export import write_export
from services.audit.sources import LogRecord
from tests.unit.test_audit_core import _Memory

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalChain, Path]:
    chain = make_local_chain(tmp_path_factory.mktemp("chain"), 8)
    records = [LogRecord("chain.blocks", 0, i, 1000 + i, None, raw)
               for i, raw in enumerate(chain.records)]
    target = tmp_path_factory.mktemp("export")
    write_export(_Memory(records), target, chain.genesis, {})
    return chain, target


def _state(export: Path, height: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "state", "--at-height", str(height),
         "--from-export", str(export), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def test_state_at_the_head_equals_the_chain_and_earlier_heights_differ(
    exported: tuple[LocalChain, Path],
) -> None:
    chain, export = exported
    head = _state(export, 8)
    assert head.returncode == 0, head.stderr
    at_head = json.loads(head.stdout)
    assert at_head["height"] == 8
    assert at_head["state_hash"] == chain.final_state.tip.app_hash.hex()
    assert at_head["validators"] and at_head["params"]["min_tx_fee"] > 0

    middle = json.loads(_state(export, 3).stdout)
    assert middle["height"] == 3
    assert middle["state_hash"] != at_head["state_hash"]
    assert at_head["supply"]["held"] >= middle["supply"]["held"]  # rewards are issued per block

    genesis = json.loads(_state(export, 0).stdout)
    assert genesis["height"] == 0


def test_a_height_beyond_the_chain_is_an_error(exported: tuple[LocalChain, Path]) -> None:
    _, export = exported
    beyond = _state(export, 50)
    assert beyond.returncode == 1
    assert "reaches height 8" in beyond.stdout
