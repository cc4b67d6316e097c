"""The round state machine as a table of steps, emitted as golden vectors.

Each case is a table: one node (validator ``me`` of four, Ed25519 keys from fixed seeds) starts
height 1 and handles one input per row; every row states the input, the outputs the machine must
return and the state it must reach (the fields that matter: round, step, lock, valid value,
decision). The whole run is written to ``tests/vectors/consensus/<case>.json`` — every input,
every output and the state after each step — so another implementation can replay it:

    .venv/bin/python -m tests.unit.test_consensus_vectors    # rewrite the vector files

The table's ``expect`` entries are checked whenever a vector is built, so a regenerated file
cannot record a changed rule unnoticed. Validators are named by their index in the set's
canonical (address) order, blocks by the first 16 hex digits of their hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from protocol.block import Block
from protocol.keys import SigningKey
from protocol.messages import Vote, VoteType
from protocol.proposal import Proposal
from protocol.proposer import proposer
from services.consensus.core import state_machine as sm
from tests.support import vectors
from tests.support.sim import SimConfig, Simulation, sim_keys
from tests.unit.test_consensus_state_machine import (
    KEY_OF,
    KEYS,
    PRIORITIES,
    VALIDATORS,
    Logic,
    a_block,
    signed_proposal,
    signed_vote,
)

VECTOR_DIR = Path(__file__).resolve().parents[1] / "vectors" / "consensus"
CHAIN_ID = "qustream-sim"
INDEX = {v.address: i for i, v in enumerate(VALIDATORS.validators)}
PROPOSER_0 = KEY_OF[proposer(PRIORITIES, VALIDATORS, 0)]
PROPOSER_1 = KEY_OF[proposer(PRIORITIES, VALIDATORS, 1)]
NOT_PROPOSER = [k for k in KEYS if k.address not in (PROPOSER_0.address, PROPOSER_1.address)]
ME = NOT_PROPOSER[0]  # proposes in neither round 0 nor round 1
PEERS = [k for k in KEYS if k.address != ME.address]
BLOCK = a_block(0)
OTHER_BLOCK = Logic(PROPOSER_1).propose(1, 1)


def _hash(value: bytes | None) -> str | None:
    return None if value is None else value.hex()[:16]


def describe_input(event: sm.Event) -> dict[str, Any]:
    match event:
        case sm.StartHeight(height, validators):
            return {"input": "StartHeight", "height": height, "validators": len(validators)}
        case sm.ProposalReceived(p):
            return {"input": "Proposal", "height": p.height, "round": p.round,
                    "pol_round": p.pol_round, "block": _hash(p.block_hash),
                    "proposer": INDEX.get(p.proposer_address, p.proposer_address.hex()),
                    "signature": hashlib.sha256(p.signature).hexdigest()[:16]}
        case sm.VoteReceived(v):
            return {"input": v.vote_type.name.title(), "height": v.height, "round": v.round,
                    "block": _hash(v.block_hash),
                    "validator": INDEX.get(v.validator_address, v.validator_address.hex()),
                    "signature": hashlib.sha256(v.signature).hexdigest()[:16]}
        case sm.TimeoutFired(height, round, step):
            return {"input": "Timeout", "height": height, "round": round,
                    "step": step.name.lower()}
        case sm.CommitReceived(block, commit):
            return {"input": "Commit", "height": commit.height, "round": commit.round,
                    "block": _hash(block.hash)}
    raise AssertionError(event)


def describe_output(output: sm.Output) -> dict[str, Any]:
    match output:
        case sm.Broadcast(Proposal() as p):
            return {"output": "Proposal", "round": p.round, "pol_round": p.pol_round,
                    "block": _hash(p.block_hash)}
        case sm.Broadcast(Vote() as v):
            return {"output": v.vote_type.name.title(), "round": v.round,
                    "block": _hash(v.block_hash)}
        case sm.ScheduleTimeout(height, round, step, duration_ms):
            return {"output": "ScheduleTimeout", "height": height, "round": round,
                    "step": step.name.lower(), "duration_ms": duration_ms}
        case sm.Decided(height, round, block, commit):
            return {"output": "Decided", "height": height, "round": round,
                    "block": _hash(block.hash),
                    "signers": sorted(INDEX[a] for a in commit.signed_addresses())}
        case sm.EvidenceDetected(evidence):
            return {"output": "Evidence", "validator": INDEX[evidence.validator_address],
                    "height": evidence.height, "round": evidence.vote_a.round}
        case sm.MessageRejected(event, reason):
            return {"output": "Rejected", "input": describe_input(event)["input"],
                    "reason": reason}
    raise AssertionError(output)


def describe_state(state: sm.ConsensusState) -> dict[str, Any]:
    return {
        "height": state.height, "round": state.round, "step": state.step.name.lower(),
        "locked_round": state.locked_round,
        "locked_block": _hash(None if state.locked_block is None else state.locked_block.hash),
        "valid_round": state.valid_round,
        "valid_block": _hash(None if state.valid_block is None else state.valid_block.hash),
        "decided": None if state.decision is None else _hash(state.decision.block.hash),
    }


@dataclass(frozen=True)
class Row:
    """One input and what must follow: ``outputs`` lists the output kinds in order (a subset
    check on ``describe_output``), ``state`` the state fields that must hold afterwards."""

    input: Callable[[], sm.Event]
    outputs: tuple[dict[str, Any], ...] = ()
    state: dict[str, Any] = field(default_factory=dict)


def vote(key: SigningKey, kind: VoteType, round: int, block: Block | None
         ) -> Callable[[], sm.Event]:
    return lambda: sm.VoteReceived(signed_vote(key, kind, round, None if block is None
                                            else block.hash))


def proposal(round: int, block: Block, pol_round: int = -1) -> Callable[[], sm.Event]:
    return lambda: sm.ProposalReceived(signed_proposal(round, block, pol_round))


def timeout(round: int, step: sm.TimeoutStep) -> Callable[[], sm.Event]:
    return lambda: sm.TimeoutFired(1, round, step)


START = Row(lambda: sm.StartHeight(1, VALIDATORS),
            ({"output": "ScheduleTimeout", "step": "propose", "round": 0},),
            {"round": 0, "step": "propose"})
PREVOTE, PRECOMMIT = VoteType.PREVOTE, VoteType.PRECOMMIT
H_BLOCK, H_OTHER = _hash(BLOCK.hash), _hash(OTHER_BLOCK.hash)


def _forged_proposal() -> sm.Event:
    genuine = signed_proposal(0, BLOCK)
    return sm.ProposalReceived(dataclasses.replace(genuine, signature=bytes(64)))


def _wrong_proposer() -> sm.Event:
    unsigned = Proposal(1, 0, -1, BLOCK, ME.address, b"")
    return sm.ProposalReceived(dataclasses.replace(
        unsigned, signature=ME.sign(unsigned.sign_bytes(CHAIN_ID))))


def _decided_elsewhere() -> tuple[Block, Any]:
    other = Simulation(SimConfig(validators=4, heights=1, gst_ms=0))
    other.run()
    decision = other.nodes[0].decisions[1]
    return decision.block, decision.commit


def _commit_received() -> sm.Event:
    block, commit = _decided_elsewhere()
    return sm.CommitReceived(block, commit)


CASES: dict[str, tuple[str, tuple[Row, ...]]] = {
    "proposer_proposes": (
        "the round's proposer proposes at the start of the height and prevotes its own block",
        (Row(lambda: sm.StartHeight(1, VALIDATORS),
             ({"output": "Proposal", "round": 0, "pol_round": -1},
              {"output": "Prevote", "round": 0}),
             {"step": "prevote"}),),
    ),
    "happy_path": (
        "a valid proposal, +2/3 prevotes (lock, precommit), +2/3 precommits (decide)",
        (START,
         Row(proposal(0, BLOCK), ({"output": "Prevote", "block": H_BLOCK},), {"step": "prevote"}),
         Row(vote(PEERS[0], PREVOTE, 0, BLOCK)),
         Row(vote(PEERS[1], PREVOTE, 0, BLOCK),
             ({"output": "Precommit", "block": H_BLOCK},),
             {"step": "precommit", "locked_round": 0, "locked_block": H_BLOCK,
              "valid_round": 0}),
         Row(vote(PEERS[0], PRECOMMIT, 0, BLOCK)),
         Row(vote(PEERS[1], PRECOMMIT, 0, BLOCK),
             ({"output": "Decided", "block": H_BLOCK},),
             {"step": "committed", "decided": H_BLOCK})),
    ),
    "propose_timeout": (
        "no proposal: the propose timeout makes the node prevote nil",
        (START,
         Row(timeout(0, sm.TimeoutStep.PROPOSE), ({"output": "Prevote", "block": None},),
             {"step": "prevote"})),
    ),
    "nil_quorum": (
        "+2/3 nil prevotes make the node precommit nil; +2/3 precommits of any value schedule "
        "the precommit timeout, which moves to the next round",
        (START,
         Row(timeout(0, sm.TimeoutStep.PROPOSE), ({"output": "Prevote", "block": None},)),
         Row(vote(PEERS[0], PREVOTE, 0, None)),
         Row(vote(PEERS[1], PREVOTE, 0, None), ({"output": "Precommit", "block": None},),
             {"step": "precommit"}),
         Row(vote(PEERS[0], PRECOMMIT, 0, None)),
         Row(vote(PEERS[1], PRECOMMIT, 0, None),
             ({"output": "ScheduleTimeout", "step": "precommit", "round": 0},)),
         Row(timeout(0, sm.TimeoutStep.PRECOMMIT),
             ({"output": "ScheduleTimeout", "step": "propose", "round": 1},),
             {"round": 1, "step": "propose"})),
    ),
    "rejected_inputs": (
        "a forged proposal signature, a proposal from the wrong proposer, a forged vote and a "
        "vote from a stranger are rejected and change nothing",
        (START,
         Row(_forged_proposal, ({"output": "Rejected", "input": "Proposal"},),
             {"step": "propose"}),
         Row(_wrong_proposer, ({"output": "Rejected", "input": "Proposal"},)),
         Row(lambda: sm.VoteReceived(dataclasses.replace(
             signed_vote(PEERS[0], PREVOTE, 0, None), signature=bytes(64))),
             ({"output": "Rejected", "input": "Prevote"},)),
         Row(vote(sim_keys(5)[4], PREVOTE, 0, None),
             ({"output": "Rejected", "input": "Prevote"},), {"round": 0, "step": "propose"})),
    ),
    "equivocation": (
        "two prevotes of one validator for different values become evidence",
        (START,
         Row(vote(PEERS[0], PREVOTE, 0, None)),
         Row(vote(PEERS[0], PREVOTE, 0, BLOCK), ({"output": "Evidence", "round": 0},))),
    ),
    "round_skip": (
        "votes of a later round from more than a third of the power move the node there",
        (START,
         Row(vote(PEERS[0], PREVOTE, 5, None), (), {"round": 0}),
         Row(vote(PEERS[1], PREVOTE, 5, None),
             ({"output": "ScheduleTimeout", "step": "propose", "round": 5},), {"round": 5})),
    ),
    "locked_prevotes_nil": (
        "a node locked on a block prevotes nil for another block proposed without a proof of "
        "lock in a later round",
        (START,
         Row(proposal(0, BLOCK)),
         Row(vote(PEERS[0], PREVOTE, 0, BLOCK)),
         Row(vote(PEERS[1], PREVOTE, 0, BLOCK), (), {"locked_block": H_BLOCK}),
         *(Row(vote(peer, PRECOMMIT, 0, None)) for peer in PEERS),
         Row(timeout(0, sm.TimeoutStep.PRECOMMIT), (), {"round": 1}),
         Row(proposal(1, OTHER_BLOCK), ({"output": "Prevote", "round": 1, "block": None},),
             {"locked_block": H_BLOCK, "locked_round": 0})),
    ),
    "next_height_buffered": (
        "a vote of the next height is kept and replayed when that height starts",
        (START,
         Row(lambda: sm.VoteReceived(dataclasses.replace(
             signed_vote(PEERS[0], PREVOTE, 0, None), height=2)), (), {"height": 1})),
    ),
    "catch_up": (
        "a block decided elsewhere, with a certificate that verifies, is decided here",
        (START,
         Row(_commit_received, ({"output": "Decided"},), {"step": "committed"})),
    ),
}


def _matches(expected: dict[str, Any], actual: dict[str, Any]) -> bool:
    return all(actual.get(name) == value for name, value in expected.items())


def build_vector(name: str) -> dict[str, Any]:
    description, rows = CASES[name]
    config = sm.ConsensusConfig(CHAIN_ID, PROPOSER_0 if name == "proposer_proposes" else ME)
    assert config.key is not None
    logic = Logic(config.key)
    state = sm.initial_state(1, VALIDATORS, PRIORITIES)
    steps = []
    for number, row in enumerate(rows):
        event = row.input()
        state, outputs = sm.handle(config, logic, state, event)
        described = [describe_output(o) for o in outputs]
        remaining = list(described)
        for wanted in row.outputs:
            found = next((o for o in remaining if _matches(wanted, o)), None)
            assert found is not None, f"{name} row {number}: no output {wanted} in {described}"
            remaining = remaining[remaining.index(found) + 1:]
        after = describe_state(state)
        assert _matches(row.state, after), f"{name} row {number}: state {after} != {row.state}"
        steps.append({"input": describe_input(event), "outputs": described, "state": after})
    return {"description": description, "chain_id": CHAIN_ID, "me": INDEX[config.key.address],
            "validators": [{"address": v.address.hex(), "power": v.power}
                           for v in VALIDATORS.validators],
            "steps": steps}


def write_vectors() -> None:
    vectors.write(VECTOR_DIR, CASES, build_vector)


@pytest.mark.parametrize("name", sorted(CASES))
def test_table_holds_and_matches_its_golden_vector(name: str) -> None:
    recorded = vectors.load(VECTOR_DIR, name)
    assert vectors.generated(build_vector, name) == recorded


if __name__ == "__main__":
    write_vectors()
