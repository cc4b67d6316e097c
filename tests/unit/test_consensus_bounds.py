"""Issue 16, items 1, 2, 5 and 11: one message cannot make the core work without bound, a
proposer cannot stamp a time that halts the chain, and healthy validators are not counted as
missing. Properties over hypothesis-chosen rounds, counts and times, on the pure core."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

import protocol.proposer as proposer_module
from protocol.app import VoteInfo
from protocol.chain import finalize_request
from protocol.commit import CommitFlag, verify_commit
from protocol.messages import VoteType
from protocol.proposal import Proposal
from protocol.proposer import ProposerSchedule, proposer
from services.block_builder.core.proposal import MAX_TIME_DRIFT_MS
from services.consensus.core.state_machine import (
    MAX_ROUNDS_AHEAD,
    ConsensusConfig,
    Decided,
    MessageRejected,
    ProposalReceived,
    StartHeight,
    Step,
    VoteReceived,
    commit_for_next_height,
    handle,
    initial_state,
)
from services.consensus.core.vote_set import MAX_CATCHUP_ROUNDS
from tests.unit.test_consensus_state_machine import (
    KEY_OF,
    KEYS,
    PRIORITIES,
    VALIDATORS,
    Logic,
    a_block,
    node_not_proposing,
    run,
    signed_proposal,
    signed_vote,
    started,
)

CHAIN_ID = "qustream-sim"


class _CountingIncrements:
    """Counts proposer-priority increments (the O(round) work a round number asks for)."""

    def __init__(self) -> None:
        self.calls = 0
        self._inner = proposer_module._increment_once

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.calls += 1
        return self._inner(*args, **kwargs)


@settings(max_examples=40, deadline=None)
@given(round_=st.integers(min_value=2, max_value=200_000), signed=st.booleans())
def test_a_proposal_claiming_any_round_costs_bounded_work(round_: int, signed: bool) -> None:
    """Item 1: whatever round a proposal claims, signed or not, the core computes at most the
    proposers of the rounds it admits (its own + MAX_ROUNDS_AHEAD), never O(claimed round)."""
    me = node_not_proposing(0)
    state, _ = started(me)
    sender = next(k for k in KEYS if k.address != me.address)
    block = a_block()
    unsigned = Proposal(1, round_, -1, block, sender.address, b"")
    signature = sender.sign(unsigned.sign_bytes(CHAIN_ID)) if signed else bytes(64)
    counter = _CountingIncrements()
    original = proposer_module._increment_once
    proposer_module._increment_once = counter  # type: ignore[assignment]
    try:
        state, outputs = run(me, state, ProposalReceived(dataclasses.replace(
            unsigned, signature=signature)))
    finally:
        proposer_module._increment_once = original  # type: ignore[assignment]
    assert counter.calls <= MAX_ROUNDS_AHEAD + 2
    genuine = (signed and round_ <= MAX_ROUNDS_AHEAD
               and proposer(PRIORITIES, VALIDATORS, round_) == sender.address)
    assert (round_ in state.proposals) is genuine
    assert genuine or any(isinstance(o, MessageRejected) for o in outputs)


def test_the_largest_round_is_refused_at_once() -> None:
    me = node_not_proposing(0)
    state, _ = started(me)
    sender = next(k for k in KEYS if k.address != me.address)
    unsigned = Proposal(1, 2**31 - 1, -1, a_block(), sender.address, b"")
    state, outputs = run(me, state, ProposalReceived(unsigned))
    assert [o.reason for o in outputs if isinstance(o, MessageRejected)] == [
        f"round {2**31 - 1} lies more than {MAX_ROUNDS_AHEAD} rounds beyond round 0"]


@given(st.integers(min_value=0, max_value=300))
def test_schedule_matches_the_reference_and_remembers(round_: int) -> None:
    schedule = ProposerSchedule(PRIORITIES, VALIDATORS)
    assert schedule.proposer(round_) == proposer(PRIORITIES, VALIDATORS, round_)
    assert schedule.computed_rounds == round_ + 1
    schedule.proposer(round_ // 2)  # an earlier round costs nothing
    assert schedule.computed_rounds == round_ + 1


@settings(max_examples=25, deadline=None)
@given(count=st.integers(min_value=3, max_value=400))
def test_votes_for_many_future_rounds_hold_two_rounds(count: int) -> None:
    """Item 5: a validator signing votes for rounds 2..count opens at most its catch-up
    rounds; every other one is refused, so the rounds later messages scan stay bounded."""
    me = node_not_proposing(0)
    state, _ = started(me)
    byzantine = next(k for k in KEYS if k.address != me.address)
    events = [VoteReceived(signed_vote(byzantine, VoteType.PREVOTE, r, None))
              for r in range(2, count + 2)]
    state, outputs = run(me, state, *events)
    held = [r for r in state.votes.rounds() if r > state.round + 1]
    assert len(held) <= MAX_CATCHUP_ROUNDS
    refused = [o for o in outputs if isinstance(o, MessageRejected)]
    assert len(refused) == count - min(count, MAX_CATCHUP_ROUNDS)
    # honest messages still work: the round-0 proposal is taken and prevoted
    state, outputs = run(me, state, ProposalReceived(signed_proposal(0, a_block())))
    assert state.step is Step.PREVOTE


def test_forged_votes_do_not_use_up_an_honest_validators_catch_up_rounds() -> None:
    me = node_not_proposing(0)
    state, _ = started(me)
    honest = next(k for k in KEYS if k.address != me.address)
    forged = [dataclasses.replace(signed_vote(honest, VoteType.PREVOTE, r, None),
                                  signature=bytes(64)) for r in range(5, 50)]
    state, _ = run(me, state, *map(VoteReceived, forged))
    assert state.votes.catchup == {}
    state, _ = run(me, state, VoteReceived(signed_vote(honest, VoteType.PREVOTE, 7, None)))
    assert 7 in state.votes.rounds()


@settings(max_examples=30, deadline=None)
@given(ahead_ms=st.integers(min_value=-5_000, max_value=2**63))
def test_validators_refuse_times_beyond_their_clock_and_drift(ahead_ms: int) -> None:
    """Item 2: a block stamped more than MAX_TIME_DRIFT_MS after the validator's clock is
    refused (so 2^64-1 can never be decided); within the drift it is fine."""
    logic = Logic(KEYS[0]).inner
    now = logic.now_ms
    stamped = max(now + ahead_ms, logic.chain.tip.previous_time_ms + 1)
    if stamped >= 2**64:
        return
    block = dataclasses.replace(logic, now_ms=stamped).propose(1, 0)
    assert block.header.time_ms == stamped
    reason = logic.validate(block)
    if stamped > now + MAX_TIME_DRIFT_MS:
        assert reason is not None and "clock" in reason
    else:
        assert reason is None


def _decide_with(me_index: int, late: str) -> tuple[object, Decided, object]:
    """Node ``me_index`` decides block 1 with the precommits of two others (its own makes the
    third), then hears the fourth validator's precommit: for the block, nil, or nothing."""
    me = KEYS[me_index]
    block = a_block()
    state, _ = run(me, initial_state(1, VALIDATORS, PRIORITIES), StartHeight(1, VALIDATORS),
                   ProposalReceived(signed_proposal(0, block)))
    others = [k for k in KEYS if k.address != me.address]
    voters, last = others[:2], others[2]
    state, _ = run(me, state, *[VoteReceived(signed_vote(k, VoteType.PREVOTE, 0, block.hash))
                                for k in voters])
    state, outputs = run(me, state, *[VoteReceived(signed_vote(k, VoteType.PRECOMMIT, 0,
                                                               block.hash)) for k in voters])
    decision = next(o for o in outputs if isinstance(o, Decided))
    if late != "absent":
        value = block.hash if late == "block" else None
        state, _ = run(me, state, VoteReceived(signed_vote(last, VoteType.PRECOMMIT, 0, value)))
    return state, decision, last


