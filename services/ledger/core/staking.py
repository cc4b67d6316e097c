"""Validators, delegations, unbonding, jail, and the validator set.

Delegations are shares of a validator's ``tokens`` (the Cosmos SDK model): slashing lowers the
tokens and so every delegation's value at once, with no loop over delegators. Conversions round
in the validator's favour so they never create money:

- delegate ``amount``: ``shares = amount * total_shares // tokens`` (rounded down);
- undelegate ``amount``: ``ceil(amount * total_shares / tokens)`` shares are removed (rounded up)
  and exactly ``amount`` leaves; the last shares out take every remaining token, so no dust is
  stranded in a validator without delegators.

Undelegated tokens become an ``UnbondingEntry`` that pays out at the end of block
``creation + unbonding_period_blocks`` and stays slashable until then (see ``slashing``). An
operator whose self-delegation drops below ``min_self_bond`` is jailed (it may unjail once the
self-bond is restored). The validator set for height H+2 is computed at the end of H: non-jailed
validators with power ``tokens // power_reduction`` > 0, highest power first, ties by address,
at most ``max_validators``.
"""

from __future__ import annotations

import dataclasses

from protocol.keys import PublicKey
from protocol.validators import Validator, ValidatorSet
from services.ledger.core.distribution import settle_rewards
from services.ledger.core.errors import (
    AmountTooSmallError,
    BelowMinimumSelfBondError,
    CommissionChangeError,
    InsufficientDelegationError,
    InvalidExchangeRateError,
    NotJailedError,
    StillJailedError,
    TooManyUnbondingEntriesError,
    UnknownValidatorError,
    ValidatorExistsError,
    ValidatorTombstonedError,
)
from services.ledger.core.state import (
    Delegation,
    LedgerState,
    SigningInfo,
    UnbondingEntry,
    ValidatorRecord,
    ValidatorRewards,
    credit,
    debit,
    evolve,
)
from services.ledger.core.tx import CreateValidator, Delegate, EditValidator, Undelegate


def get_validator(state: LedgerState, address: bytes) -> ValidatorRecord:
    validator = state.validators.get(address)
    if validator is None:
        raise UnknownValidatorError(f"no validator {address.hex()}")
    return validator


def shares_value(validator: ValidatorRecord, shares: int) -> int:
    """Tokens that ``shares`` of ``validator`` are worth (rounded down)."""
    return 0 if validator.shares == 0 else shares * validator.tokens // validator.shares


def delegation_value(state: LedgerState, delegator: bytes, validator: bytes) -> int:
    delegation = state.delegations.get((delegator, validator))
    record = state.validators.get(validator)
    if delegation is None or record is None:
        return 0
    return shares_value(record, delegation.shares)


def add_validator(
    state: LedgerState, public_key: PublicKey, body: CreateValidator, height: int
) -> LedgerState:
    """Register a validator with no stake yet (the caller bonds the self-bond)."""
    address = public_key.address
    record = ValidatorRecord(
        address=address,
        public_key=public_key,
        tokens=0,
        shares=0,
        commission_rate=body.commission_rate,
        max_commission_rate=body.max_commission_rate,
        max_commission_change_rate=body.max_commission_change_rate,
        commission_changed_height=height,
    )
    info = SigningInfo(window=state.params.signed_blocks_window, start_height=height)
    return evolve(
        state,
        validators=state.validators.set(address, record),
        rewards=state.rewards.set(address, ValidatorRewards()),
        signing_infos=state.signing_infos.set(address, info),
    )


def create_validator(
    state: LedgerState, public_key: PublicKey, body: CreateValidator, height: int
) -> LedgerState:
    address = public_key.address
    if address in state.validators:
        raise ValidatorExistsError(f"{address.hex()} already operates a validator")
    if body.self_bond < state.params.min_self_bond:
        raise BelowMinimumSelfBondError(
            f"self-bond {body.self_bond} is below the minimum {state.params.min_self_bond}"
        )
    state = debit(state, address, body.self_bond)
    state = add_validator(state, public_key, body, height)
    return bond(state, address, address, body.self_bond)


def bond(state: LedgerState, delegator: bytes, validator: bytes, amount: int) -> LedgerState:
    """Turn ``amount`` (already taken from the delegator) into shares of ``validator``."""
    record = state.validators[validator]
    if record.shares == 0:
        shares = amount
    elif record.tokens == 0:
        raise InvalidExchangeRateError(
            f"validator {validator.hex()} has shares but no tokens (slashed to zero)"
        )
    else:
        shares = amount * record.shares // record.tokens
    if shares == 0:
        raise AmountTooSmallError(f"{amount} buys no shares of {validator.hex()}")
    state, _ = settle_rewards(state, delegator, validator)
    key = (delegator, validator)
    existing = state.delegations.get(key)
    ratio = state.rewards[validator].ratio
    delegation = Delegation((existing.shares if existing else 0) + shares, ratio)
    record = dataclasses.replace(
        record, tokens=record.tokens + amount, shares=record.shares + shares
    )
    return evolve(
        state,
        delegations=state.delegations.set(key, delegation),
        validators=state.validators.set(validator, record),
    )


def delegate(state: LedgerState, delegator: bytes, body: Delegate, height: int) -> LedgerState:
    record = get_validator(state, body.validator)
    if record.tombstoned:
        raise ValidatorTombstonedError(f"validator {body.validator.hex()} is tombstoned")
    state = debit(state, delegator, body.amount)
    return bond(state, delegator, body.validator, body.amount)


