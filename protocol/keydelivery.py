"""Quantum-safe key delivery: the protocol both ends of ``POST /v1/keys`` follow.

Protocol (both ends use the functions here):

1. The client makes fresh X25519 and ML-KEM-768 key pairs and computes the request commitment
   ``C = H("KeyRequest" | x25519 public | ML-KEM public | u32 length)``; it signs a
   ``PayForService(KEY_MATERIAL, units, C)`` transaction from its funded account. So the fee
   transaction on chain commits to exactly this delivery (its recipient keys and size).
2. The gateway draws fresh bytes from the private QRNG pool, mixes them with OS entropy
   (``HKDF-SHA-512(ikm = pool || os, salt = C, info = tx hash)``), and seals the result:
   ``ss1 = X25519(ephemeral, client)``, ``(ss2, ct) = ML-KEM-768.Encaps(client)``,
   ``KEK = HKDF-SHA-256(ss1 || ss2, info = "KeyDelivery" | eph | client x25519 | ct | C)``,
   ``AES-256-GCM(KEK, nonce, key material, aad = C)``. Both shared secrets feed the KEK, so the
   delivery stays secret unless both X25519 and ML-KEM-768 are broken.
3. The gateway signs the delivery transcript (``delivery_transcript``: chain id, ``C``, the
   payment's tx hash, length, everything it sent, the time) with its delivery key (ML-DSA-65).
   The client checks that signature against the gateway key(s) it pinned, that the tx hash is
   its own payment's and ``C`` its own request's, then decapsulates; anything that does not
   verify or open raises ``KeyDeliveryError``. Without the signature, anyone on a plain-HTTP
   path could encapsulate key material *of their choosing* to the client's public keys (they
   travel in the request), and the client could not tell.

Payment (``services.gateway.keys``): a key is delivered only after the payment is included in
a verified block and executed successfully, and each payment is claimed once across every
gateway (a Cassandra lightweight transaction on the payer's (address, nonce)).
"""

from __future__ import annotations

import math

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol.canonical import HASH_SIZE, CanonicalWriter

X25519_BYTES = 32
MLKEM_PUBLIC_BYTES = 1184
MLKEM_CIPHERTEXT_BYTES = 1088
MIN_LENGTH = 16
MAX_LENGTH = 1024
BYTES_PER_UNIT = 32  # one PayForService unit pays for up to 32 bytes of key material


def units_for(length: int) -> int:
    return max(1, math.ceil(length / BYTES_PER_UNIT))


def request_commitment(x25519_public: bytes, mlkem_public: bytes, length: int) -> bytes:
    return (CanonicalWriter("KeyRequest").raw(x25519_public, X25519_BYTES)
            .bytes(mlkem_public).u32(length).digest())


def delivery_transcript(chain_id: str, commitment: bytes, tx_hash: bytes, length: int,
                        ephemeral_public: bytes, kem_ciphertext: bytes, nonce: bytes,
                        ciphertext: bytes, sources: tuple[str, ...], delivered_at_ms: int
                        ) -> bytes:
    """What the gateway signs for one delivery (step 3 of the module doc)."""
    writer = (CanonicalWriter("KeyDeliverySigned").text(chain_id).raw(commitment, HASH_SIZE)
              .raw(tx_hash, HASH_SIZE).u32(length).raw(ephemeral_public, X25519_BYTES)
              .bytes(kem_ciphertext).bytes(nonce).bytes(ciphertext).u32(len(sources)))
    for source in sources:
        writer.text(source)
    return writer.u64(delivered_at_ms).finish()


def delivery_kek(shared_x25519: bytes, shared_mlkem: bytes, ephemeral_public: bytes,
                 client_x25519: bytes, kem_ciphertext: bytes, commitment: bytes) -> bytes:
    info = (CanonicalWriter("KeyDelivery").raw(ephemeral_public, X25519_BYTES)
            .raw(client_x25519, X25519_BYTES).bytes(kem_ciphertext).raw(commitment, HASH_SIZE)
            .finish())
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(
        shared_x25519 + shared_mlkem)
