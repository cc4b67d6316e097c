"""Positions recorded together with the state they produced (exactly-once application).

Every piece of monitor state carries the next offset it expects per input partition. A record
at an offset below that was already folded into this state (a redelivery after a crash, since
offsets are committed after the state is written) and is skipped; the state and the position
are persisted in one value, so they can never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping

from services.monitor.core.facts import Position

Positions = Mapping[str, int]  # "topic:partition" -> next offset


def is_new(positions: Positions, position: Position) -> bool:
    return position.offset >= positions.get(position.key, 0)


def advance(positions: Positions, position: Position) -> dict[str, int]:
    return {**positions, position.key: max(positions.get(position.key, 0), position.offset + 1)}