@given(me_index=st.integers(min_value=0, max_value=3),
       late=st.sampled_from(["block", "nil", "absent"]))
def test_late_precommits_enter_the_next_last_commit(me_index: int, late: str) -> None:
    """Item 11: the certificate the next block carries holds every precommit of the deciding
    round counted after the quorum; it still verifies; a nil precommit counts as signed."""
    state, decision, last = _decide_with(me_index, late)
    extended = commit_for_next_height(state)  # type: ignore[arg-type]
    assert extended is not None
    flags = {s.validator_address: s.flag for s in extended.signatures}
    expected = {"block": CommitFlag.COMMIT, "nil": CommitFlag.NIL, "absent": CommitFlag.ABSENT}
    assert flags[last.address] is expected[late]
    assert sum(f is not CommitFlag.ABSENT for f in flags.values()) == (3 if late == "absent"
                                                                       else 4)
    assert verify_commit(CHAIN_ID, decision.block.hash, 1, extended, VALIDATORS).ok
    assert (extended.round, extended.block_hash) == (decision.commit.round,
                                                     decision.commit.block_hash)
    # what the ledger is told: only ABSENT is a miss
    chain = Logic(KEYS[0]).inner.chain
    from protocol.chain import apply_block

    after, _ = apply_block(chain, Logic(KEYS[0]).inner.app, decision.block, decision.commit)
    next_block = dataclasses.replace(Logic(KEYS[0]).inner, chain=after).propose(2, 0)
    next_block = dataclasses.replace(next_block, body=dataclasses.replace(
        next_block.body, last_commit=extended))
    infos: tuple[VoteInfo, ...] = finalize_request(after, next_block).last_commit
    signed = {i.address: i.signed for i in infos}
    assert signed[last.address] is (late != "absent")
    assert sum(signed.values()) == (3 if late == "absent" else 4)


