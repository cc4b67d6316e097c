"""The mempool: signed transactions from ``ledger.tx`` waiting for a block, and ``submit_tx``.

``ledger.tx`` is the mempool's log (keyed by sender, so one account's transactions keep their
order). Every node folds it into a ``Mempool``: decoded and signature-checked on arrival
(malformed ones are dead-lettered by the caller), admitted into a proposal only if
``check_tx`` passes against the chain state the proposal builds on, and dropped once a block
includes them or their nonce is used up. Nothing is trusted: the block's validators run
``check_tx`` again, and the ledger executes the body.

Ordering inside a proposal: by sender, then nonce; the first transaction per sender whose
nonce is the account's next one passes ``check_tx`` (the ledger checks nonce == next nonce
against the pre-block state), so one account gets one transaction per block. That is simple and
deterministic; batching several nonces per account needs the ledger's ``admit`` chaining and is
left for later.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

from confluent_kafka import Producer

from services.consensus.core.ledger.codec import CanonicalDecodeError
from services.consensus.core.ledger.errors import LedgerError
from services.consensus.core.ledger.tx import SignedTx, decode_signed_tx, tx_hash
from streams.codec import Codec, CodecError, default_codec
from streams.kafka import DeliveryError, make_producer
from streams.settings import Settings

MAX_POOL = 10_000


class MempoolError(ValueError):
    """A submitted transaction is not a decodable, correctly signed transaction."""


@dataclass(frozen=True, slots=True)
class PendingTx:
    raw: bytes
    sender: bytes
    nonce: int
    hash: bytes


def parse_tx(raw: bytes) -> PendingTx:
    """Decode and verify the signature of one encoded ``SignedTx``; ``MempoolError`` if not.

    Memoized by the bytes (a valid result is immutable; failures are not kept): a transaction
    is parsed where it is accepted (the gateway checks a payment) and again where it is
    written (``submitted_record``), and an ML-DSA verification is worth not repeating."""
    return _parse_tx(bytes(raw))


@functools.lru_cache(maxsize=1024)
def _parse_tx(raw: bytes) -> PendingTx:
    try:
        signed: SignedTx = decode_signed_tx(raw)
    except (CanonicalDecodeError, LedgerError, ValueError) as exc:
        raise MempoolError(f"not a signed transaction: {exc}") from exc
    if not signed.verify_signature():
        raise MempoolError("transaction signature does not verify")
    return PendingTx(raw, signed.tx.sender.address, signed.tx.nonce, tx_hash(raw))


def decode_submitted(data: bytes | None, codec: Codec | None = None) -> PendingTx:
    codec = codec or default_codec()
    try:
        _, record = codec.decode(data, "TransactionSubmitted")
    except CodecError as exc:
        raise MempoolError(str(exc)) from exc
    pending = parse_tx(record["tx"])
    if pending.sender != record["sender"] or pending.nonce != record["nonce"]:
        raise MempoolError("TransactionSubmitted sender/nonce do not match its transaction")
    return pending


class Mempool:
    """Transactions not yet included, keyed by hash; ``candidates`` in proposal order."""

    def __init__(self, limit: int = MAX_POOL) -> None:
        self._txs: dict[bytes, PendingTx] = {}
        self._limit = limit

    def __len__(self) -> int:
        return len(self._txs)

    def add(self, pending: PendingTx) -> bool:
        if pending.hash in self._txs or len(self._txs) >= self._limit:
            return False
        self._txs[pending.hash] = pending
        return True

    def candidates(self, next_nonce: dict[bytes, int] | None = None) -> tuple[bytes, ...]:
        ordered = sorted(self._txs.values(), key=lambda p: (p.sender, p.nonce, p.hash))
        return tuple(p.raw for p in ordered)

    def prune(self, included: tuple[bytes, ...], next_nonce_of: object) -> None:
        """Drop included transactions and those whose nonce the account has used up.
        ``next_nonce_of(address) -> int`` reads the ledger state after the block."""
        gone = {tx_hash(raw) for raw in included}
        for key in [k for k, p in self._txs.items()
                    if k in gone or p.nonce < next_nonce_of(p.sender)]:  # type: ignore[operator]
            del self._txs[key]


def submitted_record(raw: bytes) -> tuple[bytes, bytes]:
    """(key, value) of the ``TransactionSubmitted`` for encoded signed tx ``raw``."""
    pending = parse_tx(raw)
    value = default_codec().encode(
        "TransactionSubmitted",
        {"tx": raw, "sender": pending.sender, "nonce": pending.nonce,
         "submitted_at_ms": int(time.time() * 1000)},
    )
    return pending.sender, value


def submit_tx(
    settings: Settings, signed_tx_bytes: bytes, producer: Producer | None = None,
    timeout_s: float = 30.0,
) -> bytes:
    """Write one encoded signed transaction to ``ledger.tx`` and wait for the acknowledgement.

    Returns the transaction hash. Raises ``MempoolError`` for bytes that are not a signed
    transaction and ``DeliveryError`` if the cluster does not acknowledge it.
    """
    key, value = submitted_record(signed_tx_bytes)
    own = producer is None
    producer = producer or make_producer(settings)
    errors: list[str] = []
    producer.produce(
        settings.topic("ledger.tx"), value=value, key=key,
        on_delivery=lambda err, _msg: errors.append(str(err)) if err else None,
    )
    remaining = producer.flush(timeout_s)
    if remaining or errors:
        raise DeliveryError(f"transaction not acknowledged: {errors or 'timeout'}")
    if own:
        producer.flush(0)
    return tx_hash(signed_tx_bytes)
