"""Commit certificates: full, light and skipping (trusting) verification, with reasons."""

from __future__ import annotations

import dataclasses

import pytest

from protocol.commit import (
    CommitCertificate,
    CommitFlag,
    CommitSig,
    TrustLevel,
    verify_commit,
    verify_commit_light,
    verify_commit_light_trusting,
)
from protocol.keys import Algorithm, SigningKey
from protocol.messages import VoteType, vote_sign_bytes
from tests.support.sim import sim_keys, validator_set_of

CHAIN = "test-chain"
BLOCK = bytes(range(32))


def make_commit(
    keys: list[SigningKey],
    flags: dict[int, CommitFlag],
    height: int = 5,
    round: int = 1,
    block: bytes = BLOCK,
    chain_id: str = CHAIN,
) -> CommitCertificate:
    """A certificate where key i has ``flags.get(i, COMMIT)``, records in address order."""
    records = []
    for index, key in sorted(enumerate(keys), key=lambda item: item[1].address):
        flag = flags.get(index, CommitFlag.COMMIT)
        if flag is CommitFlag.ABSENT:
            records.append(CommitSig(flag, key.address, b""))
            continue
        value = block if flag is CommitFlag.COMMIT else None
        message = vote_sign_bytes(chain_id, VoteType.PRECOMMIT, height, round, value, key.address)
        records.append(CommitSig(flag, key.address, key.sign(message)))
    return CommitCertificate(height, round, block, tuple(records))


KEYS = sim_keys(4)
SET = validator_set_of(KEYS, [10, 10, 10, 10])


def test_full_commit_verifies() -> None:
    result = verify_commit(CHAIN, BLOCK, 5, make_commit(KEYS, {}), SET)
    assert result.ok and result.signed_power == 40 and result.reason == "ok"


def test_three_of_four_is_a_quorum_two_of_four_is_not() -> None:
    cert = make_commit(KEYS, {0: CommitFlag.ABSENT})
    assert verify_commit(CHAIN, BLOCK, 5, cert, SET)
    cert = make_commit(KEYS, {0: CommitFlag.ABSENT, 1: CommitFlag.NIL})
    result = verify_commit(CHAIN, BLOCK, 5, cert, SET)
    assert not result.ok and "not more than 2/3" in result.reason


def test_quorum_is_strictly_more_than_two_thirds_of_power() -> None:
    validators = validator_set_of(KEYS, [1, 1, 1, 3])  # total 6: 4 is not > 4
    cert = make_commit(KEYS, {2: CommitFlag.ABSENT, 3: CommitFlag.ABSENT})
    assert not verify_commit(CHAIN, BLOCK, 5, cert, validators)
    cert = make_commit(KEYS, {0: CommitFlag.ABSENT, 1: CommitFlag.ABSENT})
    assert not verify_commit(CHAIN, BLOCK, 5, cert, validators).ok  # 1 + 3 = 4, not > 4
    cert = make_commit(KEYS, {0: CommitFlag.ABSENT})
    assert verify_commit(CHAIN, BLOCK, 5, cert, validators).ok  # 5 > 4


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda c: dataclasses.replace(c, height=6), "height"),
        (lambda c: dataclasses.replace(c, block_hash=bytes(32)), "expected"),
        (lambda c: dataclasses.replace(c, signatures=c.signatures[:3]), "records"),
        (lambda c: dataclasses.replace(c, signatures=c.signatures[::-1]), "expected"),
        (lambda c: dataclasses.replace(c, round=0), "bad signature"),
        (
            lambda c: dataclasses.replace(
                c, signatures=(dataclasses.replace(c.signatures[0], flag=CommitFlag.NIL),
                               *c.signatures[1:])),
            "bad signature",
        ),
        (
            lambda c: dataclasses.replace(
                c, signatures=(dataclasses.replace(c.signatures[0], flag=CommitFlag.ABSENT),
                               *c.signatures[1:])),
            "disagree",
        ),
    ],
)
def test_tampered_certificates_fail_with_a_reason(mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    cert = mutate(make_commit(KEYS, {}))
    result = verify_commit(CHAIN, BLOCK, 5, cert, SET)
    assert not result.ok and reason in result.reason


def test_signature_from_another_chain_does_not_verify() -> None:
    cert = make_commit(KEYS, {}, chain_id="other-chain")
    assert "bad signature" in verify_commit(CHAIN, BLOCK, 5, cert, SET).reason


def test_light_verification_stops_at_two_thirds() -> None:
    cert = make_commit(KEYS, {})
    broken = dataclasses.replace(
        cert, signatures=(*cert.signatures[:3], dataclasses.replace(
            cert.signatures[3], signature=b"\x00" * 64)),
    )
    assert not verify_commit(CHAIN, BLOCK, 5, broken, SET).ok
    assert verify_commit_light(CHAIN, BLOCK, 5, broken, SET).ok


def test_skipping_verification_with_a_changed_set() -> None:
    new_keys = sim_keys(7)  # keys 0..3 stay, 4..6 join
    cert = make_commit(new_keys, {})
    trusted = SET
    assert verify_commit_light_trusting(CHAIN, trusted, cert).ok
    # Only one of the four trusted validators signed: 10/40 is not > 1/3.
    only_one = make_commit(new_keys, {1: CommitFlag.ABSENT, 2: CommitFlag.ABSENT,
                                      3: CommitFlag.ABSENT})
    result = verify_commit_light_trusting(CHAIN, trusted, only_one)
    assert not result.ok and "1/3" in result.reason
    two = make_commit(new_keys, {2: CommitFlag.ABSENT, 3: CommitFlag.ABSENT})
    assert verify_commit_light_trusting(CHAIN, trusted, two).ok  # 20/40 > 1/3
    assert not verify_commit_light_trusting(CHAIN, trusted, two, TrustLevel(2, 3)).ok


def test_skipping_verification_rejects_duplicate_records() -> None:
    cert = make_commit(KEYS, {})
    doubled = dataclasses.replace(cert, signatures=(cert.signatures[0], *cert.signatures))
    assert "twice" in verify_commit_light_trusting(CHAIN, SET, doubled).reason


def test_trust_level_must_lie_between_one_third_and_one() -> None:
    with pytest.raises(ValueError, match="must lie"):
        TrustLevel(1, 4)
    with pytest.raises(ValueError, match="must lie"):
        TrustLevel(4, 3)


def test_ml_dsa_commit_verifies() -> None:
    keys = sim_keys(4, Algorithm.ML_DSA_65)
    validators = validator_set_of(keys, [1, 2, 3, 4])
    cert = make_commit(keys, {0: CommitFlag.NIL})
    assert verify_commit(CHAIN, BLOCK, 5, cert, validators).signed_power == 9
