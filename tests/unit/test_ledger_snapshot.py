"""The ledger state in canonical bytes and back (``services.ledger.core.snapshot``): what a
state snapshot carries must decode to a state with the same hash, and only its own bytes may."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings

from protocol.canonical import CanonicalDecodeError
from services.ledger.core.snapshot import decode_ledger_state, encode_ledger_state
from services.ledger.core.state import state_hash
from tests.unit.test_ledger_properties import histories, run_history


@given(history=histories)
@settings(max_examples=40, deadline=None)
def test_every_reachable_state_round_trips_with_its_hash(history: list[dict]) -> None:  # type: ignore[type-arg]
    chain, _ = run_history(history)
    state = chain.state
    data = encode_ledger_state(state)
    decoded = decode_ledger_state(data)
    assert state_hash(decoded) == state_hash(state)
    for field in dataclasses.fields(state):
        assert getattr(decoded, field.name) == getattr(state, field.name), field.name
    assert encode_ledger_state(decoded) == data  # one state, one encoding


def test_a_changed_balance_decodes_to_another_hash_and_garbage_is_a_decode_error() -> None:
    chain, _ = run_history([{"ops": [("transfer", 0, 1, 5)], "absent": frozenset(),
                             "double_sign": None}])
    state = chain.state
    address, account = state.accounts.items()[0]
    richer = dataclasses.replace(
        state, accounts=state.accounts.set(address, dataclasses.replace(
            account, balance=account.balance + 1)))
    assert state_hash(decode_ledger_state(encode_ledger_state(richer))) != state_hash(state)
    data = encode_ledger_state(state)
    for broken in (data[:-1], data + b"\x00", data[:40]):
        with pytest.raises(CanonicalDecodeError):
            decode_ledger_state(broken)
