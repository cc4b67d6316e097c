"""Vote tallies per (height, round, type), persistent (every change returns a new value).

A validator's first vote in a set is the one counted; a later vote from it for a different value
is kept as ``DuplicateVoteEvidence`` and never counted (CometBFT's rule: a conflicting vote must
not let a Byzantine validator count towards two values). An identical re-delivery is ignored.
Signatures are checked by the caller before ``add``; membership is checked here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.consensus.core.evidence import DuplicateVoteEvidence
from services.consensus.core.messages import Vote, VoteType
from services.consensus.core.validators import ValidatorSet

NIL_KEY = b""


class VoteSetError(ValueError):
    """A vote does not belong in this set (wrong height/round/type, unknown validator)."""


@dataclass(frozen=True, slots=True)
class AddVoteResult:
    vote_set: VoteSet
    added: bool  # counted now
    evidence: DuplicateVoteEvidence | None  # a conflict this vote revealed


@dataclass(frozen=True, slots=True)
class VoteSet:
    height: int
    round: int
    vote_type: VoteType
    validators: ValidatorSet
    votes: dict[bytes, Vote] = field(default_factory=dict)  # address -> counted vote
    power_by_value: dict[bytes, int] = field(default_factory=dict)  # block key -> power
    power: int = 0  # power of all counted votes, any value
    conflicts: tuple[DuplicateVoteEvidence, ...] = ()

    def add(self, vote: Vote) -> AddVoteResult:
        """Count ``vote`` (signature already verified). Raises ``VoteSetError`` if it does not
        belong here."""
        if (vote.height, vote.round, vote.vote_type) != (self.height, self.round, self.vote_type):
            raise VoteSetError(
                f"vote {vote.vote_type.name}/{vote.height}/{vote.round} added to set "
                f"{self.vote_type.name}/{self.height}/{self.round}"
            )
        validator = self.validators.get(vote.validator_address)
        if validator is None:
            raise VoteSetError(
                f"{vote.validator_address.hex()} is not a validator at height {self.height}"
            )
        existing = self.votes.get(vote.validator_address)
        if existing is not None:
            if existing.block_key == vote.block_key:
                return AddVoteResult(self, False, None)
            evidence = DuplicateVoteEvidence.from_votes(existing, vote)
            if evidence in self.conflicts:
                return AddVoteResult(self, False, None)
            updated = VoteSet(
                self.height,
                self.round,
                self.vote_type,
                self.validators,
                self.votes,
                self.power_by_value,
                self.power,
                (*self.conflicts, evidence),
            )
            return AddVoteResult(updated, False, evidence)
        votes = dict(self.votes)
        votes[vote.validator_address] = vote
        by_value = dict(self.power_by_value)
        by_value[vote.block_key] = by_value.get(vote.block_key, 0) + validator.power
        updated = VoteSet(
            self.height,
            self.round,
            self.vote_type,
            self.validators,
            votes,
            by_value,
            self.power + validator.power,
            self.conflicts,
        )
        return AddVoteResult(updated, True, None)

    def has_quorum_any(self) -> bool:
        """+2/3 of the power voted, for any mix of values."""
        return self.validators.has_quorum(self.power)

    def has_quorum_for(self, block_hash: bytes | None) -> bool:
        key = NIL_KEY if block_hash is None else block_hash
        return self.validators.has_quorum(self.power_by_value.get(key, 0))

    def quorum_value(self) -> bytes | None:
        """The block key (``NIL_KEY`` for nil) holding +2/3, or None. At most one can."""
        for key in sorted(self.power_by_value):
            if self.validators.has_quorum(self.power_by_value[key]):
                return key
        return None

    def vote_of(self, address: bytes) -> Vote | None:
        return self.votes.get(address)


@dataclass(frozen=True, slots=True)
class HeightVoteSet:
    """All vote sets of one height, keyed by (round, type)."""

    height: int
    validators: ValidatorSet
    sets: dict[tuple[int, VoteType], VoteSet] = field(default_factory=dict)

    def get(self, round: int, vote_type: VoteType) -> VoteSet:
        existing = self.sets.get((round, vote_type))
        if existing is None:
            return VoteSet(self.height, round, vote_type, self.validators)
        return existing

    def add(self, vote: Vote) -> tuple[HeightVoteSet, AddVoteResult]:
        if vote.height != self.height:
            raise VoteSetError(f"vote of height {vote.height} added to height {self.height}")
        result = self.get(vote.round, vote.vote_type).add(vote)
        if result.vote_set is self.sets.get((vote.round, vote.vote_type)):
            return self, result
        sets = dict(self.sets)
        sets[(vote.round, vote.vote_type)] = result.vote_set
        return HeightVoteSet(self.height, self.validators, sets), result

    def rounds(self) -> tuple[int, ...]:
        return tuple(sorted({round for round, _ in self.sets}))

    def signers_in_round(self, round: int) -> frozenset[bytes]:
        addresses: set[bytes] = set()
        for vote_type in (VoteType.PREVOTE, VoteType.PRECOMMIT):
            addresses.update(self.get(round, vote_type).votes)
        return frozenset(addresses)

    def conflicts(self) -> tuple[DuplicateVoteEvidence, ...]:
        found: list[DuplicateVoteEvidence] = []
        for key in sorted(self.sets):
            found.extend(self.sets[key].conflicts)
        return tuple(found)
