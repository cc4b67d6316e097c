"""The mempool's depth and the dead-letter rates, folded from ``ledger.tx``, the transactions
of finalized blocks and the ``dlq.*`` topics.

Mempool: a transaction is pending from its ``TransactionSubmitted`` until a finalized block
includes it. The two arrive on different topics in no fixed order, so an inclusion seen first
is remembered and cancels the submission when it comes. Entries older than
``mempool_ttl_ms`` (by event time, relative to the newest event of this state) are dropped: a
transaction no block takes (bad nonce, bad signature) must not count forever.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from services.monitor.core.facts import DeadLettered, TxsIncluded, TxSubmitted
from services.monitor.core.policy import MonitorPolicy
from services.monitor.core.positions import Positions
from services.monitor.core.windows import Counts


@dataclass(frozen=True, slots=True)
class MempoolState:
    positions: Positions = field(default_factory=dict)
    pending: Mapping[str, int] = field(default_factory=dict)  # digest -> submitted at
    included_first: Mapping[str, int] = field(default_factory=dict)  # digest -> included at
    newest_ms: int = 0

    @property
    def depth(self) -> int:
        return len(self.pending)


def _expire(policy: MonitorPolicy, state: MempoolState, newest_ms: int) -> MempoolState:
    horizon = newest_ms - policy.mempool_ttl_ms
    return replace(
        state,
        newest_ms=newest_ms,
        pending={d: t for d, t in state.pending.items() if t > horizon},
        included_first={d: t for d, t in state.included_first.items() if t > horizon},
    )


def evolve_mempool(policy: MonitorPolicy, state: MempoolState,
                   fact: TxSubmitted | TxsIncluded) -> MempoolState:
    if isinstance(fact, TxSubmitted):
        if fact.digest in state.included_first:
            included = {d: t for d, t in state.included_first.items() if d != fact.digest}
            state = replace(state, included_first=included)
        else:
            state = replace(state, pending={**state.pending, fact.digest: fact.at_ms})
    else:
        pending = dict(state.pending)
        included = dict(state.included_first)
        for digest in fact.digests:
            if pending.pop(digest, None) is None:
                included[digest] = fact.at_ms
        state = replace(state, pending=pending, included_first=included)
    return _expire(policy, state, max(state.newest_ms, fact.at_ms))


@dataclass(frozen=True, slots=True)
class DeadLetterState:
    positions: Positions = field(default_factory=dict)
    counts: Mapping[str, Counts] = field(default_factory=dict)  # "dlq.x/reason" -> counts


def dead_letter_subject(fact: DeadLettered) -> str:
    return f"{fact.dlq}/{fact.reason}"


def evolve_dead_letters(policy: MonitorPolicy, state: DeadLetterState, fact: DeadLettered
                        ) -> DeadLetterState:
    subject = dead_letter_subject(fact)
    counts = state.counts.get(subject, Counts()).add(policy.dlq_window, fact.at_ms)
    return replace(state, counts={**state.counts, subject: counts})
