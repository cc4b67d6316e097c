"""Client-side record encryption: nodes only ever see the sealed envelope.

A record is encrypted with AES-256-GCM under a fresh random 256-bit data key. The data key is
wrapped to the user's ML-KEM-768 encapsulation key: encapsulate -> 32-byte shared secret ->
HKDF-SHA-256 (info binds the KEM ciphertext and the context) -> key-encryption key -> AES-GCM
wrap of the data key. The associated data of both AES-GCM operations is the canonical encoding
of (user id, record id, record version), so a ciphertext moved to another user, record or
version does not open.

Envelope layout (all lengths fixed, so no parsing ambiguity)::

    b"QSR1" | u32 key_epoch | KEM ciphertext (1088) | wrap nonce (12) | wrapped key (32 + 16)
    | data nonce (12) | AES-GCM ciphertext + tag (len(plaintext) + 16)
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol.canonical import CanonicalWriter
from protocol.errors import InputError

MAGIC = b"QSR1"
KEM_CIPHERTEXT_BYTES = 1088
PUBLIC_KEY_BYTES = 1184
NONCE_BYTES = 12
TAG_BYTES = 16
_EPOCH = struct.Struct(">I")
_HEADER = len(MAGIC) + _EPOCH.size
_WRAP_START = _HEADER + KEM_CIPHERTEXT_BYTES
_DATA_START = _WRAP_START + NONCE_BYTES + 32 + TAG_BYTES
OVERHEAD = _DATA_START + NONCE_BYTES + TAG_BYTES


class RecordCryptoError(InputError):
    """Base of record encryption errors."""


class DecryptionError(RecordCryptoError):
    """The envelope does not open: wrong key, wrong user/record/version, or tampered bytes."""


class EnvelopeFormatError(DecryptionError):
    """The bytes are not a record envelope of this format."""


@dataclass(frozen=True, slots=True)
class RecordKeyPair:
    """A user's ML-KEM-768 key pair for records; ``seed`` (64 bytes) is the private part."""

    seed: bytes
    public_key: bytes

    @classmethod
    def generate(cls) -> RecordKeyPair:
        return cls.from_seed(os.urandom(64))

    @classmethod
    def from_seed(cls, seed: bytes) -> RecordKeyPair:
        try:
            private = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
        except ValueError as exc:
            raise RecordCryptoError(f"bad ML-KEM-768 seed: {exc}") from exc
        return cls(seed, private.public_key().public_bytes_raw())


def associated_data(user_id: str, record_id: str, record_version: int) -> bytes:
    return (CanonicalWriter("RecordAssociatedData").text(user_id).text(record_id)
            .u64(record_version).finish())


def _kek(shared_secret: bytes, kem_ciphertext: bytes, aad: bytes) -> bytes:
    info = CanonicalWriter("RecordKeyWrap").bytes(kem_ciphertext).bytes(aad).finish()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared_secret)


def seal_record(public_key: bytes, user_id: str, record_id: str, record_version: int,
                plaintext: bytes, *, key_epoch: int = 0) -> bytes:
    """Encrypt ``plaintext`` for the holder of the ML-KEM-768 key ``public_key``."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise RecordCryptoError(f"ML-KEM-768 public key must be {PUBLIC_KEY_BYTES} bytes")
    try:
        recipient = mlkem.MLKEM768PublicKey.from_public_bytes(public_key)
    except ValueError as exc:
        raise RecordCryptoError(f"bad ML-KEM-768 public key: {exc}") from exc
    aad = associated_data(user_id, record_id, record_version)
    shared_secret, kem_ciphertext = recipient.encapsulate()
    data_key = AESGCM.generate_key(bit_length=256)
    wrap_nonce, data_nonce = os.urandom(NONCE_BYTES), os.urandom(NONCE_BYTES)
    wrapped = AESGCM(_kek(shared_secret, kem_ciphertext, aad)).encrypt(wrap_nonce, data_key, aad)
    body = AESGCM(data_key).encrypt(data_nonce, plaintext, aad)
    return b"".join((MAGIC, _EPOCH.pack(key_epoch), kem_ciphertext, wrap_nonce, wrapped,
                     data_nonce, body))


def envelope_key_epoch(envelope: bytes) -> int:
    """Which of the user's key epochs an envelope was sealed to (see ``RotateKeys``)."""
    if len(envelope) < OVERHEAD or not envelope.startswith(MAGIC):
        raise EnvelopeFormatError("not a QuStream record envelope")
    epoch: int = _EPOCH.unpack_from(envelope, len(MAGIC))[0]
    return epoch


def open_record(key_pair: RecordKeyPair, user_id: str, record_id: str, record_version: int,
                envelope: bytes) -> bytes:
    """Decrypt an envelope made by ``seal_record``; raises ``DecryptionError``."""
    envelope_key_epoch(envelope)
    aad = associated_data(user_id, record_id, record_version)
    kem_ciphertext = envelope[_HEADER:_WRAP_START]
    wrap_nonce = envelope[_WRAP_START:_WRAP_START + NONCE_BYTES]
    wrapped = envelope[_WRAP_START + NONCE_BYTES:_DATA_START]
    data_nonce = envelope[_DATA_START:_DATA_START + NONCE_BYTES]
    body = envelope[_DATA_START + NONCE_BYTES:]
    try:
        private = mlkem.MLKEM768PrivateKey.from_seed_bytes(key_pair.seed)
        shared_secret = private.decapsulate(kem_ciphertext)
        data_key = AESGCM(_kek(shared_secret, kem_ciphertext, aad)).decrypt(wrap_nonce, wrapped,
                                                                             aad)
        return AESGCM(data_key).decrypt(data_nonce, body, aad)
    except (InvalidTag, ValueError) as exc:
        raise DecryptionError(
            f"record {record_id!r} v{record_version} of user {user_id} does not open with this "
            f"key ({type(exc).__name__})") from exc
