"""Properties over random histories (hypothesis): conservation, F1 = naive, replay.

A history is a list of blocks; each block has a few random transactions (many of which fail on
purpose: amounts above balances, unknown validators, unjail when not jailed), a random set of
validators absent from the commit (so downtime jailing happens), and sometimes a double sign.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from fractions import Fraction
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.app import (
    FinalizeBlockRequest,
    FinalizeBlockResponse,
    Misbehavior,
    MisbehaviorKind,
    VoteInfo,
)
from services.ledger import core as ledger
from services.ledger.core import MICRO, RATE_ONE
from services.ledger.core.distribution import REWARD_RATIO_SCALE, pending_rewards
from services.ledger.core.queries import supply_held
from tests.unit.test_ledger_fixtures import Chain, address, make_genesis

VALIDATORS = (0, 1, 2, 3)
ACCOUNTS = (10, 11, 12)
ACTORS = VALIDATORS + ACCOUNTS
TARGETS = (0, 1, 2, 3, 10, 12)  # 10 and 12 may become validators; otherwise "unknown validator"

amounts = st.integers(min_value=1, max_value=700 * MICRO)
actors = st.sampled_from(ACTORS)
targets = st.sampled_from(TARGETS)
operations = st.one_of(
    st.tuples(st.just("transfer"), actors, actors, amounts),
    st.tuples(st.just("delegate"), actors, targets, amounts),
    st.tuples(st.just("undelegate"), actors, targets, amounts),
    st.tuples(st.just("withdraw"), actors, targets),
    st.tuples(st.just("create"), st.sampled_from(ACCOUNTS), amounts),
    st.tuples(st.just("unjail"), st.sampled_from(VALIDATORS)),
    st.tuples(st.just("service"), actors, st.integers(min_value=1, max_value=10_000)),
    st.tuples(st.just("propose"), actors, st.integers(min_value=0, max_value=3 * MICRO)),
    st.tuples(st.just("vote"), actors, st.sampled_from(list(ledger.VoteOption))),
)
blocks = st.fixed_dictionaries(
    {
        "ops": st.lists(operations, max_size=5),
        # validator 3 is often offline, so downtime jailing happens within a history
        "absent": st.sampled_from(
            [frozenset(), frozenset({3}), frozenset({3}), frozenset({2, 3}), frozenset({0})]
        ),
        "double_sign": st.one_of(st.none(), st.none(), st.none(), st.sampled_from(VALIDATORS)),
    }
)
histories = st.lists(blocks, min_size=1, max_size=18)


def _body(op: tuple) -> tuple[int, ledger.TxBody]:  # type: ignore[type-arg]
    kind = op[0]
    if kind == "transfer":
        return op[1], ledger.Transfer(address(op[2]), op[3])
    if kind == "delegate":
        return op[1], ledger.Delegate(address(op[2]), op[3])
    if kind == "undelegate":
        return op[1], ledger.Undelegate(address(op[2]), op[3])
    if kind == "withdraw":
        return op[1], ledger.WithdrawRewards(address(op[2]))
    if kind == "create":
        return op[1], ledger.CreateValidator(op[2], 50_000_000, 200_000_000, 10_000_000)
    if kind == "unjail":
        return op[1], ledger.Unjail()
    if kind == "service":
        return op[1], ledger.PayForService(ledger.ServiceKind.STORAGE, op[2], bytes(32))
    if kind == "propose":
        change = ledger.ParameterChangeProposal((ledger.ParameterChange("block_reward", op[2]),))
        return op[1], ledger.SubmitProposal(change, 10 * MICRO)
    return op[1], ledger.VoteProposal(1, op[2])


class NaiveRewards:
    """Reference model: every block, loop over every delegation and credit it.

    ``accrued`` applies the documented rounding (per-share increment with carry, one rounding
    at withdrawal) and must equal F1 exactly; ``exact`` is the exact rational entitlement: F1
    pays it rounded down, or one micro-unit less when it is a whole number (the per-share
    increment is truncated), and never more (up to the carried remainder, below 10^-6).
    """

    def __init__(self) -> None:
        self.carry: dict[bytes, int] = defaultdict(int)
        self.accrued: dict[tuple[bytes, bytes], int] = defaultdict(int)
        self.exact: dict[tuple[bytes, bytes], Fraction] = defaultdict(Fraction)

    def allocate(self, state: ledger.LedgerState, votes: tuple[VoteInfo, ...], fees: int) -> None:
        pot = state.params.block_reward + fees
        signers = sorted(
            {(v.address, v.power) for v in votes if v.signed and v.address in state.validators}
        )
        signed_power = sum(power for _, power in signers)
        if not signed_power:
            return
        distributable = pot - pot * state.params.community_tax_rate // RATE_ONE
        for validator, power in signers:
            record = state.validators[validator]
            share = distributable * power // signed_power
            to_delegators = share - share * record.commission_rate // RATE_ONE
            increment, self.carry[validator] = divmod(
                to_delegators * REWARD_RATIO_SCALE + self.carry[validator], record.shares
            )
            for (delegator, target), delegation in state.delegations.items():
                if target == validator:
                    self.accrued[delegator, target] += delegation.shares * increment
                    self.exact[delegator, target] += Fraction(
                        delegation.shares * to_delegators, record.shares
                    )

    def settle(self, delegator: bytes, validator: bytes) -> None:
        self.accrued[delegator, validator] = 0
        self.exact[delegator, validator] = Fraction(0)

    def check(self, state: ledger.LedgerState) -> None:
        for delegator, validator in state.delegations:
            pending = pending_rewards(state, delegator, validator)
            assert pending == self.accrued[delegator, validator] // REWARD_RATIO_SCALE
            exact = self.exact[delegator, validator]
            assert exact - 1 <= pending <= exact + Fraction(1, 10**6), (pending, exact)


def _check_invariants(state: ledger.LedgerState) -> None:
    assert supply_held(state) == state.supply.expected
    for validator, rewards in state.rewards.items():
        owed = sum(
            pending_rewards(state, delegator, target)
            for delegator, target in state.delegations
            if target == validator
        )
        assert rewards.commission >= 0 and owed + rewards.commission <= rewards.outstanding
        # The remainder carried into the next reward is below the shares of the last reward
        # (shares may have shrunk since, so not the current ones): under one micro-unit.
        assert 0 <= rewards.carry < REWARD_RATIO_SCALE
    for record in state.validators.values():
        assert record.tokens >= 0 and record.shares >= 0


def run_history(
    history: list[dict],
    naive: NaiveRewards | None = None,  # type: ignore[type-arg]
) -> tuple[Chain, list[FinalizeBlockRequest]]:
    chain = Chain(make_genesis(accounts=[(10, 2_000 * MICRO), (11, 500 * MICRO), (12, 900)]))
    requests: list[FinalizeBlockRequest] = []
    fees = 0
    for block in history:
        ops = [_body(op) for op in block["ops"]]
        txs = [chain.tx(sender, body) for sender, body in ops]
        height = chain.state.height + 1
        misbehavior = []
        if block["double_sign"] is not None and height > 1:
            misbehavior.append(
                Misbehavior(
                    MisbehaviorKind.DUPLICATE_VOTE,
                    address(block["double_sign"]),
                    height - 1,
                    0,
                    1,
                )
            )
        request = chain.request(txs, [address(i) for i in block["absent"]], misbehavior)
        if naive is not None:
            naive.allocate(chain.state, request.last_commit, fees)
        response = chain.apply(request)
        requests.append(request)
        fees = _fees(chain, ops, response)
        if naive is not None:
            for (sender, body), result in zip(ops, response.tx_results, strict=True):
                target = getattr(body, "validator", address(sender))
                if result.code == 0 and isinstance(
                    body, ledger.Delegate | ledger.Undelegate | ledger.WithdrawRewards
                    | ledger.CreateValidator
                ):
                    naive.settle(address(sender), target)
            naive.check(chain.state)
        _check_invariants(chain.state)
    return chain, requests


def _fees(chain: Chain, ops: list[tuple[int, ledger.TxBody]],
          response: FinalizeBlockResponse) -> int:
    """Fees and service payments of one block (what the next block distributes)."""
    total = 0
    for (_, body), result in zip(ops, response.tx_results, strict=True):
        total += result.fee_charged
        if result.code == 0 and isinstance(body, ledger.PayForService):
            total += body.units * chain.state.params.price_storage_per_unit
    return total


@given(history=histories)
@settings(max_examples=150, deadline=None)
def test_conservation_and_f1_equal_naive_distribution(history: list[dict]) -> None:  # type: ignore[type-arg]
    naive = NaiveRewards()
    chain, _ = run_history(history, naive)
    supply = chain.state.supply
    assert supply.issued == chain.state.height * chain.state.params.block_reward or any(
        block["ops"]
        for block in history  # a passed proposal may change the reward
    )
    assert supply_held(chain.state) == supply.genesis + supply.issued - supply.slashed - (
        supply.burned
    )


@given(history=histories)
@settings(max_examples=25, deadline=None)
def test_replaying_the_same_blocks_gives_the_same_state_hashes(history: list[dict]) -> None:  # type: ignore[type-arg]
    chain, requests = run_history(history)
    app = ledger.LedgerApp()
    state = ledger.genesis_state(
        make_genesis(accounts=[(10, 2_000 * MICRO), (11, 500 * MICRO), (12, 900)])
    )
    for request, original in zip(requests, chain.responses, strict=True):
        state, response = app.finalize_block(state, request)
        assert response == original
    assert ledger.state_hash(state) == ledger.state_hash(chain.state)


_FIXED_HISTORY: list[dict[str, Any]] = [
    {
        "ops": [("delegate", 10, 1, 333 * MICRO + 7), ("transfer", 11, 12, 5)],
        "absent": frozenset(),
        "double_sign": None,
    },
    {
        "ops": [("undelegate", 10, 1, 100 * MICRO + 1)],
        "absent": frozenset({3}),
        "double_sign": None,
    },
    {
        "ops": [("propose", 11, 2 * MICRO), ("withdraw", 10, 1)],
        "absent": frozenset({3}),
        "double_sign": 2,
    },
    {
        "ops": [("vote", 0, ledger.VoteOption.YES), ("vote", 1, ledger.VoteOption.YES)],
        "absent": frozenset(),
        "double_sign": None,
    },
]
_IDLE_BLOCK: dict[str, Any] = {"ops": [], "absent": frozenset({3}), "double_sign": None}
_FIXED_HISTORY += [_IDLE_BLOCK] * 12


def final_hash_of_fixed_history() -> str:
    chain, _ = run_history(_FIXED_HISTORY)
    return ledger.state_hash(chain.state).hex()


def test_state_hash_does_not_depend_on_the_process_hash_seed() -> None:
    """Maps bucket keys by ``hash()``; the state hash must not notice (PYTHONHASHSEED)."""
    code = (
        "from tests.unit.test_ledger_properties import final_hash_of_fixed_history as f; print(f())"
    )
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outputs.add(result.stdout.strip())
    assert outputs == {final_hash_of_fixed_history()}
