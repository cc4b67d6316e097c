"""Vote sets: quorum arithmetic, membership, per-value tallies."""

from __future__ import annotations

import pytest

from protocol.messages import VoteType
from services.consensus.core.vote_set import (
    MAX_VALUES_PER_VALIDATOR,
    HeightVoteSet,
    VoteSet,
    VoteSetError,
)
from tests.support.sim import sim_keys, validator_set_of
from tests.unit.test_evidence import vote

KEYS = sim_keys(5)
SET = validator_set_of(KEYS[:4], [1, 1, 1, 3])
BLOCK = b"\x05" * 32


def test_quorum_needs_strictly_more_than_two_thirds() -> None:
    votes = VoteSet(7, 0, VoteType.PREVOTE, SET)
    for key in (KEYS[0], KEYS[3]):
        votes = votes.add(vote(key, BLOCK)).vote_set
    assert votes.power == 4 and not votes.has_quorum_any() and votes.quorum_value() is None
    votes = votes.add(vote(KEYS[1], None)).vote_set
    assert votes.has_quorum_any() and not votes.has_quorum_for(BLOCK)
    votes = votes.add(vote(KEYS[2], BLOCK)).vote_set
    assert votes.has_quorum_for(BLOCK) and votes.quorum_value() == BLOCK


def test_wrong_set_and_non_members_are_rejected() -> None:
    votes = VoteSet(7, 0, VoteType.PREVOTE, SET)
    with pytest.raises(VoteSetError, match="not a validator"):
        votes.add(vote(KEYS[4], BLOCK))
    with pytest.raises(VoteSetError, match="added to set"):
        votes.add(vote(KEYS[0], BLOCK, round=1))
    with pytest.raises(VoteSetError, match="added to set"):
        votes.add(vote(KEYS[0], BLOCK, vote_type=VoteType.PRECOMMIT))


def test_an_equivocator_cannot_grow_the_set_without_bound() -> None:
    votes = VoteSet(7, 0, VoteType.PREVOTE, SET)
    for i in range(MAX_VALUES_PER_VALIDATOR + 3):
        votes = votes.add(vote(KEYS[0], bytes([i + 1]) * 32)).vote_set
    assert sum(1 for voters in votes.by_value.values() if KEYS[0].address in voters) == (
        MAX_VALUES_PER_VALIDATOR
    )
    assert votes.power == 1


def test_height_vote_set_tracks_rounds_and_signers() -> None:
    height = HeightVoteSet(7, SET)
    height, _ = height.add(vote(KEYS[0], BLOCK, round=2))
    height, _ = height.add(vote(KEYS[1], None, round=2, vote_type=VoteType.PRECOMMIT))
    height, _ = height.add(vote(KEYS[2], None, round=0))
    assert height.rounds() == (0, 2)
    assert height.signers_in_round(2) == {KEYS[0].address, KEYS[1].address}
    with pytest.raises(VoteSetError, match="height 8"):
        height.add(vote(KEYS[0], BLOCK, height=8))
