"""The mempool: signed transactions from ``ledger.tx`` waiting for a block.

``ledger.tx`` is the mempool's log (keyed by sender, so one account's transactions keep their
order). Whoever can write the topic can write anything to it, so nothing enters the pool
because it is merely well signed: ``admit`` runs the rules below against the ledger state the
next block builds on, cheapest first (a signature is verified last, once everything a fresh key
cannot fake has passed). A rejected record raises a ``MempoolRejectedError`` whose ``code`` the
caller dead-letters it with; a transaction already executed or already pending is a harmless
redelivery (``False``, nothing to dead-letter: a restarted node reads the log again).

Admission rules, in order:

1. decodes as a ``TransactionSubmitted`` whose sender and nonce match its transaction, no
   larger than ``max_tx_bytes``, for this chain;
2. nonce: below the account's next nonce is stale (ignored); at or beyond
   ``next + NONCE_WINDOW`` is refused (``nonce_window``): a far-future nonce can never execute
   before it expires and would hold a slot for nothing;
3. fee at least the ledger's minimum for its size (``fee_too_low``);
4. the sender's balance covers this fee plus the fees of its transactions already pending
   (``unfunded``): a fresh key with no balance cannot put anything in the pool, so 10,000 junk
   transactions from fresh keys cost the pool nothing;
5. one transaction per (sender, nonce) (first come), at most ``per_sender`` per sender
   (``sender_cap``);
6. the signature verifies (``bad_signature``);
7. room: a full pool evicts the highest-nonce transaction of the sender holding the most, if
   that sender holds more than the newcomer's sender would after admission; otherwise the
   newcomer is refused (``mempool_full``). So no sender, and no group of funded senders, can
   push another sender below its fair share.

Pruning after every block (``prune``, against the state after it): included transactions and
stale nonces go; a sender whose balance no longer covers its pending fees loses its
highest-nonce transactions until it does; a transaction whose nonce is still ahead of the
account's after ``FUTURE_TTL_HEIGHTS`` heights in the pool goes (the gap before it is not being
filled).

Ordering inside a proposal: by sender, then nonce; the first transaction per sender whose
nonce is the account's next one passes ``check_tx`` (the ledger checks nonce == next nonce
against the pre-block state), so one account gets one transaction per block. Nothing is
trusted: the block's validators run ``check_tx`` again, and the ledger executes the body.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.errors import InputError
from services.ledger.core.execute import minimum_fee
from services.ledger.core.queries import balance, next_nonce
from services.ledger.core.state import LedgerState
from services.ledger.core.tx import tx_hash
from services.ledger.submit import SubmissionError, read_submitted

MAX_POOL = 10_000
NONCE_WINDOW = 16
MAX_PER_SENDER = NONCE_WINDOW
FUTURE_TTL_HEIGHTS = 100


class MempoolRejectedError(InputError):
    """A ``ledger.tx`` record the mempool refuses; ``code`` names the rule (module doc)."""

    code = "rejected"


class MalformedTxError(MempoolRejectedError):
    code = "malformed"


class WrongChainError(MempoolRejectedError):
    code = "wrong_chain"


class NonceWindowError(MempoolRejectedError):
    code = "nonce_window"


class FeeTooLowError(MempoolRejectedError):
    code = "fee_too_low"


class UnfundedError(MempoolRejectedError):
    code = "unfunded"


class SenderCapError(MempoolRejectedError):
    code = "sender_cap"


class BadSignatureError(MempoolRejectedError):
    code = "bad_signature"


class MempoolFullError(MempoolRejectedError):
    code = "mempool_full"


@dataclass(frozen=True, slots=True)
class PooledTx:
    raw: bytes
    sender: bytes
    nonce: int
    fee: int
    hash: bytes
    added_height: int


class Mempool:
    """Transactions not yet included (module doc); ``candidates`` in proposal order."""

    def __init__(self, limit: int = MAX_POOL, per_sender: int = MAX_PER_SENDER,
                 nonce_window: int = NONCE_WINDOW,
                 future_ttl_heights: int = FUTURE_TTL_HEIGHTS) -> None:
        self._by_sender: dict[bytes, dict[int, PooledTx]] = {}
        self._hashes: set[bytes] = set()
        self._limit = limit
        self._per_sender = per_sender
        self._nonce_window = nonce_window
        self._future_ttl = future_ttl_heights
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._hashes)

    def pending_of(self, sender: bytes) -> int:
        return len(self._by_sender.get(sender, {}))

    def admit(self, data: bytes | None, state: LedgerState, height: int) -> bool:
        """Admit one ``ledger.tx`` record against ``state`` (the state the next block builds
        on, at ``height``). True: admitted; False: harmless (stale nonce or already pending);
        raises ``MempoolRejectedError`` otherwise (module doc, rules 1-7)."""
        try:
            signed, raw = read_submitted(data)
        except SubmissionError as exc:
            raise MalformedTxError(str(exc)) from exc
        tx = signed.tx
        sender, nonce = tx.sender_address, tx.nonce
        if len(raw) > state.params.max_tx_bytes:
            raise MalformedTxError(f"transaction of {len(raw)} bytes exceeds "
                                   f"{state.params.max_tx_bytes}")
        if tx.chain_id != state.chain_id:
            raise WrongChainError(f"transaction for chain {tx.chain_id!r}, this is "
                                  f"{state.chain_id!r}")
        expected = next_nonce(state, sender)
        if nonce < expected:
            return False
        if nonce >= expected + self._nonce_window:
            raise NonceWindowError(f"nonce {nonce} of {sender.hex()} is {self._nonce_window} "
                                   f"or more beyond its next nonce {expected}")
        needed = minimum_fee(state, len(raw))
        if tx.fee < needed:
            raise FeeTooLowError(f"fee {tx.fee} is below the minimum {needed}")
        queue = self._by_sender.get(sender, {})
        existing = queue.get(nonce)
        if existing is not None:
            return False  # first come per (sender, nonce): a redelivery or a replacement
        owed = tx.fee + sum(p.fee for p in queue.values())
        funds = balance(state, sender)
        if funds < owed:
            raise UnfundedError(f"{sender.hex()} holds {funds}, less than the {owed} its "
                                "pending fees need")
        if len(queue) >= self._per_sender:
            raise SenderCapError(f"{sender.hex()} already has {len(queue)} transactions "
                                 "pending")
        if not signed.verify_signature():
            raise BadSignatureError(f"signature of {sender.hex()} does not verify")
        if len(self._hashes) >= self._limit and not self._evict_for(sender):
            raise MempoolFullError(f"the mempool holds {len(self._hashes)} transactions and "
                                   "no sender holds more than its share")
        self._add(PooledTx(raw, sender, nonce, tx.fee, tx_hash(raw), height))
        return True

    def _add(self, pooled: PooledTx) -> None:
        self._by_sender.setdefault(pooled.sender, {})[pooled.nonce] = pooled
        self._hashes.add(pooled.hash)

    def _remove(self, pooled: PooledTx) -> None:
        queue = self._by_sender[pooled.sender]
        del queue[pooled.nonce]
        if not queue:
            del self._by_sender[pooled.sender]
        self._hashes.discard(pooled.hash)

    def _evict_for(self, sender: bytes) -> bool:
        """Make room for one transaction of ``sender`` by evicting from the largest holder,
        if it holds more than ``sender`` would (module doc, rule 7)."""
        largest = max(self._by_sender, key=lambda s: (len(self._by_sender[s]), s))
        if len(self._by_sender[largest]) <= self.pending_of(sender) + 1:
            return False
        queue = self._by_sender[largest]
        self._remove(queue[max(queue)])
        self.evicted += 1
        return True

    def candidates(self) -> tuple[bytes, ...]:
        return tuple(self._by_sender[sender][nonce].raw
                     for sender in sorted(self._by_sender)
                     for nonce in sorted(self._by_sender[sender]))

    def prune(self, included: tuple[bytes, ...], state: LedgerState, height: int) -> None:
        """After a block (module doc): ``state`` is the state after it, ``height`` the next."""
        gone = {tx_hash(raw) for raw in included}
        for sender in list(self._by_sender):
            queue = self._by_sender[sender]
            expected = next_nonce(state, sender)
            for pooled in sorted(queue.values(), key=lambda p: p.nonce):
                stale = pooled.nonce < expected or pooled.hash in gone
                gap = (pooled.nonce > expected
                       and height - pooled.added_height > self._future_ttl)
                if stale or gap:
                    self._remove(pooled)
            queue = self._by_sender.get(sender, {})
            funds = balance(state, sender)
            while queue and sum(p.fee for p in queue.values()) > funds:
                self._remove(queue[max(queue)])
                queue = self._by_sender.get(sender, {})


