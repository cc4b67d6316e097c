"""Slashing for double signing and downtime; slashes reach stake that is still unbonding.

``slash(validator, offence_height, rate)`` burns, rounded down (never more than the exact
fraction):

- ``rate`` of every unbonding entry *from that validator* created at or after the offence height
  (capped at what is left of the entry): that stake was bonded when the offence happened and
  must not escape by unbonding. Entries created before the offence height were already
  unbonding then, did not contribute to it, and are not touched (Cosmos SDK rule);
- ``rate`` of the validator's current tokens, which lowers every delegation's value through the
  share price (no loop over delegators).

Double signing (``Misbehavior`` of kind duplicate vote): ``slash_fraction_double_sign_rate``,
jailed forever and tombstoned; evidence older than ``max_evidence_age_blocks`` or against an
unknown or already tombstoned validator is ignored (one offence, one punishment). Keep
``max_evidence_age_blocks <= unbonding_period_blocks``: matured entries are out of reach.

Downtime: each validator in ``last_commit`` has a sliding window of the last
``signed_blocks_window`` blocks. When the window has been observed in full and the number of
missed blocks exceeds ``window - window * min_signed_per_window_rate // RATE_ONE``, the validator
is slashed ``slash_fraction_downtime_rate`` (offence height = the missed height, H-1), jailed
until ``H + downtime_jail_blocks``, and its window restarts.
"""

from __future__ import annotations

import dataclasses

from protocol.app import Misbehavior, MisbehaviorKind, VoteInfo
from services.ledger.core.params import RATE_ONE, apply_rate
from services.ledger.core.staking import jail
from services.ledger.core.state import (
    JAILED_FOREVER,
    LedgerState,
    SigningInfo,
    UnbondingEntry,
    evolve,
)


def slash(state: LedgerState, validator: bytes, offence_height: int, rate: int) -> LedgerState:
    """Burn ``rate`` of the validator's tokens and of its slashable unbonding entries."""
    burned = 0
    unbondings = state.unbondings
    for key, entries in state.unbondings.items():
        if key[1] != validator:
            continue
        cut_entries: list[UnbondingEntry] = []
        for entry in entries:
            if entry.creation_height >= offence_height:
                cut = min(apply_rate(entry.initial_balance, rate), entry.balance)
                burned += cut
                entry = dataclasses.replace(entry, balance=entry.balance - cut)
            cut_entries.append(entry)
        unbondings = unbondings.set(key, tuple(cut_entries))
    record = state.validators[validator]
    token_cut = apply_rate(record.tokens, rate)
    burned += token_cut
    record = dataclasses.replace(record, tokens=record.tokens - token_cut)
    return evolve(
        state,
        unbondings=unbondings,
        validators=state.validators.set(validator, record),
        supply=dataclasses.replace(state.supply, slashed=state.supply.slashed + burned),
    )


def punish_misbehavior(state: LedgerState, offence: Misbehavior, height: int) -> LedgerState:
    """Slash, jail forever and tombstone a double signer (idempotent per validator)."""
    if offence.kind is not MisbehaviorKind.DUPLICATE_VOTE:
        return state
    record = state.validators.get(offence.validator_address)
    if record is None or record.tombstoned:
        return state
    if offence.height > height or height - offence.height > state.params.max_evidence_age_blocks:
        return state
    state = slash(
        state,
        offence.validator_address,
        offence.height,
        state.params.slash_fraction_double_sign_rate,
    )
    state = jail(state, offence.validator_address, until=JAILED_FOREVER)
    record = dataclasses.replace(state.validators[offence.validator_address], tombstoned=True)
    return evolve(
        state, validators=state.validators.set(offence.validator_address, record)
    )


def max_missed_blocks(window: int, min_signed_rate: int) -> int:
    return window - window * min_signed_rate // RATE_ONE


def track_liveness(state: LedgerState, votes: tuple[VoteInfo, ...], height: int) -> LedgerState:
    """Update every voter's window from ``last_commit``; slash and jail the ones that are down."""
    params = state.params
    window = params.signed_blocks_window
    max_missed = max_missed_blocks(window, params.min_signed_per_window_rate)
    seen: set[bytes] = set()
    updated: list[tuple[bytes, SigningInfo]] = []  # written once, after the loop
    for vote in sorted(votes, key=lambda v: v.address):
        record = state.validators.get(vote.address)
        if record is None or record.jailed or vote.address in seen:
            continue
        seen.add(vote.address)
        info = state.signing_infos.get(vote.address)
        if info is None or info.window != window:
            info = SigningInfo(window=window, start_height=height)
        bit = 1 << (info.index_offset % window)
        was_missed = bool(info.missed_bitmap & bit)
        missed = not vote.signed
        bitmap, count = info.missed_bitmap, info.missed_count
        if missed and not was_missed:
            bitmap, count = bitmap | bit, count + 1
        elif was_missed and not missed:
            bitmap, count = bitmap & ~bit, count - 1
        info = SigningInfo(info.window, info.start_height, info.index_offset + 1, bitmap, count)
        if missed and info.index_offset >= window and count > max_missed:
            state = evolve(
                state, signing_infos=state.signing_infos.set_many(updated)
            )
            updated = []
            state = slash(
                state, vote.address, max(height - 1, 0), params.slash_fraction_downtime_rate
            )
            state = jail(state, vote.address, until=height + params.downtime_jail_blocks)
            info = SigningInfo(window=window, start_height=height)
        updated.append((vote.address, info))
    if not updated:
        return state
    return evolve(state, signing_infos=state.signing_infos.set_many(updated))
