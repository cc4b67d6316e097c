"""Client-side record encryption: nodes only ever see the sealed envelope, and cannot forge one.

A record is encrypted with AES-256-GCM under a fresh random 256-bit data key. The data key is
wrapped to the user's ML-KEM-768 encapsulation key: encapsulate -> 32-byte shared secret ->
HKDF-SHA-256 (info binds the KEM ciphertext and the context) -> key-encryption key -> AES-GCM
wrap of the data key. The associated data of both AES-GCM operations is the canonical encoding
of (user id, record id, record version), so a ciphertext moved to another user, record or
version does not open.

Authenticity. Encryption alone is not enough: the ML-KEM key is public (the gateway serves it),
so anyone who can write ``users.events`` or Cassandra, or sits on a plain-HTTP path, could seal
a record of their choosing to it. So every envelope ends with a tag,
``HMAC-SHA-256(auth key, "RecordTag" | associated data | every envelope byte before the tag)``,
under an *auth key* derived from the user's private record seed
(``HKDF-SHA-256(seed, info = "QuStream/v1/RecordAuthKey")``): only a holder of the user's
private key (the user's own devices) can make an envelope that opens, and the tag binds user
id, record id, record version and key epoch. ``open_record`` checks the tag first, in constant
time, and refuses envelopes of the old untagged format. Rollback to an older, genuine version
is a matter of the reader's memory, not of the envelope: the SDK keeps the highest version it
has seen per record (``sdk.users``).

Envelope layout (all lengths fixed, so no parsing ambiguity)::

    b"QSR2" | u32 key_epoch | KEM ciphertext (1088) | wrap nonce (12) | wrapped key (32 + 16)
    | data nonce (12) | AES-GCM ciphertext + tag (len(plaintext) + 16) | auth tag (32)
"""

from __future__ import annotations

import hmac
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

MAGIC = b"QSR2"
UNAUTHENTICATED_MAGIC = b"QSR1"  # the format before records carried the user's tag
KEM_CIPHERTEXT_BYTES = 1088
PUBLIC_KEY_BYTES = 1184
NONCE_BYTES = 12
TAG_BYTES = 16
AUTH_TAG_BYTES = 32
_EPOCH = struct.Struct(">I")
_HEADER = len(MAGIC) + _EPOCH.size
_WRAP_START = _HEADER + KEM_CIPHERTEXT_BYTES
_DATA_START = _WRAP_START + NONCE_BYTES + 32 + TAG_BYTES
OVERHEAD = _DATA_START + NONCE_BYTES + TAG_BYTES + AUTH_TAG_BYTES


class RecordCryptoError(InputError):
    """Base of record encryption errors."""


class DecryptionError(RecordCryptoError):
    """The envelope does not open: wrong key, wrong user/record/version, or tampered bytes."""


class EnvelopeFormatError(DecryptionError):
    """The bytes are not a record envelope of this format."""


class ForgedRecordError(DecryptionError):
    """The envelope's tag does not verify: it was not made by a holder of the user's private
    record key for this user, record and version (substituted, moved or tampered with), or it
    is of the old untagged format, which anyone could have made."""


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

    @property
    def auth_key(self) -> bytes:
        """The key of the envelopes' tags (derived from the private seed: only the user has it)."""
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=b"QuStream/v1/RecordAuthKey").derive(self.seed)


def associated_data(user_id: str, record_id: str, record_version: int) -> bytes:
    return (CanonicalWriter("RecordAssociatedData").text(user_id).text(record_id)
            .u64(record_version).finish())


def _kek(shared_secret: bytes, kem_ciphertext: bytes, aad: bytes) -> bytes:
    info = CanonicalWriter("RecordKeyWrap").bytes(kem_ciphertext).bytes(aad).finish()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared_secret)


def _tag(auth_key: bytes, aad: bytes, body: bytes) -> bytes:
    message = CanonicalWriter("RecordTag").bytes(aad).bytes(body).finish()
    return hmac.digest(auth_key, message, "sha256")


def seal_record(key_pair: RecordKeyPair, user_id: str, record_id: str, record_version: int,
                plaintext: bytes, *, key_epoch: int = 0) -> bytes:
    """Encrypt ``plaintext`` for the user whose record key pair is ``key_pair`` and tag it with
    the pair's auth key (sealing needs the private seed: that is what makes records
    unforgeable by nodes)."""
    if not isinstance(key_pair, RecordKeyPair):
        raise RecordCryptoError("sealing needs the user's RecordKeyPair (the envelope's tag is "
                                "keyed by its private seed), not a public key")
    public_key = key_pair.public_key
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
    sealed = b"".join((MAGIC, _EPOCH.pack(key_epoch), kem_ciphertext, wrap_nonce, wrapped,
                       data_nonce, body))
    return sealed + _tag(key_pair.auth_key, aad, sealed)


def envelope_key_epoch(envelope: bytes) -> int:
    """Which of the user's key epochs an envelope was sealed to (see ``RotateKeys``); not
    authenticated until ``open_record`` checked the tag."""
    if envelope.startswith(UNAUTHENTICATED_MAGIC):
        raise ForgedRecordError("an untagged (QSR1) envelope: anyone with the public key could "
                                "have made it")
    if len(envelope) < OVERHEAD or not envelope.startswith(MAGIC):
        raise EnvelopeFormatError("not a QuStream record envelope")
    epoch: int = _EPOCH.unpack_from(envelope, len(MAGIC))[0]
    return epoch


def open_record(key_pair: RecordKeyPair, user_id: str, record_id: str, record_version: int,
                envelope: bytes) -> bytes:
    """Check the tag, then decrypt an envelope made by ``seal_record``; raises
    ``ForgedRecordError`` (tag) or another ``DecryptionError``."""
    envelope_key_epoch(envelope)
    aad = associated_data(user_id, record_id, record_version)
    sealed, tag = envelope[:-AUTH_TAG_BYTES], envelope[-AUTH_TAG_BYTES:]
    if not hmac.compare_digest(tag, _tag(key_pair.auth_key, aad, sealed)):
        raise ForgedRecordError(
            f"record {record_id!r} v{record_version} of user {user_id}: the tag does not verify "
            "(not sealed by this user for this record and version)")
    kem_ciphertext = sealed[_HEADER:_WRAP_START]
    wrap_nonce = sealed[_WRAP_START:_WRAP_START + NONCE_BYTES]
    wrapped = sealed[_WRAP_START + NONCE_BYTES:_DATA_START]
    data_nonce = sealed[_DATA_START:_DATA_START + NONCE_BYTES]
    body = sealed[_DATA_START + NONCE_BYTES:]
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
