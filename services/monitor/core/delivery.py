"""Delivery without holes: every record of a partition is folded, and in offset order.

The monitor does not trust its consumer to hand over every record. After a rebalance or a
restart Faust has been seen to skip a record of a partition and go on with the next ones, so a
piece's positions (which keep only the highest offset folded) moved past a record it never got.
Per partition the runtime keeps the offset below which every record has been folded; a record
delivered past it reveals the offsets skipped in between, which the shell reads back from Kafka
and folds before the record itself.

On a partition a transactional writer writes, each transaction ends with one commit marker,
which takes an offset and is never delivered: there a jump of one offset is that marker
(``transactional``), and only a longer jump is read back. It finds the skipped records, or
nothing when the offsets were an aborted transaction's (its records are never delivered either).
A skipped block on ``chain.blocks`` (one block per transaction) is always such a longer jump:
block, marker, block.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from services.monitor.core.facts import Position
from services.monitor.core.positions import Positions


@dataclass(frozen=True, slots=True)
class Skipped:
    """Offsets ``[start, end)`` of a partition that delivery stepped over."""

    topic: str
    partition: int
    start: int
    end: int


def skipped(expected: Positions, delivered: Sequence[Position],
            transactional: Collection[str] = ()) -> tuple[tuple[Skipped | None, ...],
                                                          dict[str, int]]:
    """For each delivered position in order, the offsets skipped right before it (None when
    none were), and the expected offsets after them all.

    ``expected`` maps ``topic:partition`` to the offset below which every record has been
    folded; a partition it does not name is expected from offset 0. A position below the
    expected offset is a redelivery (the pieces skip it) and moves nothing back. On a
    ``transactional`` topic one offset more than expected is a commit marker, not a skip."""
    after = dict(expected)
    found: list[Skipped | None] = []
    for position in delivered:
        start = after.get(position.key, 0)
        marker = 1 if position.topic in transactional else 0
        found.append(Skipped(position.topic, position.partition, start, position.offset)
                     if position.offset > start + marker else None)
        after[position.key] = max(start, position.offset + 1)
    return tuple(found), after
