"""Key payments: one payment, one delivery, however many gateways run (issue 16, item 12).

Two rules, each closing one hole:

1. **Delivery only after inclusion.** A ``PayForService(KEY_MATERIAL)`` pays only once a block
   includes it and the ledger executes it successfully. Before that, nothing binds the payer:
   it can send another transaction with the same nonce straight to ``ledger.tx`` (or through
   another gateway), and the payment then never executes; a far-future nonce never executes at
   all. Only the chain decides which transaction holds a nonce, so the gateway waits for it:
   ``PaymentBook`` records, from every verified block, the outcome of each key payment
   (``key_payment_outcomes`` re-executes the block on the previous state to learn which
   succeeded), and a request waits there for its payment.
2. **One claim per payment, across gateways.** Every gateway follows the same chain, so
   inclusion alone would let each of them deliver once. Before drawing any key material, the
   gateway claims the payment, keyed by the payer's (address, nonce), in a store every gateway
   shares with a linearizable insert-if-absent: a Cassandra lightweight transaction
   (``INSERT ... IF NOT EXISTS``, Paxos at SERIAL consistency; ``services.gateway.spent``).
   Exactly one claim succeeds; every other request for that payment, on any gateway, gets
   409. A claim is released (conditionally, by its owner) only when the pool cannot serve, so
   the client can retry; a gateway that dies after its claim loses that delivery (at most
   once, never twice).

(address, nonce) and the transaction hash are equivalent keys once rule 1 holds (the chain
executes at most one transaction per nonce); the nonce is used because it stays right even for
a payment whose signature was re-randomized into another hash.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from protocol.chain import ChainState, apply_block
from protocol.finalized import FinalizedRecord
from services.gateway.waiting import Waiters

MAX_REMEMBERED = 100_000  # key payment outcomes kept (oldest forgotten first)


@dataclass(frozen=True, slots=True)
class PaymentOutcome:
    """How a key payment fared in the block that included it."""

    tx_hash: bytes
    sender: bytes
    nonce: int
    height: int
    code: int  # 0: executed, the payment is made; anything else: it failed (no delivery)
    log: str

    @property
    def paid(self) -> bool:
        return self.code == 0


def _key_payment(raw: bytes) -> tuple[bytes, int] | None:
    """(sender, nonce) when ``raw`` is a signed ``PayForService(KEY_MATERIAL)``."""
    from services.ledger.core.errors import AnteError
    from services.ledger.core.tx import PayForService, ServiceKind, decode_signed_tx

    try:
        tx = decode_signed_tx(raw).tx
    except AnteError:
        return None
    body = tx.body
    if isinstance(body, PayForService) and body.service is ServiceKind.KEY_MATERIAL:
        return tx.sender.address, tx.nonce
    return None


def key_payment_outcomes(previous: ChainState[Any], app: Any,
                         record: FinalizedRecord) -> list[PaymentOutcome]:
    """The outcome of every key payment in ``record``'s block, which follows ``previous``
    (re-executed on ``previous``; blocks without a key payment cost a decode per tx)."""
    from services.ledger.core.tx import tx_hash

    block = record.block
    payments = {i: found for i, raw in enumerate(block.body.txs)
                if (found := _key_payment(raw)) is not None}
    if not payments:
        return []
    _, response = apply_block(previous, app, block, record.commit)
    return [PaymentOutcome(tx_hash(block.body.txs[i]), sender, nonce, block.height,
                           response.tx_results[i].code, response.tx_results[i].log)
            for i, (sender, nonce) in payments.items()]


class PaymentBook:
    """Key payment outcomes from verified blocks, and requests waiting for theirs.

    Fed by the gateway's chain follower thread (``record``); read by request handlers on the
    event loop (``wait``). Keeps the newest ``max_remembered`` outcomes."""

    def __init__(self, max_remembered: int = MAX_REMEMBERED) -> None:
        self.max_remembered = max_remembered
        self._outcomes: OrderedDict[bytes, PaymentOutcome] = OrderedDict()
        self._lock = threading.Lock()
        self._waiters = Waiters()

    def get(self, tx_hash: bytes) -> PaymentOutcome | None:
        return self._outcomes.get(tx_hash)

    def record(self, outcomes: Iterable[PaymentOutcome]) -> None:
        with self._lock:
            for outcome in outcomes:
                self._outcomes.setdefault(outcome.tx_hash, outcome)
            while len(self._outcomes) > self.max_remembered:
                self._outcomes.popitem(last=False)
        self._waiters.wake_all()

    async def wait(self, tx_hash: bytes, timeout_s: float) -> PaymentOutcome | None:
        """The outcome of ``tx_hash`` once a block included it, or None after ``timeout_s``."""
        return await self._waiters.until(lambda: self.get(tx_hash), timeout_s)


class SpentPayments(Protocol):
    """The store of claimed payments every gateway shares (rule 2 of the module doc)."""

    def claim(self, sender: bytes, nonce: int, tx_hash: bytes, claimant: str) -> bool:
        """Claim the payment; True for exactly one claim per (sender, nonce), ever."""
        ...

    def release(self, sender: bytes, nonce: int, claimant: str) -> None:
        """Give a claim back (only ``claimant``'s own, and only before anything was drawn)."""
        ...


class MemorySpentPayments:
    """``SpentPayments`` for one process (tests, benches, a single gateway without Cassandra)."""

    def __init__(self) -> None:
        self._claims: dict[tuple[bytes, int], tuple[bytes, str]] = {}
        self._lock = threading.Lock()

    def claim(self, sender: bytes, nonce: int, tx_hash: bytes, claimant: str) -> bool:
        with self._lock:
            if (sender, nonce) in self._claims:
                return False
            self._claims[(sender, nonce)] = (tx_hash, claimant)
            return True

    def release(self, sender: bytes, nonce: int, claimant: str) -> None:
        with self._lock:
            held = self._claims.get((sender, nonce))
            if held is not None and held[1] == claimant:
                del self._claims[(sender, nonce)]

    def __len__(self) -> int:
        return len(self._claims)
