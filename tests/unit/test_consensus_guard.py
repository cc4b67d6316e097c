"""The double-sign guard file: what was persisted last is what a restart loads, a write torn by a
crash leaves the state persisted before it, a guard of another key or with no valid slot is
refused, and a file of the earlier JSON format is read and upgraded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.keys import SigningKey
from services.consensus.core.signer import SignerState, SignStep
from services.consensus.guard import MIN_SLOT, GuardError, SignGuard

KEY = SigningKey.from_seed(bytes(32))
SIGNATURE = bytes(range(256)) * 13  # ML-DSA-65 size is 3309; the guard stores any bytes


def _state(height: int, rounds: int = 1) -> SignerState:
    signed = {(r, step): (f"{height}/{r}/{step}".encode(), SIGNATURE)
              for r in range(rounds) for step in (SignStep.PREVOTE, SignStep.PRECOMMIT)}
    return SignerState(height, signed)


def test_the_last_persisted_state_is_loaded(tmp_path: Path) -> None:
    guard = SignGuard(tmp_path / "g", KEY.address)
    assert guard.load() == SignerState()
    for height in range(1, 6):
        guard.persist(_state(height))
    guard.close()
    assert SignGuard(tmp_path / "g", KEY.address).load() == _state(5)


def test_signing_again_after_a_restart_gives_the_stored_signature(tmp_path: Path) -> None:
    guard = SignGuard(tmp_path / "g", KEY.address)
    guard.load()
    state, signature = SignerState().sign(KEY, 5, 0, SignStep.PREVOTE, b"bytes")
    guard.persist(state)
    loaded = SignGuard(tmp_path / "g", KEY.address).load()
    assert loaded == state
    assert loaded.sign(KEY, 5, 0, SignStep.PREVOTE, b"bytes")[1] == signature


@settings(max_examples=60, deadline=None)
@given(persists=st.integers(1, 6), cut=st.integers(0, 10_000), flip=st.booleans())
def test_a_torn_last_write_leaves_the_previous_state(
        tmp_path_factory: pytest.TempPathFactory, persists: int, cut: int, flip: bool) -> None:
    """Crash while the last persist's bytes were reaching the disk: any prefix of them landed
    (and maybe a changed byte inside). A restart loads that state or the one before, never
    anything else, never an error."""
    path = tmp_path_factory.mktemp("guard") / "g"
    guard = SignGuard(path, KEY.address)
    guard.load()
    for height in range(1, persists + 1):
        guard.persist(_state(height))
    before = path.read_bytes()
    guard.persist(_state(persists + 1))
    guard.close()
    after = path.read_bytes()
    changed = [i for i in range(len(after)) if i >= len(before) or after[i] != before[i]]
    landed = changed[:cut % (len(changed) + 1)]
    torn = bytearray(before)
    torn.extend(bytes(len(after) - len(before)))
    for i in landed:
        torn[i] = after[i]
    if flip and landed:
        torn[landed[-1]] ^= 0x01
    path.write_bytes(bytes(torn))
    assert SignGuard(path, KEY.address).load() in (_state(persists), _state(persists + 1))


def test_a_state_larger_than_a_slot_grows_the_file(tmp_path: Path) -> None:
    guard = SignGuard(tmp_path / "g", KEY.address)
    guard.load()
    guard.persist(_state(1))
    small = (tmp_path / "g").stat().st_size
    many_rounds = _state(1, rounds=MIN_SLOT // 4096)
    guard.persist(many_rounds)
    guard.persist(_state(2))
    guard.close()
    assert (tmp_path / "g").stat().st_size > small
    assert SignGuard(tmp_path / "g", KEY.address).load() == _state(2)


def test_a_guard_of_another_key_is_refused(tmp_path: Path) -> None:
    guard = SignGuard(tmp_path / "g", KEY.address)
    guard.persist(_state(3))
    guard.close()
    with pytest.raises(GuardError):
        SignGuard(tmp_path / "g", SigningKey.from_seed(bytes([1]) * 32).address).load()


def test_a_file_with_no_valid_slot_is_refused(tmp_path: Path) -> None:
    guard = SignGuard(tmp_path / "g", KEY.address)
    guard.persist(_state(3))
    guard.close()
    data = bytearray((tmp_path / "g").read_bytes())
    half = len(data) // 2
    data[60] ^= 0xFF  # inside the first slot's payload
    data[half + 60] ^= 0xFF  # and the second's
    (tmp_path / "g").write_bytes(bytes(data))
    with pytest.raises(GuardError):
        SignGuard(tmp_path / "g", KEY.address).load()


def test_a_format_1_file_is_read_and_upgraded(tmp_path: Path) -> None:
    state = _state(7)
    (tmp_path / "g").write_text(json.dumps({
        "format": "qustream-signer/1", "address": KEY.address.hex(), "height": 7,
        "signed": [[r, int(s), b.hex(), sig.hex()]
                   for (r, s), (b, sig) in sorted(state.signed.items())]}))
    guard = SignGuard(tmp_path / "g", KEY.address)
    assert guard.load() == state
    guard.persist(_state(8))
    guard.close()
    assert not (tmp_path / "g").read_bytes().startswith(b"{")
    assert SignGuard(tmp_path / "g", KEY.address).load() == _state(8)
    assert not os.path.exists(tmp_path / "g.tmp")
