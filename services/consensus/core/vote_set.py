"""Vote tallies per (height, round, type), persistent (every change returns a new value).

Counting rule. The *any-value* tally counts each validator once, by its first vote. A tally for
one value counts every validator that signed that value, each once. So a validator that signs
two values (equivocation) is counted towards both values, as in the paper's model where a
Byzantine process's messages are simply messages, but never twice in one tally, and the conflict
is kept as ``DuplicateVoteEvidence``. Counting it for both keeps proofs of lock visible: with
"first vote only", an equivocator that sent a block vote to some nodes and nil to others hides
the lock of the first group from the second forever (CometBFT reaches the same end with its
peer "maj23" claims). Safety is unchanged: two values with more than 2/3 each overlap in more
than 1/3 of the power, which needs more than 1/3 Byzantine.

At most ``MAX_VALUES_PER_VALIDATOR`` values are kept per validator and set, so an equivocator
cannot grow memory without bound. An identical re-delivery is ignored. Signatures are checked by
the caller before ``add``; membership is checked here.

Rounds held (``HeightVoteSet``): every round up to the owner's current round + 1, and beyond
that only *catch-up* rounds: each validator may open at most ``MAX_CATCHUP_ROUNDS`` rounds
further ahead (CometBFT's ``peerCatchupRounds``), with a correctly signed vote or proposal. A
validator that signs votes for rounds 1..N therefore adds two rounds, not N, and what every later
message costs (the rules scan the rounds held) stays bounded by the rounds the honest network
actually reached. Honest validators need no more: a node that is behind skips to a round as soon
as more than a third of the power is seen there (L55), and a round below the current one + 2
never counts against anyone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from protocol.errors import InputError
from protocol.evidence import DuplicateVoteEvidence
from protocol.messages import Vote, VoteType
from protocol.validators import ValidatorSet

MAX_VALUES_PER_VALIDATOR = 4
MAX_CATCHUP_ROUNDS = 2
NIL_KEY = b""


class VoteSetError(InputError):
    """A vote does not belong in this set (wrong height/round/type, unknown validator)."""


class RoundWindowError(VoteSetError):
    """A round too far ahead, from a validator that already opened its catch-up rounds."""


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
    votes: Mapping[bytes, Vote] = field(default_factory=dict)  # address -> first vote
    # block key -> address -> vote
    by_value: Mapping[bytes, Mapping[bytes, Vote]] = field(default_factory=dict)
    power_by_value: Mapping[bytes, int] = field(default_factory=dict)  # block key -> power
    power: int = 0  # power of all validators that voted, each once
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
        address, key = vote.validator_address, vote.block_key
        voters = self.by_value.get(key, {})
        if address in voters:
            return AddVoteResult(self, False, None)
        first = self.votes.get(address)
        evidence = None
        votes, power, conflicts = self.votes, self.power, self.conflicts
        if first is None:
            votes = dict(votes)
            votes[address] = vote
            power += validator.power
        else:
            evidence = DuplicateVoteEvidence.from_votes(first, vote)
            conflicts = (*conflicts, evidence)
            values = sum(1 for known in self.by_value.values() if address in known)
            if values >= MAX_VALUES_PER_VALIDATOR:
                updated = replace(self, conflicts=conflicts)
                return AddVoteResult(updated, False, evidence)
        by_value = dict(self.by_value)
        by_value[key] = {**voters, address: vote}
        power_by_value = dict(self.power_by_value)
        power_by_value[key] = power_by_value.get(key, 0) + validator.power
        updated = VoteSet(
            self.height,
            self.round,
            self.vote_type,
            self.validators,
            votes,
            by_value,
            power_by_value,
            power,
            conflicts,
        )
        return AddVoteResult(updated, True, evidence)

    def has_quorum_any(self) -> bool:
        """+2/3 of the power voted, for any mix of values."""
        return self.validators.has_quorum(self.power)

    def has_quorum_for(self, block_hash: bytes | None) -> bool:
        key = NIL_KEY if block_hash is None else block_hash
        return self.validators.has_quorum(self.power_by_value.get(key, 0))

    def quorum_value(self) -> bytes | None:
        """The block key (``NIL_KEY`` for nil) holding +2/3, or None. With less than 1/3
        Byzantine power at most one value can; the smallest key is returned otherwise."""
        for key in sorted(self.power_by_value):
            if self.validators.has_quorum(self.power_by_value[key]):
                return key
        return None

    def vote_of(self, address: bytes) -> Vote | None:
        """The first vote ``address`` cast in this set."""
        return self.votes.get(address)

    def vote_for(self, address: bytes, block_hash: bytes | None) -> Vote | None:
        """``address``'s vote for that value, if it signed one."""
        key = NIL_KEY if block_hash is None else block_hash
        return self.by_value.get(key, {}).get(address)


