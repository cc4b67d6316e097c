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


def proposer(priorities: ProposerPriorities, validator_set: ValidatorSet, round: int) -> bytes:
    """Address of the proposer for ``round`` of the height ``priorities`` belong to."""
    if round < 0:
        raise ProposerError(f"round {round} is negative")
    values = _rescale_and_center(_checked(priorities, validator_set), validator_set.total_power)
    chosen = 0
    for _ in range(round + 1):
        values, chosen = _increment_once(validator_set, values)
    return validator_set.validators[chosen].address


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