def undelegate(state: LedgerState, delegator: bytes, body: Undelegate, height: int) -> LedgerState:
    validator = body.validator
    get_validator(state, validator)
    key = (delegator, validator)
    delegation = state.delegations.get(key)
    if delegation is None:
        raise InsufficientDelegationError(
            f"{delegator.hex()} has no delegation to {validator.hex()}"
        )
    state, _ = settle_rewards(state, delegator, validator)
    delegation = state.delegations[key]
    record = state.validators[validator]
    value = shares_value(record, delegation.shares)
    if body.amount > value:
        raise InsufficientDelegationError(
            f"delegation is worth {value}, cannot undelegate {body.amount}"
        )
    entries = state.unbondings.get(key) or ()
    if len(entries) >= state.params.max_unbonding_entries:
        raise TooManyUnbondingEntriesError(
            f"{len(entries)} unbonding entries already exist for this delegation"
        )
    removed = -(-body.amount * record.shares // record.tokens)  # ceil; tokens > 0 here
    released = record.tokens if removed == record.shares else body.amount
    record = dataclasses.replace(
        record, tokens=record.tokens - released, shares=record.shares - removed
    )
    remaining = delegation.shares - removed
    delegations = (
        state.delegations.set(key, dataclasses.replace(delegation, shares=remaining))
        if remaining
        else state.delegations.remove(key)
    )
    completion = height + state.params.unbonding_period_blocks
    entry = UnbondingEntry(height, completion, released, released)
    queued = state.unbonding_queue.get(completion) or ()
    if key not in queued:
        queued = tuple(sorted((*queued, key)))
    state = evolve(
        state,
        validators=state.validators.set(validator, record),
        delegations=delegations,
        unbondings=state.unbondings.set(key, (*entries, entry)),
        unbonding_queue=state.unbonding_queue.set(completion, queued),
    )
    below_minimum = delegation_value(state, validator, validator) < state.params.min_self_bond
    if delegator == validator and not record.jailed and below_minimum:
        state = jail(state, validator, until=height)
    return state


def mature_unbondings(state: LedgerState, height: int) -> LedgerState:
    """Pay out every unbonding entry completing at ``height`` (end of block)."""
    pairs = state.unbonding_queue.get(height)
    if pairs is None:
        return state
    for key in pairs:
        entries = state.unbondings.get(key) or ()
        due = [entry for entry in entries if entry.completion_height <= height]
        rest = tuple(entry for entry in entries if entry.completion_height > height)
        unbondings = state.unbondings.set(key, rest) if rest else state.unbondings.remove(key)
        state = evolve(state, unbondings=unbondings)
        state = credit(state, key[0], sum(entry.balance for entry in due))
    return evolve(state, unbonding_queue=state.unbonding_queue.remove(height))


def edit_validator(
    state: LedgerState, operator: bytes, body: EditValidator, height: int
) -> LedgerState:
    record = get_validator(state, operator)
    new_rate = body.commission_rate
    if new_rate > record.max_commission_rate:
        raise CommissionChangeError(
            f"commission {new_rate} exceeds the maximum {record.max_commission_rate}"
        )
    if abs(new_rate - record.commission_rate) > record.max_commission_change_rate:
        raise CommissionChangeError(
            f"change {abs(new_rate - record.commission_rate)} exceeds the maximum change "
            f"{record.max_commission_change_rate} per day"
        )
    next_allowed = record.commission_changed_height + state.params.blocks_per_day
    if height < next_allowed:
        raise CommissionChangeError(f"commission may change again at height {next_allowed}")
    record = dataclasses.replace(record, commission_rate=new_rate, commission_changed_height=height)
    return evolve(state, validators=state.validators.set(operator, record))


def jail(state: LedgerState, address: bytes, until: int) -> LedgerState:
    """Jail a validator until height ``until`` (it leaves the set two heights later)."""
    record = state.validators[address]
    record = dataclasses.replace(record, jailed=True, jailed_until=max(until, record.jailed_until))
    return evolve(state, validators=state.validators.set(address, record))


def unjail(state: LedgerState, operator: bytes, height: int) -> LedgerState:
    record = get_validator(state, operator)
    if record.tombstoned:
        raise ValidatorTombstonedError(f"validator {operator.hex()} is tombstoned")
    if not record.jailed:
        raise NotJailedError(f"validator {operator.hex()} is not jailed")
    if height < record.jailed_until:
        raise StillJailedError(f"validator {operator.hex()} is jailed until {record.jailed_until}")
    self_bond = delegation_value(state, operator, operator)
    if self_bond < state.params.min_self_bond:
        raise BelowMinimumSelfBondError(
            f"self-bond {self_bond} is below the minimum {state.params.min_self_bond}"
        )
    # The liveness window starts afresh: misses before the jail were already punished.
    info = SigningInfo(window=state.params.signed_blocks_window, start_height=height)
    return evolve(
        state,
        validators=state.validators.set(operator, dataclasses.replace(record, jailed=False)),
        signing_infos=state.signing_infos.set(operator, info),
    )


def voting_power(state: LedgerState, record: ValidatorRecord) -> int:
    return record.tokens // state.params.power_reduction


def compute_validator_set(state: LedgerState) -> ValidatorSet | None:
    """Top ``max_validators`` by power among non-jailed validators; None if nobody qualifies."""
    candidates = [
        (voting_power(state, record), record)
        for record in state.validators.values()
        if not record.jailed
    ]
    ranked = sorted(
        ((power, record) for power, record in candidates if power > 0),
        key=lambda item: (-item[0], item[1].address),
    )[: state.params.max_validators]
    if not ranked:
        return None
    return ValidatorSet.of(
        Validator(record.address, record.public_key, power) for power, record in ranked
    )