def test_a_commit_from_the_log_is_completed_too() -> None:
    """The catch-up path (a certificate read from chain.blocks) gets the same completion."""
    state, decision, last = _decide_with(0, "block")
    thin = dataclasses.replace(decision.commit, signatures=tuple(
        dataclasses.replace(s, flag=CommitFlag.ABSENT, signature=b"")
        if s.validator_address == last.address else s for s in decision.commit.signatures))
    state = dataclasses.replace(state, decision=dataclasses.replace(decision, commit=thin))
    extended = commit_for_next_height(state)  # type: ignore[arg-type]
    assert extended is not None
    assert {s.validator_address: s.flag for s in extended.signatures}[last.address] is (
        CommitFlag.COMMIT)


@settings(max_examples=10, deadline=None)
@given(junk=st.integers(min_value=1, max_value=300))
def test_unsigned_messages_of_the_next_height_are_not_buffered(junk: int) -> None:
    """The buffer of height + 1 keeps only what verifies against that height's set, at most
    ``max_future_per_validator`` per validator: junk cannot push honest messages out."""
    me = node_not_proposing(0)
    config = ConsensusConfig(CHAIN_ID, me)
    state, _ = handle(config, Logic(me), initial_state(1, VALIDATORS, PRIORITIES),
                      StartHeight(1, VALIDATORS, VALIDATORS))
    honest = next(k for k in KEYS if k.address != me.address)
    forged = [dataclasses.replace(signed_vote(honest, VoteType.PREVOTE, 0, None),
                                  height=2, signature=bytes([i % 256]) * 64)
              for i in range(junk)]
    for vote in forged:
        state, outputs = handle(config, Logic(me), state, VoteReceived(vote))
        assert any(isinstance(o, MessageRejected) for o in outputs)
    assert state.future == ()
    unsigned = dataclasses.replace(signed_vote(honest, VoteType.PREVOTE, 0, None), height=2,
                                   signature=b"")
    genuine = dataclasses.replace(unsigned, signature=honest.sign(unsigned.sign_bytes(CHAIN_ID)))
    state, _ = handle(config, Logic(me), state, VoteReceived(genuine))
    assert len(state.future) == 1
    many = [VoteReceived(genuine)] * (config.max_future_per_validator + 5)
    for event in many:
        state, _ = handle(config, Logic(me), state, event)
    assert len(state.future) == config.max_future_per_validator


