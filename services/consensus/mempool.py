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

from services.ledger.core.tx import tx_hash
from services.ledger.submit import PendingTx

MAX_POOL = 10_000


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
