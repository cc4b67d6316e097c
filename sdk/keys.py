"""Quantum-safe key delivery, the client side of ``POST /v1/keys``.

The protocol is ``protocol.keydelivery`` (both ends use its functions): the client sends fresh
X25519 and ML-KEM-768 public keys and pays with a ``PayForService`` transaction committing to
them; ``KeyClient.request`` checks the gateway's signature over the delivery against the
gateway key(s) the application pinned (``gateway_keys``: what ``qustream gateway delivery-key``
prints), checks the delivery is for its own request and payment, decapsulates and returns the
key material. Anything that does not verify or open raises ``KeyDeliveryError``: a delivery
altered or substituted on the way (e.g. on a plain-HTTP path, where anyone could encapsulate key
material of their choosing to the client's public keys) is detected.

The gateway delivers only once the payment is in a finalized block (``503 payment-pending``
until then): ``request`` resends the very same request (same keys, same payment) until it is
served or ``payment_timeout_s`` passes.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protocol.keydelivery import (
    delivery_kek,
    delivery_transcript,
    request_commitment,
    units_for,
)
from protocol.keys import KeyError_, PublicKey
from sdk.errors import KeyDeliveryError, UnavailableError, error_from_http

PENDING = "payment-pending"  # the problem type slug while the payment is not on chain yet


def pinned_keys(keys: PublicKey | str | Iterable[PublicKey | str]) -> tuple[PublicKey, ...]:
    """Gateway delivery keys as ``PublicKey`` values (text as ``qustream gateway
    delivery-key`` prints it, or keys)."""
    items = [keys] if isinstance(keys, (PublicKey, str)) else list(keys)
    try:
        out = tuple(k if isinstance(k, PublicKey) else PublicKey.from_text(k.strip())
                    for k in items)
    except KeyError_ as exc:
        raise KeyDeliveryError(f"not a gateway delivery key: {exc}") from exc
    if not out:
        raise KeyDeliveryError("pin at least one gateway delivery key")
    return out


@dataclass(frozen=True, slots=True)
class DeliveredKey:
    key: bytes
    commitment: bytes
    tx_hash: bytes
    sources: tuple[str, ...]


class KeyClient:
    """Requests key material from a gateway, paying with ``account`` (a ``SigningKey``), and
    trusting deliveries signed by ``gateway_keys`` only."""

    def __init__(self, base_url: str, api_key: str, account: Any, chain_id: str, *,
                 gateway_keys: PublicKey | str | Iterable[PublicKey | str],
                 fee: int = 1_000, timeout_s: float = 30.0, payment_timeout_s: float = 120.0,
                 client: Any = None) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.account = account
        self.chain_id = chain_id
        self.gateway_keys = pinned_keys(gateway_keys)
        self.fee = fee
        self.payment_timeout_s = payment_timeout_s
        self._http = client or httpx.Client(base_url=self.base_url, timeout=timeout_s,
                                            headers={"X-API-Key": api_key})
        self._nonce: int | None = None

    @classmethod
    def from_key_file(cls, base_url: str, api_key: str, key_file: Path | str, chain_id: str,
                      **kwargs: Any) -> KeyClient:
        from protocol.keys import SigningKey

        return cls(base_url, api_key, SigningKey.load(key_file), chain_id, **kwargs)

    def next_nonce(self) -> int:
        """The account's next nonce: from the gateway's ledger view, then counted locally."""
        if self._nonce is None:
            response = self._http.get(f"/v1/accounts/{self.account.address.hex()}")
            if response.status_code != 200:
                raise error_from_http(response)
            account = response.json()
            self._nonce = max(int(account["next_nonce"]), int(account.get("pending_nonce", 0)))
        return self._nonce

    def signed_payment(self, commitment: bytes, length: int, nonce: int) -> bytes:
        from services.ledger.core.tx import PayForService, ServiceKind, encode_signed_tx, sign_tx

        return encode_signed_tx(sign_tx(self.account, self.chain_id, nonce, self.fee,
                                        PayForService(ServiceKind.KEY_MATERIAL,
                                                      units_for(length), commitment)))

    def request(self, length: int = 32) -> DeliveredKey:
        """Fresh key material of ``length`` bytes, readable only by this client. Raises an
        ``ApiError`` subclass (e.g. ``UnavailableError`` with ``retry_after`` when the pool
        is empty) or ``KeyDeliveryError``."""
        x_private = x25519.X25519PrivateKey.generate()
        k_private = mlkem.MLKEM768PrivateKey.generate()
        x_public = x_private.public_key().public_bytes_raw()
        k_public = k_private.public_key().public_bytes_raw()
        commitment = request_commitment(x_public, k_public, length)
        nonce = self.next_nonce()
        tx = self.signed_payment(commitment, length, nonce)
        body = {"x25519_public_key": base64.b64encode(x_public).decode(),
                "mlkem768_public_key": base64.b64encode(k_public).decode(),
                "length": length, "payment_tx": base64.b64encode(tx).decode()}
        deadline = time.monotonic() + self.payment_timeout_s
        while True:
            response = self._http.post("/v1/keys", json=body)
            if response.status_code == 200:
                break
            error = error_from_http(response)
            if (isinstance(error, UnavailableError) and error.problem_type.endswith(PENDING)
                    and time.monotonic() < deadline):
                # submitted, not yet in a block: the very same request again
                time.sleep(min(error.retry_after or 1.0, 5.0))
                continue
            if response.status_code != 409:
                self._nonce = None  # re-read it next time
            raise error
        self._nonce = nonce + 1
        from services.ledger.core.tx import tx_hash

        return open_delivery(response.json(), x_private, k_private, commitment,
                             gateway_keys=self.gateway_keys, chain_id=self.chain_id,
                             tx_hash=tx_hash(tx))

    def close(self) -> None:
        self._http.close()


def open_delivery(body: dict[str, Any], x_private: Any, k_private: Any, commitment: bytes,
                  *, gateway_keys: Iterable[PublicKey], chain_id: str,
                  tx_hash: bytes) -> DeliveredKey:
    """Check and decrypt a ``/v1/keys`` response with the client's private keys: signed by a
    pinned gateway key over everything it says, for this request (``commitment``) and this
    payment (``tx_hash``) on this chain."""
    try:
        if bytes.fromhex(body["commitment"]) != commitment:
            raise KeyDeliveryError("the delivery is for another request commitment")
        if bytes.fromhex(body["tx_hash"]) != tx_hash:
            raise KeyDeliveryError("the delivery names another payment")
        ephemeral = base64.b64decode(body["x25519_ephemeral_public_key"], validate=True)
        kem_ciphertext = base64.b64decode(body["mlkem768_ciphertext"], validate=True)
        nonce = base64.b64decode(body["nonce"], validate=True)
        ciphertext = base64.b64decode(body["ciphertext"], validate=True)
        sources = tuple(str(s) for s in body.get("sources", ()))
        transcript = delivery_transcript(chain_id, commitment, tx_hash, int(body["length"]),
                                         ephemeral, kem_ciphertext, nonce, ciphertext, sources,
                                         int(body["delivered_at_ms"]))
        signature = base64.b64decode(body["signature"], validate=True)
        if not any(key.verify(transcript, signature) for key in gateway_keys):
            raise KeyDeliveryError("the delivery is not signed by a pinned gateway key "
                                   "(altered or substituted on the way, or another gateway)")
        shared_x = x_private.exchange(x25519.X25519PublicKey.from_public_bytes(ephemeral))
        shared_k = k_private.decapsulate(kem_ciphertext)
        kek = delivery_kek(shared_x, shared_k, ephemeral,
                           x_private.public_key().public_bytes_raw(), kem_ciphertext, commitment)
        key = AESGCM(kek).decrypt(nonce, ciphertext, commitment)
    except (KeyError, ValueError, TypeError, InvalidTag) as exc:
        raise KeyDeliveryError(f"key delivery does not open: {type(exc).__name__}") from exc
    return DeliveredKey(key, commitment, tx_hash, sources)
