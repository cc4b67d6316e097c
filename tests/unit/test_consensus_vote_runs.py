"""``state_machine.handle_votes`` counts a run of votes into one working copy of its vote set and
builds the state once. That is an optimisation only: for any sequence of inputs - votes of every
type, round and value, equivocations, re-deliveries, bad signatures, non-members, votes of the
next height, proposals, timeouts - a machine that hands each run of consecutive votes to
``handle_votes`` (again from the vote after each return) passes through exactly the states, and
gives exactly the outputs, of one that handles every input with ``handle``."""

from __future__ import annotations

import dataclasses
import functools
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.keys import Algorithm, SigningKey
from protocol.messages import Vote, VoteType
from services.consensus.core import state_machine
from services.consensus.core.state_machine import (
    ConsensusConfig,
    Event,
    Output,
    StartHeight,
    VoteReceived,
    handle,
    handle_votes,
    initial_state,
)
from tests.unit.test_consensus_rules_skip import (
    ME,
    ONE,
    ROUND_OF_VOTES,
    inputs,
    remembering_config,
    votes_of_a_round,
)
from tests.unit.test_consensus_state_machine import KEYS, PRIORITIES, VALIDATORS, Logic

CHAIN_ID = "qustream-sim"


@functools.cache
def odd_votes() -> tuple[Event, ...]:
    """Votes the fast path must leave to ``handle`` or refuse as it would: a forged signature,
    a key outside the set, a vote of the next height and one of a decided height."""
    honest = [e for e in inputs() if isinstance(e, VoteReceived)]
    outsider = SigningKey.generate(Algorithm.ED25519)
    forged = dataclasses.replace(honest[0].vote, signature=bytes(len(honest[0].vote.signature)))
    stranger = Vote(VoteType.PREVOTE, 1, 0, None, outsider.address, b"")
    stranger = dataclasses.replace(stranger, signature=outsider.sign(stranger.sign_bytes(CHAIN_ID)))
    later = [Vote(VoteType.PREVOTE, height, 0, None, KEYS[2].address, b"") for height in (2, 3)]
    later = [dataclasses.replace(v, signature=KEYS[2].sign(v.sign_bytes(CHAIN_ID)))
             for v in later]
    return tuple(VoteReceived(v) for v in (forged, stranger, *later))


def pool() -> tuple[Event, ...]:
    return inputs() + odd_votes()


ODD = st.integers(min_value=0, max_value=len(odd_votes()) - 1).map(
    lambda i: [len(inputs()) + i])


def started(config: ConsensusConfig) -> tuple[Logic, object]:
    logic = Logic(ME)
    state, _ = handle(config, logic, initial_state(1, VALIDATORS, PRIORITIES),
                      StartHeight(1, VALIDATORS))
    return logic, state


def one_by_one(events: list[Event], config: ConsensusConfig) -> list[tuple[object, tuple]]:
    logic, state = started(config)
    trace = []
    for event in events:
        state, outputs = handle(config, logic, state, event)  # type: ignore[arg-type]
        trace.append((state, outputs))
    return trace


def in_runs(events: list[Event], config: ConsensusConfig
            ) -> list[tuple[int, object, tuple[Output, ...]]]:
    """(index of the last input handled, state, outputs) at every return."""
    logic, state = started(config)
    trace = []
    at = 0
    while at < len(events):
        end = at
        while end < len(events) and isinstance(events[end], VoteReceived):
            end += 1
        if end > at:
            votes = [e.vote for e in events[at:end]]  # type: ignore[union-attr]
            state, outputs, used = handle_votes(config, logic, state, votes)  # type: ignore[arg-type]
            assert 1 <= used <= end - at
            assert used == end - at or outputs  # it stops early only at outputs
            at += used
        else:
            state, outputs = handle(config, logic, state, events[at])  # type: ignore[arg-type]
            at += 1
        trace.append((at - 1, state, outputs))
    return trace


def assert_same(events: list[Event]) -> None:
    config = remembering_config()
    folded = one_by_one(events, config)
    runs = in_runs(events, config)
    returned = {index for index, _, _ in runs}
    for index, state, outputs in runs:
        assert folded[index] == (state, outputs), index
    for index, (_, outputs) in enumerate(folded):
        assert index in returned or not outputs, index  # passed over only when silent
    assert not events or runs[-1][0] == len(events) - 1


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(ONE, ODD, ROUND_OF_VOTES.map(votes_of_a_round)), max_size=14))
def test_runs_of_votes_give_the_states_and_outputs_of_one_by_one(
        groups: list[list[int]]) -> None:
    everything = pool()
    assert_same([everything[index] for group in groups for index in group])


@given(st.permutations(range(len(inputs()))))
@settings(max_examples=60, deadline=None)
def test_every_input_in_any_order(order: list[int]) -> None:
    everything = inputs()
    assert_same([everything[index] for index in order] + list(odd_votes()))


def test_a_run_builds_the_state_once_not_per_vote() -> None:
    """Not vacuous: a round's prevotes below the threshold are counted without a state each."""
    everything = inputs()
    prevotes = [e.vote for e in everything if isinstance(e, VoteReceived)
                and e.vote.vote_type is VoteType.PREVOTE and e.vote.round == 0
                and e.vote.block_hash is None and e.vote.validator_address != ME.address]
    config = remembering_config()
    logic, state = started(config)
    builds = mock.Mock(wraps=state_machine._with_votes)
    with mock.patch.object(state_machine, "_with_votes", builds):
        state, outputs, used = handle_votes(config, logic, state, prevotes[:2])  # type: ignore[arg-type]
    assert (outputs, used, builds.call_count) == ((), 2, 1)
    assert set(state.votes.get(0, VoteType.PREVOTE).votes) == {  # type: ignore[attr-defined]
        v.validator_address for v in prevotes[:2]}
