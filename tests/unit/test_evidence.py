"""Duplicate-vote evidence: construction, verification, age bound, conversion."""

from __future__ import annotations

import dataclasses

import pytest

from protocol.app import MisbehaviorKind
from protocol.evidence import (
    DuplicateVoteEvidence,
    EvidenceError,
    to_misbehavior,
    verify_duplicate_vote,
)
from protocol.keys import SigningKey
from protocol.messages import Vote, VoteType
from services.consensus.core.vote_set import VoteSet
from tests.support.sim import sim_keys, validator_set_of

CHAIN = "test-chain"
KEYS = sim_keys(4)
SET = validator_set_of(KEYS, [10, 20, 30, 40])


def vote(key: SigningKey, block: bytes | None, height: int = 7, round: int = 0,
         vote_type: VoteType = VoteType.PREVOTE) -> Vote:
    unsigned = Vote(vote_type, height, round, block, key.address, b"")
    return dataclasses.replace(unsigned, signature=key.sign(unsigned.sign_bytes(CHAIN)))


def test_evidence_orders_votes_canonically() -> None:
    a, b = vote(KEYS[0], b"\x02" * 32), vote(KEYS[0], None)
    first, second = DuplicateVoteEvidence.from_votes(a, b), DuplicateVoteEvidence.from_votes(b, a)
    assert first == second and first.vote_a.block_hash is None
    assert first.hash() == second.hash()


@pytest.mark.parametrize(
    ("other", "reason"),
    [
        (lambda: vote(KEYS[1], None), "different validators"),
        (lambda: vote(KEYS[0], None, round=1), "different type/height/round"),
        (lambda: vote(KEYS[0], b"\x01" * 32), "same value"),
    ],
)
def test_non_conflicting_pairs_are_not_evidence(other, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(EvidenceError, match=reason):
        DuplicateVoteEvidence.from_votes(vote(KEYS[0], b"\x01" * 32), other())


def test_verification_checks_signatures_membership_and_age() -> None:
    evidence = DuplicateVoteEvidence.from_votes(vote(KEYS[2], b"\x01" * 32), vote(KEYS[2], None))
    verify_duplicate_vote(CHAIN, evidence, SET, current_height=8, max_age_heights=10)
    verify_duplicate_vote(CHAIN, evidence, SET, current_height=17, max_age_heights=10)
    with pytest.raises(EvidenceError, match="older than 10"):
        verify_duplicate_vote(CHAIN, evidence, SET, current_height=18, max_age_heights=10)
    with pytest.raises(EvidenceError, match="cannot be included"):
        verify_duplicate_vote(CHAIN, evidence, SET, current_height=7, max_age_heights=10)
    with pytest.raises(EvidenceError, match="was not a validator"):
        verify_duplicate_vote(CHAIN, evidence, validator_set_of(KEYS[:2], [1, 1]), 8, 10)
    forged = dataclasses.replace(
        evidence, vote_b=dataclasses.replace(evidence.vote_b, signature=b"\x00" * 64)
    )
    with pytest.raises(EvidenceError, match="bad signature"):
        verify_duplicate_vote(CHAIN, forged, SET, 8, 10)
    with pytest.raises(EvidenceError, match="bad signature"):
        verify_duplicate_vote("other-chain", evidence, SET, 8, 10)


def test_conversion_to_misbehavior() -> None:
    evidence = DuplicateVoteEvidence.from_votes(vote(KEYS[3], b"\x01" * 32), vote(KEYS[3], None))
    misbehavior = to_misbehavior(evidence, SET, time_ms=123)
    assert misbehavior.kind is MisbehaviorKind.DUPLICATE_VOTE
    assert misbehavior.validator_address == KEYS[3].address
    assert misbehavior.height == 7 and misbehavior.time_ms == 123
    assert misbehavior.total_voting_power == 100


def test_vote_set_turns_conflicts_into_evidence_and_counts_once_per_value() -> None:
    votes = VoteSet(7, 0, VoteType.PREVOTE, SET)
    block = b"\x01" * 32
    result = votes.add(vote(KEYS[3], block))
    assert result.added and result.evidence is None
    again = result.vote_set.add(vote(KEYS[3], block))
    assert not again.added and again.vote_set is result.vote_set
    conflict = result.vote_set.add(vote(KEYS[3], None))
    assert conflict.evidence is not None
    counted = conflict.vote_set
    assert counted.power == 40  # the validator is in the any-value tally once
    assert counted.power_by_value == {block: 40, b"": 40}
    assert counted.conflicts == (conflict.evidence,)
