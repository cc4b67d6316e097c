"""Proposer selection: CometBFT's proposer-priority weighted round robin, integers only.

Each validator carries a priority. One *increment* adds every validator's power to its priority,
picks the highest priority (ties: the smaller address) as proposer and subtracts the total power
from it. Over a window of total-power increments each validator proposes in proportion to its
power. Before a batch of increments priorities are *scaled* so that max - min stays within
2 * total power (each divided by ceil(diff / (2 * total)), truncating toward zero as Go does) and
*centered* (the floor of the average subtracted), exactly as CometBFT's
``IncrementProposerPriority``. A validator that joins starts at -(P + P/8) where P is the new
total power, so joining and leaving cannot be used to jump the queue. Values are clipped to
int64 like CometBFT's ``safeAddClip``.

``ProposerPriorities`` holds the priorities *before* height h's first increment:
``proposer(priorities, set, r)`` is the validator picked by the (r+1)-th increment, and
``next_height(priorities, set, next_set)`` is one increment later with the set changes applied.

Cost. The proposer of round r needs r+1 increments, so a round number is a claim of work. The
rounds are *bounded* rather than advanced in closed form. Increments keep the sum of the
priorities and move them in a bounded range, so the sequence of proposers is eventually
periodic, but its period grows with the total voting power (tens of thousands with the demo's
stake, one per token bonded), far beyond any round a live network reaches: skipping ahead would
need a second algorithm, proven equal to CometBFT's on every input, to save work no honest
node ever does. Instead ``ProposerSchedule`` advances one increment per new round and
remembers every proposer it computed (O(n) per round, each round once per height), and the
consensus core refuses any message whose round lies more than ``MAX_ROUNDS_AHEAD`` beyond its
own before asking who proposes it (``core/state_machine.py``). So the work a message can cause
is bounded by the honest network's own round plus that window, whatever number it claims.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.errors import InputError
from protocol.validators import ValidatorSet

PRIORITY_WINDOW_SIZE_FACTOR = 2
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


class ProposerError(InputError):
    """Priorities do not match the validator set they are used with."""


def _clip(value: int) -> int:
    return max(INT64_MIN, min(INT64_MAX, value))


def _truncating_div(value: int, divisor: int) -> int:
    """Go's integer division (toward zero) for a positive divisor."""
    return value // divisor if value >= 0 else -((-value) // divisor)


@dataclass(frozen=True, slots=True)
class ProposerPriorities:
    """(address, priority) in the validator set's canonical order."""

    entries: tuple[tuple[bytes, int], ...]

    def priority_of(self, address: bytes) -> int | None:
        for known, priority in self.entries:
            if known == address:
                return priority
        return None


def _rescale_and_center(priorities: list[int], total: int) -> list[int]:
    window = PRIORITY_WINDOW_SIZE_FACTOR * total
    diff = max(priorities) - min(priorities)
    if window > 0 and diff > window:
        ratio = (diff + window - 1) // window
        priorities = [_truncating_div(p, ratio) for p in priorities]
    average = sum(priorities) // len(priorities)  # Go big.Int Div: Euclidean = floor here
    return [_clip(p - average) for p in priorities]


def _increment_once(
    validator_set: ValidatorSet, priorities: list[int]
) -> tuple[list[int], int]:
    total = validator_set.total_power
    raised = [
        _clip(p + v.power) for p, v in zip(priorities, validator_set.validators, strict=True)
    ]
    # Highest priority wins; on a tie the smaller address (earlier in canonical order) wins.
    chosen = 0
    for index in range(1, len(raised)):
        if raised[index] > raised[chosen]:
            chosen = index
    raised[chosen] = _clip(raised[chosen] - total)
    return raised, chosen


def _checked(priorities: ProposerPriorities, validator_set: ValidatorSet) -> list[int]:
    addresses = tuple(address for address, _ in priorities.entries)
    if addresses != tuple(v.address for v in validator_set.validators):
        raise ProposerError("priorities are not for this validator set")
    return [priority for _, priority in priorities.entries]


def initial_priorities(validator_set: ValidatorSet) -> ProposerPriorities:
    """All zero: the genesis state before height 1's first increment."""
    return ProposerPriorities(tuple((v.address, 0) for v in validator_set.validators))


class ProposerSchedule:
    """The proposers of one height, round by round, computed on demand and remembered (see
    the module doc). Answers are those of ``proposer``; it is a cache, so sharing one between
    states of the same height is safe."""

    __slots__ = ("_proposers", "_set", "_values")

    def __init__(self, priorities: ProposerPriorities, validator_set: ValidatorSet) -> None:
        self._set = validator_set
        self._values = _rescale_and_center(_checked(priorities, validator_set),
                                           validator_set.total_power)
        self._proposers: list[bytes] = []

    def proposer(self, round: int) -> bytes:
        """Address of the proposer for ``round``: O(n) for each round not asked before."""
        if round < 0:
            raise ProposerError(f"round {round} is negative")
        while len(self._proposers) <= round:
            self._values, chosen = _increment_once(self._set, self._values)
            self._proposers.append(self._set.validators[chosen].address)
        return self._proposers[round]

    @property
    def computed_rounds(self) -> int:
        return len(self._proposers)


def proposer(priorities: ProposerPriorities, validator_set: ValidatorSet, round: int) -> bytes:
    """Address of the proposer for ``round`` of the height ``priorities`` belong to (O(round):
    callers that ask repeatedly keep a ``ProposerSchedule``)."""
    return ProposerSchedule(priorities, validator_set).proposer(round)


def next_height(
    priorities: ProposerPriorities, validator_set: ValidatorSet, next_set: ValidatorSet
) -> ProposerPriorities:
    """Priorities for the next height: one increment under ``validator_set``, then the change
    to ``next_set`` (new validators at -(P + P/8), removed ones dropped, rescaled, centered)."""
    values = _rescale_and_center(_checked(priorities, validator_set), validator_set.total_power)
    values, _ = _increment_once(validator_set, values)
    carried = dict(zip((v.address for v in validator_set.validators), values, strict=True))
    total = next_set.total_power
    joining = -(total + (total >> 3))
    updated = [carried.get(v.address, joining) for v in next_set.validators]
    updated = _rescale_and_center(updated, total)
    return ProposerPriorities(
        tuple((v.address, p) for v, p in zip(next_set.validators, updated, strict=True))
    )
