"""Client-side record encryption (protocol.records): round trip, binding, tampering, forgery."""

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
    envelope = seal_record(PAIR, "u1", "r1", 3, b"secret diary", key_epoch=2)
    assert len(envelope) == OVERHEAD + len(b"secret diary")
    assert b"secret diary" not in envelope
    assert envelope_key_epoch(envelope) == 2
    assert open_record(PAIR, "u1", "r1", 3, envelope) == b"secret diary"


@pytest.mark.parametrize("user, record, version", [("u2", "r1", 3), ("u1", "r2", 3),
                                                   ("u1", "r1", 4)])
def test_associated_data_binds_user_record_and_version(user: str, record: str,
                                                       version: int) -> None:
    envelope = seal_record(PAIR, "u1", "r1", 3, b"x")
    with pytest.raises(DecryptionError):
        open_record(PAIR, user, record, version, envelope)


def test_wrong_key_and_garbage() -> None:
    envelope = seal_record(PAIR, "u", "r", 1, b"x")
    with pytest.raises(DecryptionError):
        open_record(RecordKeyPair.generate(), "u", "r", 1, envelope)
    with pytest.raises(EnvelopeFormatError):
        open_record(PAIR, "u", "r", 1, b"plain text")


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 10_000))
def test_property_any_flipped_bit_is_detected(plaintext: bytes, position: int) -> None:
    envelope = bytearray(seal_record(PAIR, "u", "r", 1, plaintext))
    index = 4 + position % (len(envelope) - 4)  # past the magic: the tag covers the epoch too
    envelope[index] ^= 0x01
    with pytest.raises(DecryptionError):
        open_record(PAIR, "u", "r", 1, bytes(envelope))


# --- authenticity (issue 16, item 15): only the user can make a record that opens -------------


def forge(public_key: bytes, user: str, record: str, version: int, plaintext: bytes,
          magic: bytes = b"QSR1", tag: bytes = b"") -> bytes:
    """What anyone holding only the user's *public* ML-KEM key (the gateway serves it) can
    build: the envelope layout of the module doc, sealed to that key, bound to the same
    associated data, with whatever tag it likes."""
    import os

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import mlkem
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from protocol.canonical import CanonicalWriter
    from protocol.records import associated_data

    aad = associated_data(user, record, version)
    shared, kem_ct = mlkem.MLKEM768PublicKey.from_public_bytes(public_key).encapsulate()
    info = CanonicalWriter("RecordKeyWrap").bytes(kem_ct).bytes(aad).finish()
    kek = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)
    data_key, n1, n2 = os.urandom(32), os.urandom(12), os.urandom(12)
    return b"".join((magic, (0).to_bytes(4, "big"), kem_ct, n1,
                     AESGCM(kek).encrypt(n1, data_key, aad), n2,
                     AESGCM(data_key).encrypt(n2, plaintext, aad), tag))


@settings(max_examples=20, deadline=None)
@given(st.binary(max_size=64), st.binary(min_size=32, max_size=32))
def test_property_a_record_sealed_with_the_public_key_alone_never_opens(plaintext: bytes,
                                                                       tag: bytes) -> None:
    for envelope in (forge(PAIR.public_key, "u", "r", 1, plaintext),
                     forge(PAIR.public_key, "u", "r", 1, plaintext, b"QSR2", tag)):
        with pytest.raises(DecryptionError):
            open_record(PAIR, "u", "r", 1, envelope)


def test_a_forgery_is_reported_as_such_and_only_the_owner_can_seal() -> None:
    from protocol.records import ForgedRecordError, RecordCryptoError

    with pytest.raises(ForgedRecordError):
        open_record(PAIR, "u", "r", 1, forge(PAIR.public_key, "u", "r", 1, b"evil"))
    with pytest.raises(ForgedRecordError):
        open_record(PAIR, "u", "r", 1, forge(PAIR.public_key, "u", "r", 1, b"evil", b"QSR2",
                                             bytes(32)))
    with pytest.raises(RecordCryptoError):
        seal_record(PAIR.public_key, "u", "r", 1, b"x")  # type: ignore[arg-type]
    # another user's genuine envelope does not pass as this user's either
    other = RecordKeyPair.from_seed(bytes([1]) * 64)
    with pytest.raises(ForgedRecordError):
        open_record(PAIR, "u", "r", 1, seal_record(other, "u", "r", 1, b"x"))
