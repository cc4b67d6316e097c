"""The machine skips its upon-rules after a vote that crosses no threshold
(``state_machine._may_enable_rules``). That is an optimisation only: for any sequence of
inputs - votes of every type, round and value, equivocations, proposals, timeouts, re-deliveries
- the states and outputs are exactly those of a machine that scans the rules after every input."""

from __future__ import annotations

import functools
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.messages import VoteType
from services.consensus.core import state_machine
from services.consensus.core.state_machine import (
    ConsensusConfig,
    Event,
    ProposalReceived,
    StartHeight,
    TimeoutFired,
    TimeoutStep,
    VoteReceived,
    handle,
    initial_state,
)
from tests.unit.test_consensus_state_machine import (
    KEYS,
    PRIORITIES,
    VALIDATORS,
    Logic,
    a_block,
    signed_proposal,
    signed_vote,
)

ME = KEYS[1]
ROUNDS = range(2)


@functools.cache
def blocks() -> tuple[bytes | None, ...]:
    return (a_block(0).hash, a_block(1).hash, None)


@functools.cache
def inputs() -> tuple[Event, ...]:
    """Every message the other three (and this node's own key, as a replayed message) may
    send in rounds 0 and 1 for two blocks and nil, the proposals of rounds 0 and 1 (round 1
    carrying round 0 as its proof-of-lock round), and every timeout: signed once, drawn from
    by the test."""
    blocks = (a_block(0), a_block(1))
    events: list[Event] = [ProposalReceived(signed_proposal(0, blocks[0])),
                           ProposalReceived(signed_proposal(1, blocks[1])),
                           ProposalReceived(signed_proposal(1, blocks[0], pol_round=0))]
    for key in KEYS:
        for vote_type in (VoteType.PREVOTE, VoteType.PRECOMMIT):
            for round_ in ROUNDS:
                for value in (blocks[0].hash, blocks[1].hash, None):
                    events.append(VoteReceived(signed_vote(key, vote_type, round_, value)))
    events += [TimeoutFired(1, round_, step) for round_ in ROUNDS for step in TimeoutStep]
    return tuple(events)


def play(events: list[Event], config: ConsensusConfig) -> list[object]:
    """Every (state, outputs) pair along the way, from a started height."""
    logic = Logic(ME)
    state, outputs = handle(config, logic, initial_state(1, VALIDATORS, PRIORITIES),
                            StartHeight(1, VALIDATORS))
    trace: list[object] = [(state, outputs)]
    for event in events:
        state, outputs = handle(config, logic, state, event)
        trace.append((state, outputs))
    return trace


# One input, or every validator's vote of one (type, round) in some order, each for one of
# the two blocks or nil: the mixed tallies where one value crosses +2/3 after the set did.
ONE = st.integers(min_value=0, max_value=10_000).map(lambda i: [i % len(inputs())])
ROUND_OF_VOTES = st.tuples(st.sampled_from([VoteType.PREVOTE, VoteType.PRECOMMIT]),
                           st.sampled_from(ROUNDS), st.permutations(range(len(KEYS))),
                           st.lists(st.integers(0, 2), min_size=len(KEYS), max_size=len(KEYS)))


def votes_of_a_round(drawn: tuple[VoteType, int, list[int], list[int]]) -> list[int]:
    vote_type, round_, order, values = drawn
    pool = inputs()
    wanted = [(KEYS[k].address, blocks()[values[k]]) for k in order]
    at = {(e.vote.validator_address, e.vote.block_hash): i for i, e in enumerate(pool)
          if isinstance(e, VoteReceived) and e.vote.vote_type is vote_type
          and e.vote.round == round_}
    return [at[w] for w in wanted]


def remembering_config() -> ConsensusConfig:
    """This node's config, each signature verified once (the inputs repeat)."""
    remembered: dict[tuple[bytes, bytes, bytes], bool] = {}

    def check(key, message, signature):  # type: ignore[no-untyped-def]
        item = (key.raw, message, signature)
        if item not in remembered:
            remembered[item] = key.verify(message, signature)
        return remembered[item]

    return ConsensusConfig("qustream-sim", ME, check=check)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(ONE, ROUND_OF_VOTES.map(votes_of_a_round)), max_size=12))
def test_skipping_the_rules_changes_nothing(groups: list[list[int]]) -> None:
    pool = inputs()
    events = [pool[index] for group in groups for index in group]
    config = remembering_config()
    skipping = play(events, config)
    with mock.patch.object(state_machine, "_may_enable_rules", lambda *_: True):
        scanning = play(events, config)
    assert skipping == scanning


def test_the_rules_are_skipped_for_most_votes_of_a_round() -> None:
    """Not vacuous: with four validators, the votes below a threshold skip the scan."""
    pool = inputs()
    proposal = pool[0]
    assert isinstance(proposal, ProposalReceived)
    prevotes = [e for e in pool if isinstance(e, VoteReceived)
                and e.vote.vote_type is VoteType.PREVOTE and e.vote.round == 0
                and e.vote.block_hash == proposal.proposal.block_hash
                and e.vote.validator_address != ME.address]
    scans = mock.Mock(wraps=state_machine._run_rules)
    with mock.patch.object(state_machine, "_run_rules", scans):
        play([proposal, prevotes[0]], ConsensusConfig("qustream-sim", ME))
    assert scans.call_count == 2  # StartHeight, the proposal; not the first prevote
