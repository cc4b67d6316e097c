"""Scanning ``chain.consensus`` for equivocation the chain did not punish.

Every vote is grouped by (height, round, type, validator). A group with two different values
is a candidate double vote; only then are the two signatures checked (against the validator set
of that height, recomputed by the chain audit), so the scan costs one dictionary insert per
vote. A proven double vote must be *accounted for*:

- ``included``: some block's evidence names the validator at that height;
- ``punished``: the validator is tombstoned in the final ledger state (one slash per validator;
  later double votes of a tombstoned validator need no further evidence);
- ``pending``: the offence is within ``pending_heights`` of the last audited height (evidence
  may still be on its way into a block);

otherwise it is a ``equivocation`` failure naming both offsets. Votes with bad signatures or
from non-members prove nothing: they are warnings.

Memory is bounded: full votes are kept for the last ``window`` heights seen; older groups keep
only their first value and offset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from protocol.messages import Vote
from protocol.validators import ValidatorSet
from services.audit.core.findings import Finding, Severity

TOPIC = "chain.consensus"
GroupKey = tuple[int, int, int, bytes]  # height, round, vote type, validator


@dataclass(frozen=True, slots=True)
class DoubleVote:
    first: Vote
    first_offset: int
    second: Vote
    second_offset: int


@dataclass(slots=True)
class EquivocationScanner:
    window: int = 1000
    votes: int = 0
    proposals: int = 0
    candidates: list[tuple[Vote, int, Vote, int]] = field(default_factory=list)
    unverifiable: list[Finding] = field(default_factory=list)
    _full: dict[GroupKey, tuple[Vote, int]] = field(default_factory=dict)
    _compact: dict[GroupKey, tuple[bytes, int]] = field(default_factory=dict)
    _max_height: int = 0

    def feed_vote(self, vote: Vote, offset: int) -> None:
        self.votes += 1
        key = (vote.height, vote.round, int(vote.vote_type), vote.validator_address)
        known = self._full.get(key)
        if known is not None:
            if known[0].block_key != vote.block_key:
                self.candidates.append((known[0], known[1], vote, offset))
        else:
            compact = self._compact.get(key)
            if compact is None:
                self._full[key] = (vote, offset)
            elif compact[0] != vote.block_key:
                self.unverifiable.append(Finding(
                    "equivocation", f"a vote of {vote.validator_address.hex()} at "
                    f"{vote.height}/{vote.round} differs from the one at offset {compact[1]}, "
                    "which is too old to have been kept for a signature check", TOPIC, offset,
                    0, vote.height, Severity.WARNING))
        if vote.height > self._max_height:
            self._max_height = vote.height
            if len(self._full) > 4 * self.window:
                self._prune()

    def _prune(self) -> None:
        floor = self._max_height - self.window
        for key in [k for k in self._full if k[0] < floor]:
            vote, offset = self._full.pop(key)
            self._compact[key] = (vote.block_key, offset)

    def resolve(
        self,
        chain_id: str,
        validator_sets: Mapping[int, ValidatorSet],
        evidence_included: Mapping[tuple[int, bytes], int],
        tombstoned: Callable[[bytes], bool],
        last_height: int,
        pending_heights: int = 20,
    ) -> tuple[list[DoubleVote], list[Finding]]:
        """Proven double votes, and findings for those not accounted for (see module doc)."""
        proven: list[DoubleVote] = []
        findings: list[Finding] = list(self.unverifiable)
        for first, first_offset, second, second_offset in self.candidates:
            height, who = first.height, first.validator_address
            validators = validator_sets.get(height)
            if validators is None:
                continue  # a height the audit did not reach
            member = validators.get(who)
            if member is None or not all(
                    member.public_key.verify(v.sign_bytes(chain_id), v.signature)
                    for v in (first, second)):
                findings.append(Finding(
                    "consensus_record", f"conflicting votes of {who.hex()} at {height}/"
                    f"{first.round} at offsets {first_offset} and {second_offset} do not both "
                    "carry valid signatures of a validator (no proof of misbehaviour)", TOPIC,
                    second_offset, 0, height, Severity.WARNING))
                continue
            proven.append(DoubleVote(first, first_offset, second, second_offset))
            if (height, who) in evidence_included or tombstoned(who):
                continue
            if height > last_height - pending_heights:
                continue
            findings.append(Finding(
                "equivocation", f"validator {who.hex()} signed two different "
                f"{first.vote_type.name.lower()}s at {height}/{first.round} (offsets "
                f"{first_offset} and {second_offset}) and no block includes the evidence",
                TOPIC, second_offset, 0, height))
        return proven, findings
