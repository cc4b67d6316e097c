"""Client-side record encryption (protocol.records): round trip, binding, tampering."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.records import (
    OVERHEAD,
    DecryptionError,
    EnvelopeFormatError,
    RecordKeyPair,
    envelope_key_epoch,
    open_record,
    seal_record,
)

PAIR = RecordKeyPair.from_seed(bytes(64))


def test_round_trip_and_size() -> None:
    envelope = seal_record(PAIR.public_key, "u1", "r1", 3, b"secret diary", key_epoch=2)
    assert len(envelope) == OVERHEAD + len(b"secret diary")
    assert b"secret diary" not in envelope
    assert envelope_key_epoch(envelope) == 2
    assert open_record(PAIR, "u1", "r1", 3, envelope) == b"secret diary"


@pytest.mark.parametrize("user, record, version", [("u2", "r1", 3), ("u1", "r2", 3),
                                                   ("u1", "r1", 4)])
def test_associated_data_binds_user_record_and_version(user: str, record: str,
                                                       version: int) -> None:
    envelope = seal_record(PAIR.public_key, "u1", "r1", 3, b"x")
    with pytest.raises(DecryptionError):
        open_record(PAIR, user, record, version, envelope)


def test_wrong_key_and_garbage() -> None:
    envelope = seal_record(PAIR.public_key, "u", "r", 1, b"x")
    with pytest.raises(DecryptionError):
        open_record(RecordKeyPair.generate(), "u", "r", 1, envelope)
    with pytest.raises(EnvelopeFormatError):
        open_record(PAIR, "u", "r", 1, b"plain text")


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 10_000))
def test_property_any_flipped_bit_is_detected(plaintext: bytes, position: int) -> None:
    envelope = bytearray(seal_record(PAIR.public_key, "u", "r", 1, plaintext))
    index = 8 + position % (len(envelope) - 8)  # past magic and epoch
    envelope[index] ^= 0x01
    with pytest.raises(DecryptionError):
        open_record(PAIR, "u", "r", 1, bytes(envelope))
