"""Submitting transactions: ``ledger.tx`` records, their parsing, and ``submit_tx``.

``ledger.tx`` is the mempool's log (keyed by sender, so one account's transactions keep their
order). Every reader decodes each ``TransactionSubmitted`` with ``decode_submitted``, which
checks the transaction's signature and that the record's fields match it; anything else is a
``SubmissionError`` the caller dead-letters. ``submit_tx`` writes one and waits for the
cluster's acknowledgement (the CLI, the gateway and the examples use it).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

from protocol.canonical import CanonicalDecodeError
from protocol.errors import InputError
from services.ledger.core.errors import LedgerError
from services.ledger.core.tx import SignedTx, decode_signed_tx, tx_hash
from streams.codec import Codec, CodecError, default_codec
from streams.errors import DeliveryError
from streams.kafka import Delivery, KafkaProducer, make_producer
from streams.settings import Settings


class SubmissionError(InputError):
    """A submitted transaction is not a decodable, correctly signed transaction."""


@dataclass(frozen=True, slots=True)
class PendingTx:
    raw: bytes
    sender: bytes
    nonce: int
    hash: bytes


def parse_tx(raw: bytes) -> PendingTx:
    """Decode and verify the signature of one encoded ``SignedTx``; ``SubmissionError`` if not.

    Memoized by the bytes (a valid result is immutable; failures are not kept): a transaction
    is parsed where it is accepted (the gateway checks a payment) and again where it is
    written (``submitted_record``), and an ML-DSA verification is worth not repeating."""
    return _parse_tx(bytes(raw))


@functools.lru_cache(maxsize=1024)
def _parse_tx(raw: bytes) -> PendingTx:
    try:
        signed: SignedTx = decode_signed_tx(raw)
    except (CanonicalDecodeError, LedgerError, ValueError) as exc:
        raise SubmissionError(f"not a signed transaction: {exc}") from exc
    if not signed.verify_signature():
        raise SubmissionError("transaction signature does not verify")
    return PendingTx(raw, signed.tx.sender.address, signed.tx.nonce, tx_hash(raw))


def read_submitted(data: bytes | None, codec: Codec | None = None) -> tuple[SignedTx, bytes]:
    """The transaction a ``TransactionSubmitted`` record carries and its bytes, decoded and
    matched against the record's fields but *not* signature-checked (the mempool checks what a
    fresh key cannot fake first, the signature last). ``SubmissionError`` if malformed."""
    codec = codec or default_codec()
    try:
        _, record = codec.decode(data, "TransactionSubmitted")
    except CodecError as exc:
        raise SubmissionError(str(exc)) from exc
    raw = bytes(record["tx"])
    try:
        signed: SignedTx = decode_signed_tx(raw)
    except (CanonicalDecodeError, LedgerError, ValueError) as exc:
        raise SubmissionError(f"not a signed transaction: {exc}") from exc
    if signed.tx.sender_address != record["sender"] or signed.tx.nonce != record["nonce"]:
        raise SubmissionError("TransactionSubmitted sender/nonce do not match its transaction")
    return signed, raw


def decode_submitted(data: bytes | None, codec: Codec | None = None) -> PendingTx:
    """The signature-checked transaction of a ``TransactionSubmitted`` record."""
    _, raw = read_submitted(data, codec)
    return parse_tx(raw)


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
    settings: Settings, signed_tx_bytes: bytes, producer: KafkaProducer | None = None,
    timeout_s: float = 30.0,
) -> bytes:
    """Write one encoded signed transaction to ``ledger.tx`` and wait for the acknowledgement.

    Returns the transaction hash. Raises ``SubmissionError`` for bytes that are not a signed
    transaction and ``DeliveryError`` if the cluster does not acknowledge it.
    """
    key, value = submitted_record(signed_tx_bytes)
    own = producer is None
    producer = producer or make_producer(settings)
    errors: list[str] = []

    def delivered(report: Delivery) -> None:
        if report.error is not None:
            errors.append(str(report.error))

    producer.produce(settings.topic("ledger.tx"), value, key, on_delivery=delivered)
    remaining = producer.flush(timeout_s)
    if remaining or errors:
        raise DeliveryError(f"transaction not acknowledged: {errors or 'timeout'}")
    if own:
        producer.flush(0)
    return tx_hash(signed_tx_bytes)
