"""Golden vectors for ML-DSA-65 commit certificates (tests/vectors/commit/ml_dsa_65.json), the
default validator algorithm: the same shape as commit/cases.json (Ed25519), so any other
implementation — the explorer's JavaScript among them — checks FIPS 204 signatures made by
``cryptography`` the same way. ML-DSA signing is randomized, so regeneration writes new
signatures; the verdicts stay. Regenerate with
``QUSTREAM_REGENERATE_VECTORS=1 .venv/bin/pytest tests/unit/test_commit_mldsa_vectors.py``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from protocol.commit import CommitCertificate, CommitFlag, verify_commit
from protocol.keys import Algorithm
from sdk.testing import flip_bit
from tests.support.sim import sim_keys, validator_set_of
from tests.unit.test_block_vectors import REGENERATE, commit_from, commit_json
from tests.unit.test_commit import BLOCK, CHAIN, make_commit
from tests.unit.test_commit_vectors import _set_from, _set_json

PATH = Path(__file__).resolve().parents[1] / "vectors" / "commit" / "ml_dsa_65.json"


def _generate() -> dict[str, Any]:
    keys = sim_keys(4, Algorithm.ML_DSA_65)
    validators = validator_set_of(keys, [10, 20, 30, 40])
    full = make_commit(keys, {})
    cases: list[tuple[str, CommitCertificate]] = [
        ("all signed", full),
        ("one absent, one nil, quorum kept", make_commit(keys, {0: CommitFlag.ABSENT,
                                                                1: CommitFlag.NIL})),
        ("one bit of one signature flipped", dataclasses.replace(full, signatures=(
            dataclasses.replace(full.signatures[0],
                                signature=flip_bit(full.signatures[0].signature, 100)),
            *full.signatures[1:]))),
        ("below quorum", make_commit(keys, {2: CommitFlag.ABSENT, 3: CommitFlag.NIL})),
    ]
    entries = []
    for name, cert in cases:
        result = verify_commit(CHAIN, BLOCK, 5, cert, validators)
        entries.append({"name": name, "validators": _set_json(validators),
                        "certificate": commit_json(cert),
                        "expected": {"verify_commit": {"ok": result.ok, "reason": result.reason,
                                                       "signed_power": result.signed_power}}})
    return {"description": "ML-DSA-65 (FIPS 204, empty context) commit certificates over "
                           "precommit sign-bytes; as commit/cases.json.",
            "chain_id": CHAIN, "height": 5, "block_hash": BLOCK.hex(), "cases": entries}


def test_ml_dsa_65_commit_vectors() -> None:
    if REGENERATE or not PATH.exists():
        assert REGENERATE, f"{PATH} is missing; regenerate with QUSTREAM_REGENERATE_VECTORS=1"
        PATH.write_text(json.dumps(_generate(), indent=1) + "\n")
    data = json.loads(PATH.read_text())
    block = bytes.fromhex(data["block_hash"])
    verdicts = set()
    for case in data["cases"]:
        result = verify_commit(data["chain_id"], block, data["height"],
                               commit_from(case["certificate"]), _set_from(case["validators"]))
        expected = case["expected"]["verify_commit"]
        assert (result.ok, result.reason, result.signed_power) == (
            expected["ok"], expected["reason"], expected["signed_power"]), case["name"]
        assert all(v["public_key"].startswith("ml-dsa-65:") for v in case["validators"])
        verdicts.add(result.ok)
    assert verdicts == {True, False}
