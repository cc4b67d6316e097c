"""Golden ledger vectors: genesis (pre-state) / blocks / post-state hash, for any implementation.

Each file under ``tests/vectors/ledger/`` holds a genesis document (the pre-state, with its
state hash), then blocks as ``FinalizeBlockRequest`` fields (transactions as hex of their
canonical signed bytes) with the expected per-transaction code and fee, the post-state hash,
the per-module roots and a summary (supply, balances, validators). Keys are Ed25519 from fixed
seeds, so regenerating reproduces the same bytes:

    .venv/bin/python -m tests.unit.test_ledger_vectors      # rewrite the vector files

Regenerate only on a deliberate change of the state machine or its encoding, and say so in the
commit message: the vectors are what other implementations and the audit check against.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from protocol.app import FinalizeBlockRequest, Misbehavior, MisbehaviorKind, VoteInfo
from services.ledger.core import (
    MICRO,
    Delegate,
    LedgerApp,
    LedgerState,
    ParameterChange,
    ParameterChangeProposal,
    PayForService,
    ServiceKind,
    SubmitProposal,
    Transfer,
    Undelegate,
    VoteOption,
    VoteProposal,
    WithdrawRewards,
    state_hash,
)
from services.ledger.core.genesis_file import genesis_from_json, genesis_state, genesis_to_json
from services.ledger.core.state import module_roots
from tests.support import vectors
from tests.unit.test_ledger_fixtures import Chain, address, make_genesis, with_params

VECTOR_DIR = Path(__file__).resolve().parents[1] / "vectors" / "ledger"


def _transfers(chain: Chain) -> None:
    chain.block([chain.tx(10, Transfer(address(11), 5 * MICRO))])
    chain.block(
        [
            chain.tx(11, Transfer(address(12), 1)),
            chain.tx(10, Transfer(address(11), 10**15)),  # insufficient funds: fee charged
            chain.tx(10, Transfer(address(11), 1), nonce=0),  # nonce reuse: no fee
            chain.tx(12, Transfer(address(10), 1)),  # account 12 has nothing: cannot pay fee
        ]
    )
    chain.block([chain.tx(10, PayForService(ServiceKind.KEY_MATERIAL, 4, bytes(range(32))))])
    chain.block()


def _staking(chain: Chain) -> None:
    chain.block([chain.tx(10, Delegate(address(1), 333 * MICRO + 17))])
    chain.block([chain.tx(11, Delegate(address(1), 100 * MICRO + 3))], absent=[address(2)])
    chain.block(absent=[address(2)])
    chain.block(
        [chain.tx(10, WithdrawRewards(address(1))), chain.tx(1, WithdrawRewards(address(1)))]
    )
    chain.block([chain.tx(10, Undelegate(address(1), 200 * MICRO))])
    chain.blocks(11)  # the unbonding completes


def _slashing(chain: Chain) -> None:
    chain.block([chain.tx(10, Delegate(address(2), 400 * MICRO))])
    chain.block([chain.tx(10, Undelegate(address(2), 100 * MICRO))])
    offence = Misbehavior(MisbehaviorKind.DUPLICATE_VOTE, address(2), 2, 0, 4000)
    chain.block(misbehavior=[offence])
    chain.blocks(11, absent=[address(3)])  # downtime jail of validator 3


def _governance(chain: Chain) -> None:
    change = ParameterChangeProposal((ParameterChange("block_reward", 3 * MICRO),))
    chain.block([chain.tx(10, SubmitProposal(change, 10 * MICRO))])
    chain.block([chain.tx(v, VoteProposal(1, VoteOption.YES)) for v in (0, 1, 2)])
    chain.blocks(3)


SCENARIOS: dict[str, tuple[str, Callable[[Chain], None]]] = {
    "transfers_and_fees": (
        "transfers, a failing body, an ante rejection, a service fee",
        _transfers,
    ),
    "staking_rewards": (
        "delegation, rewards with an absent signer, withdrawal, unbonding",
        _staking,
    ),
    "slashing": ("double sign reaching unbonding stake, then downtime jail", _slashing),
    "governance": ("a parameter change that passes and takes effect", _governance),
}


def _request_json(request: FinalizeBlockRequest) -> dict[str, Any]:
    return {
        "chain_id": request.chain_id,
        "height": request.height,
        "time_ms": request.time_ms,
        "proposer_address": request.proposer_address.hex(),
        "txs": [tx.hex() for tx in request.txs],
        "last_commit": [
            {"address": v.address.hex(), "power": v.power, "signed": v.signed}
            for v in request.last_commit
        ],
        "misbehavior": [
            {
                "kind": m.kind.value,
                "validator_address": m.validator_address.hex(),
                "height": m.height,
                "time_ms": m.time_ms,
                "total_voting_power": m.total_voting_power,
            }
            for m in request.misbehavior
        ],
        "randomness": request.randomness.hex(),
    }


def _request_from_json(data: dict[str, Any]) -> FinalizeBlockRequest:
    return FinalizeBlockRequest(
        chain_id=data["chain_id"],
        height=data["height"],
        time_ms=data["time_ms"],
        proposer_address=bytes.fromhex(data["proposer_address"]),
        txs=tuple(bytes.fromhex(tx) for tx in data["txs"]),
        last_commit=tuple(
            VoteInfo(bytes.fromhex(v["address"]), v["power"], v["signed"])
            for v in data["last_commit"]
        ),
        misbehavior=tuple(
            Misbehavior(
                MisbehaviorKind(m["kind"]),
                bytes.fromhex(m["validator_address"]),
                m["height"],
                m["time_ms"],
                m["total_voting_power"],
            )
            for m in data["misbehavior"]
        ),
        randomness=bytes.fromhex(data["randomness"]),
    )


def _summary(state: LedgerState) -> dict[str, Any]:
    return {
        "height": state.height,
        "supply": {
            "genesis": state.supply.genesis,
            "issued": state.supply.issued,
            "slashed": state.supply.slashed,
            "burned": state.supply.burned,
        },
        "community_pool": state.community_pool,
        "fee_pool": state.fee_pool,
        "balances": {a.hex(): account.balance for a, account in state.accounts.items()},
        "validators": {
            a.hex(): {"tokens": v.tokens, "jailed": v.jailed, "tombstoned": v.tombstoned}
            for a, v in state.validators.items()
        },
        "module_roots": {name: root.hex() for name, root in module_roots(state)},
    }


def build_vector(name: str) -> dict[str, Any]:
    description, scenario = SCENARIOS[name]
    genesis = with_params(make_genesis(), signed_blocks_window=5)
    chain = Chain(genesis)
    pre_hash = state_hash(chain.state).hex()
    scenario(chain)
    blocks = []
    state = genesis_state(genesis)
    for request, response in zip(chain.requests, chain.responses, strict=True):
        state, _ = LedgerApp().finalize_block(state, request)
        blocks.append(
            {
                "request": _request_json(request),
                "tx_results": [
                    {"code": r.code, "fee_charged": r.fee_charged} for r in response.tx_results
                ],
                "post_state_hash": response.app_hash.hex(),
                "post_state": _summary(state),
            }
        )
    return {
        "description": description,
        "genesis": genesis_to_json(genesis),
        "pre_state_hash": pre_hash,
        "blocks": blocks,
    }


def write_vectors() -> None:
    vectors.write(VECTOR_DIR, SCENARIOS, build_vector)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_vector_replays_to_the_recorded_hashes(name: str) -> None:
    vector = vectors.load(VECTOR_DIR, name)
    state = genesis_state(genesis_from_json(vector["genesis"]))
    assert state_hash(state).hex() == vector["pre_state_hash"]
    app = LedgerApp()
    for block in vector["blocks"]:
        state, response = app.finalize_block(state, _request_from_json(block["request"]))
        results = [{"code": r.code, "fee_charged": r.fee_charged} for r in response.tx_results]
        assert results == block["tx_results"]
        assert _summary(state) == block["post_state"]
        assert response.app_hash.hex() == block["post_state_hash"]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_vector_files_are_what_the_generator_produces(name: str) -> None:
    recorded = vectors.load(VECTOR_DIR, name)
    assert vectors.generated(build_vector, name) == recorded


if __name__ == "__main__":
    write_vectors()
