"""Quantum-safe key delivery, the client side of ``POST /v1/keys``.

The protocol is ``protocol.keydelivery`` (both ends use its functions): the client sends fresh
X25519 and ML-KEM-768 public keys and pays with a ``PayForService`` transaction committing to
them; ``KeyClient.request`` decapsulates what the gateway sealed and returns the key material;
anything that does not open raises ``KeyDeliveryError``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from protocol.keydelivery import (
    delivery_kek,
    request_commitment,
    units_for,
)
from sdk.errors import KeyDeliveryError, error_from_http


@dataclass(frozen=True, slots=True)
class DeliveredKey:
    key: bytes
    commitment: bytes
    tx_hash: bytes
    sources: tuple[str, ...]


class KeyClient:
    """Requests key material from a gateway, paying with ``account`` (a ``SigningKey``)."""

    def __init__(self, base_url: str, api_key: str, account: Any, chain_id: str, *,
                 fee: int = 1_000, timeout_s: float = 30.0, client: Any = None) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.account = account
        self.chain_id = chain_id
        self.fee = fee
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
        response = self._http.post("/v1/keys", json={
            "x25519_public_key": base64.b64encode(x_public).decode(),
            "mlkem768_public_key": base64.b64encode(k_public).decode(),
            "length": length, "payment_tx": base64.b64encode(tx).decode()})
        if response.status_code != 200:
            if response.status_code != 409:
                self._nonce = None  # re-read it next time
            raise error_from_http(response)
        self._nonce = nonce + 1
        return open_delivery(response.json(), x_private, k_private, commitment)

    def close(self) -> None:
        self._http.close()


def open_delivery(body: dict[str, Any], x_private: Any, k_private: Any,
                  commitment: bytes) -> DeliveredKey:
    """Decrypt a ``/v1/keys`` response with the client's private keys."""
    try:
        if bytes.fromhex(body["commitment"]) != commitment:
            raise KeyDeliveryError("the delivery is for another request commitment")
        ephemeral = base64.b64decode(body["x25519_ephemeral_public_key"])
        kem_ciphertext = base64.b64decode(body["mlkem768_ciphertext"])
        shared_x = x_private.exchange(x25519.X25519PublicKey.from_public_bytes(ephemeral))
        shared_k = k_private.decapsulate(kem_ciphertext)
        kek = delivery_kek(shared_x, shared_k, ephemeral,
                           x_private.public_key().public_bytes_raw(), kem_ciphertext, commitment)
        key = AESGCM(kek).decrypt(base64.b64decode(body["nonce"]),
                                  base64.b64decode(body["ciphertext"]), commitment)
    except (KeyError, ValueError, InvalidTag) as exc:
        raise KeyDeliveryError(f"key delivery does not open: {type(exc).__name__}") from exc
    return DeliveredKey(key, commitment, bytes.fromhex(body["tx_hash"]),
                        tuple(body.get("sources", ())))
