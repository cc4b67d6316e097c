"""Duplicate-vote evidence: two signed votes of one validator for one (height, round, type) that
name different values. It is the only misbehaviour consensus proves by itself (as in CometBFT);
the ledger turns it into a slash and a tombstone.

Evidence is valid for ``max_age_heights`` after the offence: a block at height H may include
evidence of height h only when H - h <= max_age_heights. Past that the validator may have
unbonded, and the slash could no longer reach its stake (the ledger's unbonding period must be
longer than the age bound; the genesis parameters keep both).
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.app import Misbehavior, MisbehaviorKind
from protocol.canonical import CanonicalWriter
from protocol.errors import InputError
from protocol.keys import SignatureCheck, default_signature_check
from protocol.messages import Vote
from protocol.validators import ValidatorSet


class EvidenceError(InputError):
    """Evidence is malformed, expired, or does not prove misbehaviour."""


@dataclass(frozen=True, slots=True)
class DuplicateVoteEvidence:
    """``vote_a.block_key < vote_b.block_key`` (nil first), so one offence has one encoding."""

    vote_a: Vote
    vote_b: Vote

    @classmethod
    def from_votes(cls, first: Vote, second: Vote) -> DuplicateVoteEvidence:
        a, b = sorted((first, second), key=lambda v: v.block_key)
        evidence = cls(a, b)
        problem = evidence.structural_problem()
        if problem:
            raise EvidenceError(problem)
        return evidence

    @property
    def height(self) -> int:
        return self.vote_a.height

    @property
    def validator_address(self) -> bytes:
        return self.vote_a.validator_address

    def structural_problem(self) -> str | None:
        """Why the two votes are not a duplicate pair, or None when they are."""
        a, b = self.vote_a, self.vote_b
        if (a.vote_type, a.height, a.round) != (b.vote_type, b.height, b.round):
            return "the votes are for different type/height/round"
        if a.validator_address != b.validator_address:
            return "the votes are from different validators"
        if a.block_key == b.block_key:
            return "the votes name the same value"
        if a.block_key > b.block_key:
            return "the votes are not in canonical order (nil or lower hash first)"
        return None

    def canonical(self) -> bytes:
        return (
            CanonicalWriter("DuplicateVoteEvidence")
            .nested(self.vote_a.canonical())
            .nested(self.vote_b.canonical())
            .finish()
        )

    def hash(self) -> bytes:
        return CanonicalWriter("EvidenceHash").nested(self.canonical()).digest()


def verify_duplicate_vote(
    chain_id: str,
    evidence: DuplicateVoteEvidence,
    validator_set: ValidatorSet,
    current_height: int,
    max_age_heights: int,
    check: SignatureCheck = default_signature_check,
) -> None:
    """Raise ``EvidenceError`` unless ``evidence`` proves a double vote by a member of
    ``validator_set`` (the set of the offence height) and is at most ``max_age_heights`` old
    at ``current_height`` (the height of the block that includes it)."""
    problem = evidence.structural_problem()
    if problem:
        raise EvidenceError(problem)
    if evidence.height >= current_height:
        raise EvidenceError(
            f"evidence of height {evidence.height} cannot be included at {current_height}"
        )
    if current_height - evidence.height > max_age_heights:
        raise EvidenceError(
            f"evidence of height {evidence.height} is older than {max_age_heights} heights "
            f"at {current_height}"
        )
    validator = validator_set.get(evidence.validator_address)
    if validator is None:
        raise EvidenceError(
            f"{evidence.validator_address.hex()} was not a validator at {evidence.height}"
        )
    for vote in (evidence.vote_a, evidence.vote_b):
        if not check(validator.public_key, vote.sign_bytes(chain_id), vote.signature):
            raise EvidenceError(
                f"bad signature on a {vote.vote_type.name.lower()} of "
                f"{validator.address.hex()} at {vote.height}/{vote.round}"
            )


def to_misbehavior(
    evidence: DuplicateVoteEvidence, validator_set: ValidatorSet, time_ms: int
) -> Misbehavior:
    """What the application needs to punish verified ``evidence``; ``validator_set`` and
    ``time_ms`` are those of the offence height."""
    return Misbehavior(
        kind=MisbehaviorKind.DUPLICATE_VOTE,
        validator_address=evidence.validator_address,
        height=evidence.height,
        time_ms=time_ms,
        total_voting_power=validator_set.total_power,
    )
