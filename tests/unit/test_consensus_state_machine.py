"""The round state machine driven by hand: one node (index 0 of four) and crafted messages."""

from __future__ import annotations

import dataclasses

from protocol.block import Block
from protocol.keys import SigningKey
from protocol.messages import Vote, VoteType
from protocol.proposal import Proposal
from protocol.proposer import initial_priorities, proposer
from services.consensus.core.state_machine import (
    Broadcast,
    CommitReceived,
    ConsensusConfig,
    ConsensusState,
    Decided,
    Event,
    EvidenceDetected,
    MessageRejected,
    Output,
    ProposalReceived,
    ScheduleTimeout,
    StartHeight,
    Step,
    TimeoutFired,
    TimeoutStep,
    VoteReceived,
    handle,
    initial_state,
)
from tests.support.sim import SIM_RULES, SimConfig, Simulation, entropy_pool, sim_keys

KEYS = sim_keys(4)
SIMULATION = Simulation(SimConfig(validators=4))
CHAIN = SIMULATION.nodes[0].chain
VALIDATORS = CHAIN.validators
PRIORITIES = initial_priorities(VALIDATORS)
KEY_OF = {k.address: k for k in KEYS}


class Logic:
    def __init__(self, me: SigningKey) -> None:
        self.inner = dataclasses.replace(SIMULATION._logic(SIMULATION.nodes[0]),
                                         proposer_address=me.address,
                                         pool=entropy_pool(1, SIM_RULES))

    def propose(self, height: int, round: int) -> Block:
        return self.inner.propose(height, round)

    def validate(self, block: Block) -> str | None:
        return self.inner.validate(block)


def node_not_proposing(round: int) -> SigningKey:
    chosen = proposer(PRIORITIES, VALIDATORS, round)
    return next(k for k in KEYS if k.address != chosen)


def signed_vote(key: SigningKey, vote_type: VoteType, round: int, block: bytes | None) -> Vote:
    unsigned = Vote(vote_type, 1, round, block, key.address, b"")
    return dataclasses.replace(unsigned, signature=key.sign(unsigned.sign_bytes("qustream-sim")))


def signed_proposal(round: int, block: Block, pol_round: int = -1) -> Proposal:
    key = KEY_OF[proposer(PRIORITIES, VALIDATORS, round)]
    unsigned = Proposal(1, round, pol_round, block, key.address, b"")
    return dataclasses.replace(unsigned, signature=key.sign(unsigned.sign_bytes("qustream-sim")))


def run(me: SigningKey, state: ConsensusState, *events: Event
        ) -> tuple[ConsensusState, list[Output]]:
    config = ConsensusConfig("qustream-sim", me)
    outputs: list[Output] = []
    for event in events:
        state, out = handle(config, Logic(me), state, event)
        outputs.extend(out)
    return state, outputs


def votes_of(outputs: list[Output]) -> list[Vote]:
    return [o.message for o in outputs if isinstance(o, Broadcast)
            and isinstance(o.message, Vote)]


def started(me: SigningKey) -> tuple[ConsensusState, list[Output]]:
    return run(me, initial_state(1, VALIDATORS, PRIORITIES), StartHeight(1, VALIDATORS))


def a_block(round: int = 0) -> Block:
    return Logic(KEY_OF[proposer(PRIORITIES, VALIDATORS, round)]).propose(1, round)


def test_non_proposer_schedules_propose_timeout_then_prevotes_nil() -> None:
    me = node_not_proposing(0)
    state, outputs = started(me)
    assert any(isinstance(o, ScheduleTimeout) and o.step is TimeoutStep.PROPOSE for o in outputs)
    state, outputs = run(me, state, TimeoutFired(1, 0, TimeoutStep.PROPOSE))
    assert [v.block_hash for v in votes_of(outputs)] == [None]
    assert state.step is Step.PREVOTE