def test_key_of_covers_every_validator() -> None:
    assert set(KEY_OF) == {v.address for v in VALIDATORS.validators}


def test_a_completed_last_commit_costs_only_its_new_signatures() -> None:
    """Readers verify a ``last_commit`` that extends the certificate they verified by checking
    the late precommits only; a forged late record still fails."""
    from protocol.chain import apply_block
    from protocol.check import check_signatures
    from protocol.commit import CommitSig

    state, decision, last = _decide_with(0, "block")
    extended = commit_for_next_height(state)  # type: ignore[arg-type]
    assert extended is not None
    logic = Logic(KEYS[0]).inner
    after, _ = apply_block(logic.chain, logic.app, decision.block, decision.commit)
    block = dataclasses.replace(logic, chain=after).propose(2, 0)
    calls: list[bytes] = []

    def counting(key, message, signature):  # type: ignore[no-untyped-def]
        calls.append(message)
        return key.verify(message, signature)

    def with_last_commit(commit):  # type: ignore[no-untyped-def]
        body = dataclasses.replace(block.body, last_commit=commit)
        return dataclasses.replace(block, body=body)

    found = check_signatures(after, with_last_commit(extended), None, check=counting,
                             verified_last_commit=decision.commit)
    assert found == [] and len(calls) == 1
    forged = dataclasses.replace(extended, signatures=tuple(
        CommitSig(s.flag, s.validator_address, bytes(64)) if s.validator_address == last.address
        else s for s in extended.signatures))
    found = check_signatures(after, with_last_commit(forged), None, check=counting,
                             verified_last_commit=decision.commit)
    assert [f.check for f in found] == ["last_commit"]


@given(me_index=st.integers(min_value=0, max_value=3),
       late=st.sampled_from(["block", "nil", "absent"]))
def test_the_commit_window_awaits_who_signed_the_previous_certificate(me_index: int,
                                                                      late: str) -> None:
    """Item 11: after a decision the node waits the full window for validators present in the
    decided block's last_commit, and only the short one for those it records absent."""
    from services.consensus.core.state_machine import all_precommits_in, precommits_in
    from services.consensus.node import awaited_precommits

    state, decision, last = _decide_with(me_index, late)
    everyone = [k.address for k in KEYS]
    others = [a for a in everyone if a != last.address]
    assert precommits_in(state, others)  # type: ignore[arg-type]
    assert precommits_in(state, everyone) is (late != "absent")  # type: ignore[arg-type]
    assert all_precommits_in(state) is (late != "absent")  # type: ignore[arg-type]
    assert precommits_in(state, [b"\x00" * 20])  # type: ignore[arg-type]  # not a validator
    assert awaited_precommits(decision.block) is None  # height 1: no last_commit, everyone

    # the next block carries the completed certificate: who signed it is awaited fully
    extended = commit_for_next_height(state)  # type: ignore[arg-type]
    assert extended is not None
    chain = Logic(KEYS[0]).inner.chain
    from protocol.chain import apply_block

    after, _ = apply_block(chain, Logic(KEYS[0]).inner.app, decision.block, decision.commit)
    next_block = dataclasses.replace(Logic(KEYS[0]).inner, chain=after).propose(2, 0)
    next_block = dataclasses.replace(next_block, body=dataclasses.replace(
        next_block.body, last_commit=extended))
    awaited = awaited_precommits(next_block)
    assert awaited is not None
    assert (last.address in awaited) is (late != "absent")
    assert set(others) <= awaited
