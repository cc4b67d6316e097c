"""Proposer priority: CometBFT's reference sequence, proportional fairness, set changes."""

from __future__ import annotations

from collections import Counter

from protocol.proposer import initial_priorities, next_height, proposer
from tests.support.sim import sim_keys, validator_set_of

# CometBFT types/validator_set_test.go TestProposerSelection1: foo 1000, bar 300, baz 330,
# 99 heights, addresses ordered bar < baz < foo.
COMETBFT_TEXT = (
    "foo baz foo bar foo foo baz foo bar foo foo baz foo foo bar foo baz foo foo bar foo "
    "foo baz foo bar foo foo baz foo bar foo foo baz foo foo bar foo baz foo foo bar foo "
    "baz foo foo bar foo baz foo foo bar foo baz foo foo foo baz bar foo foo foo baz foo "
    "bar foo foo baz foo bar foo foo baz foo bar foo foo baz foo bar foo foo baz foo foo "
    "bar foo baz foo foo bar foo baz foo foo bar foo baz foo foo "
)
COMETBFT_SEQUENCE = COMETBFT_TEXT.split()


def test_matches_cometbft_reference_sequence() -> None:
    keys = sorted(sim_keys(3), key=lambda k: k.address)  # bar < baz < foo by address
    names = dict(zip((k.address for k in keys), ("bar", "baz", "foo"), strict=True))
    validators = validator_set_of(keys, [300, 330, 1000])
    priorities = initial_priorities(validators)
    chosen = []
    for _ in range(99):
        chosen.append(names[proposer(priorities, validators, 0)])
        priorities = next_height(priorities, validators, validators)
    assert chosen == COMETBFT_SEQUENCE


def test_rounds_advance_like_heights() -> None:
    keys = sim_keys(4)
    validators = validator_set_of(keys, [1, 2, 3, 4])
    priorities = initial_priorities(validators)
    later = next_height(next_height(priorities, validators, validators), validators, validators)
    assert proposer(priorities, validators, 2) == proposer(later, validators, 0)


def test_each_validator_proposes_in_proportion_to_power() -> None:
    keys = sim_keys(4)
    validators = validator_set_of(keys, [1, 2, 3, 4])
    priorities = initial_priorities(validators)
    counts: Counter[bytes] = Counter()
    for _ in range(100):
        counts[proposer(priorities, validators, 0)] += 1
        priorities = next_height(priorities, validators, validators)
    assert {validators.power_of(a) * 10: c for a, c in counts.items()} == {
        10: 10, 20: 20, 30: 30, 40: 40
    }


def test_joining_validator_starts_behind_and_priorities_stay_centered() -> None:
    keys = sim_keys(5)
    before = validator_set_of(keys[:4], [10, 10, 10, 10])
    after = validator_set_of(keys, [10, 10, 10, 10, 10])
    priorities = next_height(initial_priorities(before), before, after)
    newcomer = priorities.priority_of(keys[4].address)
    assert newcomer is not None
    assert newcomer == min(p for _, p in priorities.entries)
    for _ in range(50):
        priorities = next_height(priorities, after, after)
        values = [p for _, p in priorities.entries]
        assert -len(values) < sum(values) < len(values) * len(values)
        assert max(values) - min(values) <= 2 * after.total_power
