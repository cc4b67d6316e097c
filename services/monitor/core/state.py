"""All the monitor's state, split into the pieces it persists (one table key each).

A record can be folded into several pieces (a finalized block changes the chain view and the
mempool); each piece keeps its own positions, so a piece skips exactly the records it has
already folded, whatever happened to the others.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, TypeVar, assert_never

from services.monitor.core import network, sources, traffic
from services.monitor.core.facts import (
    BlockRejected,
    BlockSeen,
    CheckpointSeen,
    ChunkSeen,
    DeadLettered,
    Fact,
    HeartbeatSeen,
    Position,
    PrecommitSeen,
    ProposalSeen,
    QrngAlertSeen,
    TxsIncluded,
    TxSubmitted,
    ValidatorStatusSeen,
)
from services.monitor.core.policy import MonitorPolicy
from services.monitor.core.positions import advance, is_new

SOURCE_PREFIX = "source/"
NETWORK = "network"
MEMPOOL = "mempool"
DEAD_LETTERS = "dead-letters"


@dataclass(frozen=True, slots=True)
class MonitorState:
    sources: Mapping[str, sources.SourceState] = field(default_factory=dict)
    network: network.NetworkState = field(default_factory=network.NetworkState)
    mempool: traffic.MempoolState = field(default_factory=traffic.MempoolState)
    dead_letters: traffic.DeadLetterState = field(default_factory=traffic.DeadLetterState)


def key_of(fact: Fact) -> str:
    """The piece of state a fact belongs to."""
    match fact:
        case HeartbeatSeen() | QrngAlertSeen() | ChunkSeen() | CheckpointSeen():
            return SOURCE_PREFIX + fact.source_id
        case ProposalSeen() | PrecommitSeen() | BlockSeen() | BlockRejected() | \
                ValidatorStatusSeen():
            return NETWORK
        case TxSubmitted() | TxsIncluded():
            return MEMPOOL
        case DeadLettered():
            return DEAD_LETTERS
        case _:
            assert_never(fact)


Piece = TypeVar("Piece", sources.SourceState, network.NetworkState, traffic.MempoolState,
                traffic.DeadLetterState)


def _fold(piece: Piece, facts: list[Fact], position: Position,
          step: Callable[[Piece, Any], Piece]) -> Piece | None:
    """``piece`` with ``facts`` folded and ``position`` recorded, or None if it has them."""
    if not is_new(piece.positions, position):
        return None
    for fact in facts:
        piece = step(piece, fact)
    return replace(piece, positions=advance(piece.positions, position))


def _fold_piece(policy: MonitorPolicy, state: MonitorState, key: str,
                facts: list[Fact], position: Position) -> MonitorState | None:
    """The state with ``facts`` (all of piece ``key``) folded, or None if already folded."""
    if key.startswith(SOURCE_PREFIX):
        source_id = key.removeprefix(SOURCE_PREFIX)
        source = _fold(state.sources.get(source_id) or sources.SourceState(source_id), facts,
                       position, partial(sources.evolve, policy))
        return None if source is None else replace(
            state, sources={**state.sources, source_id: source})
    if key == NETWORK:
        chain = _fold(state.network, facts, position, partial(network.evolve, policy))
        return None if chain is None else replace(state, network=chain)
    if key == MEMPOOL:
        mempool = _fold(state.mempool, facts, position, partial(traffic.evolve_mempool, policy))
        return None if mempool is None else replace(state, mempool=mempool)
    letters = _fold(state.dead_letters, facts, position,
                    partial(traffic.evolve_dead_letters, policy))
    return None if letters is None else replace(state, dead_letters=letters)


def apply_record(policy: MonitorPolicy, state: MonitorState, position: Position,
                 facts: tuple[Fact, ...]) -> tuple[MonitorState, frozenset[str]]:
    """Fold the facts of one record read at ``position``.

    Returns the new state and the keys of the pieces that changed. Each piece folds all the
    record's facts that belong to it, or none of them when its positions show it already has
    (a redelivery after a restart)."""
    by_key: dict[str, list[Fact]] = {}
    for fact in facts:
        by_key.setdefault(key_of(fact), []).append(fact)
    changed: set[str] = set()
    for key, piece_facts in by_key.items():
        folded = _fold_piece(policy, state, key, piece_facts, position)
        if folded is not None:
            state = folded
            changed.add(key)
    return state, frozenset(changed)