def test_full_round_decides_with_a_certificate() -> None:
    me = node_not_proposing(0)
    block = a_block()
    state, _ = started(me)
    state, outputs = run(me, state, ProposalReceived(signed_proposal(0, block)))
    assert [v.block_hash for v in votes_of(outputs)] == [block.hash]
    others = [k for k in KEYS if k.address != me.address][:2]
    events: list[Event] = [VoteReceived(signed_vote(k, VoteType.PREVOTE, 0, block.hash))
                           for k in others]
    state, outputs = run(me, state, *events)
    assert state.locked_round == 0 and state.step is Step.PRECOMMIT
    assert [v.vote_type for v in votes_of(outputs)] == [VoteType.PRECOMMIT]
    events = [VoteReceived(signed_vote(k, VoteType.PRECOMMIT, 0, block.hash)) for k in others]
    state, outputs = run(me, state, *events)
    decisions = [o for o in outputs if isinstance(o, Decided)]
    assert len(decisions) == 1 and decisions[0].block == block
    assert state.step is Step.COMMITTED


def test_locked_node_prevotes_nil_for_another_block_without_proof_of_lock() -> None:
    me = node_not_proposing(0)
    block = a_block()
    others = [k for k in KEYS if k.address != me.address]
    state, _ = started(me)
    state, _ = run(me, state, ProposalReceived(signed_proposal(0, block)),
                   *[VoteReceived(signed_vote(k, VoteType.PREVOTE, 0, block.hash))
                     for k in others[:2]])
    assert state.locked_block == block
    state, _ = run(me, state, *[VoteReceived(signed_vote(k, VoteType.PRECOMMIT, 0, None))
                                for k in others], TimeoutFired(1, 0, TimeoutStep.PRECOMMIT))
    assert state.round == 1
    other_block = Logic(KEY_OF[proposer(PRIORITIES, VALIDATORS, 1)]).propose(1, 1)
    assert other_block.hash != block.hash or proposer(PRIORITIES, VALIDATORS, 1) == me.address
    if proposer(PRIORITIES, VALIDATORS, 1) != me.address:
        state, outputs = run(me, state, ProposalReceived(signed_proposal(1, other_block)))
        assert [v.block_hash for v in votes_of(outputs)] == [None]


def test_round_skip_on_more_than_a_third_of_a_higher_round() -> None:
    me = node_not_proposing(0)
    state, _ = started(me)
    others = [k for k in KEYS if k.address != me.address]
    state, _ = run(me, state, VoteReceived(signed_vote(others[0], VoteType.PREVOTE, 5, None)))
    assert state.round == 0  # 10 of 40 is not more than a third
    state, _ = run(me, state, VoteReceived(signed_vote(others[1], VoteType.PREVOTE, 5, None)))
    assert state.round == 5


def test_bad_signatures_strangers_and_equivocation() -> None:
    me = node_not_proposing(0)
    state, _ = started(me)
    other = next(k for k in KEYS if k.address != me.address)
    forged = dataclasses.replace(signed_vote(other, VoteType.PREVOTE, 0, None),
                                 signature=bytes(64))
    stranger = sim_keys(5)[4]
    state, outputs = run(me, state, VoteReceived(forged),
                         VoteReceived(signed_vote(stranger, VoteType.PREVOTE, 0, None)))
    reasons = [o.reason for o in outputs if isinstance(o, MessageRejected)]
    assert any("bad vote signature" in r for r in reasons)
    assert any("not a validator" in r for r in reasons)
    state, outputs = run(me, state,
                         VoteReceived(signed_vote(other, VoteType.PREVOTE, 0, None)),
                         VoteReceived(signed_vote(other, VoteType.PREVOTE, 0, b"\x01" * 32)))
    assert any(isinstance(o, EvidenceDetected) for o in outputs)


def test_catch_up_from_a_verified_commit() -> None:
    decided = Simulation(SimConfig(validators=4, heights=1, gst_ms=0))
    decided.run()
    decision = decided.nodes[0].decisions[1]
    me = node_not_proposing(0)
    state, _ = started(me)
    forged = dataclasses.replace(decision.commit, round=decision.commit.round + 1)
    state, outputs = run(me, state, CommitReceived(decision.block, forged))
    assert any(isinstance(o, MessageRejected) and "does not verify" in o.reason for o in outputs)
    state, outputs = run(me, state, CommitReceived(decision.block, decision.commit))
    assert any(isinstance(o, Decided) for o in outputs) and state.step is Step.COMMITTED
