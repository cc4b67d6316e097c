"""Golden vectors for commit verification (tests/vectors/commit/cases.json): given a chain id,
a validator set, a block hash, a height and a certificate, the expected verdict and reason of
``verify_commit`` and of ``verify_commit_light_trusting`` (trust level 1/3). Regenerate with
``QUSTREAM_REGENERATE_VECTORS=1 .venv/bin/pytest tests/unit/test_commit_vectors.py``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from protocol.commit import (
    CommitCertificate,
    CommitFlag,
    verify_commit,
    verify_commit_light_trusting,
)
from protocol.keys import PublicKey
from protocol.validators import Validator, ValidatorSet
from tests.support.sim import sim_keys, validator_set_of
from tests.unit.test_block_vectors import REGENERATE, commit_from, commit_json
from tests.unit.test_commit import BLOCK, CHAIN, make_commit

PATH = Path(__file__).resolve().parents[1] / "vectors" / "commit" / "cases.json"


def _set_json(validators: ValidatorSet) -> list[dict[str, Any]]:
    return [{"public_key": v.public_key.to_text(), "power": v.power} for v in validators.validators]


def _set_from(data: list[dict[str, Any]]) -> ValidatorSet:
    validators = []
    for entry in data:
        key = PublicKey.from_text(entry["public_key"])
        validators.append(Validator(key.address, key, entry["power"]))
    return ValidatorSet.of(validators)


def _generate() -> dict[str, Any]:
    keys = sim_keys(4)
    validators = validator_set_of(keys, [10, 20, 30, 40])
    full = make_commit(keys, {})
    cases: list[tuple[str, CommitCertificate, ValidatorSet, ValidatorSet]] = [
        ("all signed", full, validators, validators),
        ("one absent, one nil, quorum kept", make_commit(keys, {0: CommitFlag.ABSENT,
                                                                1: CommitFlag.NIL}),
         validators, validators),
        ("below quorum: 40 + 20 of 100", make_commit(keys, {2: CommitFlag.ABSENT,
                                                             0: CommitFlag.NIL}),
         validators, validators),
        ("exactly two thirds is not enough", make_commit(keys, {0: CommitFlag.ABSENT,
                                                                 1: CommitFlag.ABSENT}),
         validator_set_of(keys, [1, 1, 1, 3]), validator_set_of(keys, [1, 1, 1, 3])),
        ("wrong height", dataclasses.replace(full, height=6), validators, validators),
        ("forged signature", dataclasses.replace(full, signatures=(
            dataclasses.replace(full.signatures[0], signature=bytes(64)), *full.signatures[1:])),
         validators, validators),
        ("signed for another round", dataclasses.replace(full, round=2), validators, validators),
        ("new set, trusted old set holds more than 1/3", make_commit(sim_keys(6), {}),
         validator_set_of(sim_keys(6), [10] * 6), validator_set_of(keys[:3], [10, 10, 40])),
    ]
    entries = []
    for name, cert, validators_now, trusted in cases:
        full_result = verify_commit(CHAIN, BLOCK, 5, cert, validators_now)
        trusting = verify_commit_light_trusting(CHAIN, trusted, cert)
        entries.append({
            "name": name,
            "validators": _set_json(validators_now),
            "trusted_validators": _set_json(trusted),
            "certificate": commit_json(cert),
            "expected": {
                "verify_commit": {"ok": full_result.ok, "reason": full_result.reason,
                                  "signed_power": full_result.signed_power},
                "verify_commit_light_trusting": {"ok": trusting.ok, "reason": trusting.reason},
            },
        })
    return {
        "description": "Commit certificates over precommit sign-bytes (chain id, PRECOMMIT, "
                       "height, round, block hash or nil, validator address).",
        "chain_id": CHAIN, "height": 5, "block_hash": BLOCK.hex(), "cases": entries,
    }


def test_commit_vectors() -> None:
    if REGENERATE:
        PATH.parent.mkdir(parents=True, exist_ok=True)
        PATH.write_text(json.dumps(_generate(), indent=1) + "\n")
    data = json.loads(PATH.read_text())
    block = bytes.fromhex(data["block_hash"])
    verdicts = set()
    for case in data["cases"]:
        cert = commit_from(case["certificate"])
        result = verify_commit(data["chain_id"], block, data["height"], cert,
                               _set_from(case["validators"]))
        expected = case["expected"]["verify_commit"]
        assert (result.ok, result.reason, result.signed_power) == (
            expected["ok"], expected["reason"], expected["signed_power"]), case["name"]
        trusting = verify_commit_light_trusting(data["chain_id"],
                                                _set_from(case["trusted_validators"]), cert)
        expected = case["expected"]["verify_commit_light_trusting"]
        assert (trusting.ok, trusting.reason) == (expected["ok"], expected["reason"]), case["name"]
        verdicts.add(result.ok)
    assert verdicts == {True, False}
