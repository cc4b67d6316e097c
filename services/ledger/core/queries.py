"""Read-only questions about a ledger state (for the gateway, the CLI, the audit, tests)."""

from __future__ import annotations

from dataclasses import dataclass

from services.ledger.core.distribution import pending_rewards
from services.ledger.core.staking import delegation_value, shares_value
from services.ledger.core.state import (
    LedgerState,
    Proposal,
    UnbondingEntry,
    ValidatorRecord,
    get_account,
)

__all__ = [
    "DelegationView",
    "balance",
    "delegation_value",
    "delegations_of",
    "next_nonce",
    "pending_rewards",
    "proposal",
    "supply_held",
    "total_bonded",
    "unbonding_entries",
    "validator",
    "validators",
]


def balance(state: LedgerState, address: bytes) -> int:
    return get_account(state, address).balance


def next_nonce(state: LedgerState, address: bytes) -> int:
    """The nonce the next transaction from ``address`` must carry."""
    return get_account(state, address).nonce


def validator(state: LedgerState, address: bytes) -> ValidatorRecord | None:
    return state.validators.get(address)


def validators(state: LedgerState) -> tuple[ValidatorRecord, ...]:
    """Every validator record (bonded or not, jailed or not), sorted by address."""
    return tuple(state.validators.values())


@dataclass(frozen=True, slots=True)
class DelegationView:
    validator: bytes
    shares: int
    value: int  # tokens the shares are worth now
    pending_rewards: int


def delegations_of(state: LedgerState, delegator: bytes) -> tuple[DelegationView, ...]:
    """The delegations of one account, by validator address (scans the delegation map)."""
    return tuple(
        DelegationView(
            validator=key[1],
            shares=delegation.shares,
            value=shares_value(state.validators[key[1]], delegation.shares),
            pending_rewards=pending_rewards(state, delegator, key[1]),
        )
        for key, delegation in state.delegations.items()
        if key[0] == delegator
    )


def unbonding_entries(
    state: LedgerState, delegator: bytes
) -> tuple[tuple[bytes, UnbondingEntry], ...]:
    """(validator, entry) pairs of one account's stake on its way back."""
    return tuple(
        (key[1], entry)
        for key, entries in state.unbondings.items()
        if key[0] == delegator
        for entry in entries
    )


def proposal(state: LedgerState, proposal_id: int) -> Proposal | None:
    return state.proposals.get(proposal_id)


def total_bonded(state: LedgerState) -> int:
    return sum(record.tokens for record in state.validators.values())


def supply_held(state: LedgerState) -> int:
    """Every micro-unit that exists, summed where it lives (module docstring of ``state``).

    Equals ``state.supply.expected`` in every reachable state (the conservation invariant).
    """
    return (
        sum(account.balance for account in state.accounts.values())
        + total_bonded(state)
        + sum(entry.balance for entries in state.unbondings.values() for entry in entries)
        + sum(rewards.outstanding for rewards in state.rewards.values())
        + state.community_pool
        + state.fee_pool
        + sum(state.proposals[i].deposit for i in state.active_proposals)
    )
