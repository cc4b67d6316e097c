"""Block rewards and fees: community share, split by signed voting power, commission, F1.

Per block (at the start of ``finalize_block`` for height H, as in the Cosmos SDK's BeginBlock):

1. ``block_reward`` is issued and added to the fee pool (fees and service payments of H-1).
   Issuance stops where ``genesis + issued`` would pass 2^64-1: every amount in the state is a
   part of that total, so no balance, pool or counter can ever leave its u64 field, whatever
   reward governance sets.
2. ``community_tax_rate`` of the pot goes to the community pool (rounded down).
3. The rest is split among the validators that signed H-1 (``last_commit``) in proportion to
   the power they signed with: ``share = rest * power // signed_power`` (rounded down); the
   rounding remainder goes to the community pool. If nobody signed (height 1), all of it does.
4. A validator's share: ``commission = share * commission_rate // RATE_ONE`` (rounded down) for
   the operator; the rest goes to its delegators, in proportion to their shares, lazily.

Lazy delegator rewards (F1, Ojha & Goes 2019, in its per-share form): each validator keeps one
cumulative ratio, reward per delegation share scaled by ``REWARD_RATIO_SCALE``; a delegation
remembers the ratio at which it was last settled, and is owed
``shares * (ratio_now - ratio_start) // REWARD_RATIO_SCALE``. The work per block is one
division per rewarded validator, never a loop over delegators. F1's historical-period table is
not needed because the ratio is updated every block; a delegation's shares only change through
transactions, which settle it first. Slashing changes tokens, not shares, so unlike F1 over
token stake no slash-event bookkeeping is needed.

Rounding, never creating money: the increment per block is
``(to_delegators * SCALE + carry) // shares`` and the remainder is carried into the next block
of the same validator, so at any time the undistributed remainder of a validator is below
``shares / SCALE`` micro-units for the shares of its last reward (an undelegation since may have
left fewer; the remainder then goes to the delegators still there at the next reward), which is
under one micro-unit, and payouts round down. Therefore the sum of what delegators can
withdraw never exceeds ``outstanding - commission``. A delegator receives exactly
``sum over blocks of shares * increment_b`` scaled down and rounded down once at withdrawal,
which is what the naive per-block loop in the tests computes, to the micro-unit. Against the
exact rational entitlement ``sum shares * to_delegators_b / total_shares_b``, a withdrawal is
that amount rounded down, or one micro-unit less when the exact amount is a whole number (the
truncated per-share increment lands just below it); never more, except by the carried remainder
of earlier blocks (below ``shares / SCALE``, i.e. far below one micro-unit). The tests check both.
"""

from __future__ import annotations

import dataclasses

from protocol.app import VoteInfo
from services.ledger.core.params import U64_MAX, apply_rate
from services.ledger.core.state import Delegation, LedgerState, ValidatorRewards, credit, evolve

REWARD_RATIO_SCALE = 10**18


def signed_votes(state: LedgerState, votes: tuple[VoteInfo, ...]) -> list[tuple[bytes, int]]:
    """(address, power) of known validators that signed, sorted by address, first entry wins."""
    seen: dict[bytes, int] = {}
    for vote in votes:
        if vote.signed and vote.power > 0 and vote.address in state.validators:
            seen.setdefault(vote.address, vote.power)
    return sorted(seen.items())


def allocate_block_rewards(state: LedgerState, votes: tuple[VoteInfo, ...]) -> LedgerState:
    """Issue the block reward and distribute it with the fee pool (steps 1-4 above)."""
    params = state.params
    supply = state.supply
    issued = min(params.block_reward, U64_MAX - supply.genesis - supply.issued)
    pot = issued + state.fee_pool
    state = evolve(
        state,
        fee_pool=0,
        supply=dataclasses.replace(supply, issued=supply.issued + issued),
    )
    signers = signed_votes(state, votes)
    signed_power = sum(power for _, power in signers)
    if signed_power == 0:
        return evolve(state, community_pool=state.community_pool + pot)
    community = apply_rate(pot, params.community_tax_rate)
    distributable = pot - community
    paid = 0
    credited: list[tuple[bytes, ValidatorRewards]] = []
    for address, power in signers:  # distinct addresses: each reward reads the state before
        share = distributable * power // signed_power
        credited.append((address, _rewarded(state, address, share)))
        paid += share
    return evolve(
        state,
        rewards=state.rewards.set_many(credited),
        community_pool=state.community_pool + community + distributable - paid,
    )


def reward_validator(state: LedgerState, address: bytes, amount: int) -> LedgerState:
    """Credit ``amount`` to one validator: commission to the operator, the rest to the ratio."""
    return evolve(
        state, rewards=state.rewards.set(address, _rewarded(state, address, amount))
    )


def _rewarded(state: LedgerState, address: bytes, amount: int) -> ValidatorRewards:
    """``address``'s rewards record after ``reward_validator(state, address, amount)``."""
    validator = state.validators[address]
    rewards = state.rewards.get(address) or ValidatorRewards()
    commission = apply_rate(amount, validator.commission_rate)
    to_delegators = amount - commission
    if validator.shares == 0:
        # No delegator to pay (cannot happen for a validator with power); keep it whole.
        commission, to_delegators = amount, 0
    increment, carry = 0, rewards.carry
    if validator.shares:
        increment, carry = divmod(to_delegators * REWARD_RATIO_SCALE + carry, validator.shares)
    return ValidatorRewards(
        ratio=rewards.ratio + increment,
        carry=carry,
        outstanding=rewards.outstanding + amount,
        commission=rewards.commission + commission,
    )


def pending_rewards(state: LedgerState, delegator: bytes, validator: bytes) -> int:
    """What ``delegator`` could withdraw from ``validator`` now (commission excluded)."""
    delegation = state.delegations.get((delegator, validator))
    rewards = state.rewards.get(validator)
    if delegation is None or rewards is None:
        return 0
    return (
        delegation.shares * (rewards.ratio - delegation.reward_ratio_start) // (REWARD_RATIO_SCALE)
    )


def settle_rewards(
    state: LedgerState, delegator: bytes, validator: bytes
) -> tuple[LedgerState, int]:
    """Pay a delegation's pending rewards to the delegator and restart it at the current ratio.

    Must run before any change of the delegation's shares. Returns the amount paid.
    """
    delegation = state.delegations.get((delegator, validator))
    if delegation is None:
        return state, 0
    rewards = state.rewards[validator]
    amount = pending_rewards(state, delegator, validator)
    restarted = Delegation(delegation.shares, rewards.ratio)
    state = evolve(
        state,
        delegations=state.delegations.set((delegator, validator), restarted),
        rewards=state.rewards.set(
            validator, dataclasses.replace(rewards, outstanding=rewards.outstanding - amount)
        ),
    )
    return credit(state, delegator, amount), amount


def withdraw_commission(state: LedgerState, validator: bytes) -> tuple[LedgerState, int]:
    """Pay the accumulated commission to the operator. Returns the amount paid."""
    rewards = state.rewards.get(validator)
    if rewards is None or rewards.commission == 0:
        return state, 0
    amount = rewards.commission
    state = evolve(
        state,
        rewards=state.rewards.set(
            validator,
            dataclasses.replace(rewards, commission=0, outstanding=rewards.outstanding - amount),
        ),
    )
    return credit(state, validator, amount), amount