class VoteSetBuilder:
    """A working copy of one ``VoteSet`` for counting a run of votes without a new value per
    vote (``state_machine.handle_votes``). It counts only what ``VoteSet.add`` counts as a
    validator's first vote in the set (``first_vote``); everything else (a second value, a
    re-delivery, a non-member) is for ``VoteSet.add``. ``build`` gives the set that adding the
    same votes one by one gives, equal field by field, its dictionaries in the same order. The
    base set is never written to: its dictionaries are copied once, the first time each is
    written, and the builder must not be used after ``build``."""

    __slots__ = ("_own", "base", "by_value", "power", "power_by_value", "votes")

    def __init__(self, base: VoteSet) -> None:
        self.base = base
        self.votes: dict[bytes, Vote] = dict(base.votes)
        self.by_value: dict[bytes, Mapping[bytes, Vote]] = dict(base.by_value)
        self.power_by_value: dict[bytes, int] = dict(base.power_by_value)
        self.power = base.power
        self._own: dict[bytes, dict[bytes, Vote]] = {}  # voters of a value, copied already

    def first_vote(self, vote: Vote, power: int) -> None:
        """Count ``vote`` of a member with ``power`` that has no vote in this set yet (the
        caller checked both, and the signature)."""
        address, key = vote.validator_address, vote.block_key
        self.votes[address] = vote
        self.power += power
        voters = self._own.get(key)
        if voters is None:
            voters = self._own[key] = dict(self.by_value.get(key, {}))
            self.by_value[key] = voters
        voters[address] = vote
        self.power_by_value[key] = self.power_by_value.get(key, 0) + power

    def build(self) -> VoteSet:
        base = self.base
        return VoteSet(base.height, base.round, base.vote_type, base.validators, self.votes,
                       self.by_value, self.power_by_value, self.power, base.conflicts)


@dataclass(frozen=True, slots=True)
class HeightVoteSet:
    """All vote sets of one height, keyed by (round, type); the rounds held are bounded (see
    the module doc) relative to ``round``, the owner's current round."""

    height: int
    validators: ValidatorSet
    sets: Mapping[tuple[int, VoteType], VoteSet] = field(default_factory=dict)
    round: int = 0
    # validator -> the rounds beyond ``round + 1`` it opened (at most MAX_CATCHUP_ROUNDS)
    catchup: Mapping[bytes, tuple[int, ...]] = field(default_factory=dict)
    _rounds: tuple[int, ...] = ()  # sorted rounds that have a vote set

    def get(self, round: int, vote_type: VoteType) -> VoteSet:
        existing = self.sets.get((round, vote_type))
        if existing is None:
            return VoteSet(self.height, round, vote_type, self.validators)
        return existing

    def at_round(self, round: int) -> HeightVoteSet:
        """The same votes, with the owner now in ``round``."""
        return self if round == self.round else replace(self, round=round)

    def _opened(self, round: int) -> bool:
        return any(round in rounds for rounds in self.catchup.values())

    def admits(self, round: int, address: bytes) -> bool:
        """Whether a message of ``round`` from ``address`` may be held (module doc)."""
        return (round <= self.round + 1 or self._opened(round)
                or len(self.catchup.get(address, ())) < MAX_CATCHUP_ROUNDS)

    def open_round(self, round: int, address: bytes) -> HeightVoteSet:
        """Hold ``round`` for a verified message of ``address`` (a catch-up round when it lies
        beyond ``round + 1``); raises ``RoundWindowError`` when ``address`` used its catch-up
        rounds up."""
        if round <= self.round + 1 or self._opened(round):
            return self
        opened = self.catchup.get(address, ())
        if len(opened) >= MAX_CATCHUP_ROUNDS:
            raise RoundWindowError(
                f"round {round} is beyond round {self.round} + 1 and "
                f"{address.hex()} already opened catch-up rounds {list(opened)}")
        catchup = dict(self.catchup)
        catchup[address] = (*opened, round)
        return replace(self, catchup=catchup)

    def add(self, vote: Vote) -> tuple[HeightVoteSet, AddVoteResult]:
        if vote.height != self.height:
            raise VoteSetError(f"vote of height {vote.height} added to height {self.height}")
        result = self.get(vote.round, vote.vote_type).add(vote)
        if result.vote_set is self.sets.get((vote.round, vote.vote_type)):
            return self, result
        # The round check goes after ``VoteSet.add``: a vote it refuses (non-member) must not
        # use up anyone's catch-up rounds.
        opened = self.open_round(vote.round, vote.validator_address)
        return opened._put(result.vote_set), result

    def with_set(self, vote_set: VoteSet) -> HeightVoteSet:
        """This height's sets with ``vote_set`` in place of its (round, type), for a round
        that needs no catch-up (``round <= self.round + 1``): what ``add`` gives for votes
        counted in a ``VoteSetBuilder``."""
        if vote_set.height != self.height or vote_set.round > self.round + 1:
            raise VoteSetError(f"set of height {vote_set.height} round {vote_set.round} put "
                               f"in height {self.height} at round {self.round}")
        return self._put(vote_set)

    def _put(self, vote_set: VoteSet) -> HeightVoteSet:
        """These sets with ``vote_set`` in place of its (round, type), its round held."""
        sets = dict(self.sets)
        sets[(vote_set.round, vote_set.vote_type)] = vote_set
        rounds = self._rounds if vote_set.round in self._rounds else tuple(
            sorted((*self._rounds, vote_set.round)))
        # The constructor, not ``replace``: this runs for every counted vote.
        return HeightVoteSet(self.height, self.validators, sets, self.round, self.catchup,
                             rounds)

    def rounds(self) -> tuple[int, ...]:
        return self._rounds

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
