"""The consensus run loop starts on a settled heap (``node.settle_heap``, docs/performance.md):
start-up objects are frozen out of the collector's reach, and what the loop allocates later,
cycles included, is still reclaimed."""

from __future__ import annotations

import gc
import weakref

from services.consensus.node import settle_heap


class _Node:
    def __init__(self) -> None:
        self.peer: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.peer, b.peer = b, a
    return weakref.ref(a)


def test_start_up_objects_are_frozen_and_later_cycles_still_collected() -> None:
    try:
        start_up = [_Node() for _ in range(1_000)]
        settle_heap()
        frozen = gc.get_freeze_count()
        assert frozen >= len(start_up)  # never walked by a collection again
        assert not any(gc.is_tracked(o) and o in gc.get_objects(0) for o in start_up[:5])
        later = _cycle()  # garbage made by the loop after start-up
        assert later() is not None
        gc.collect()
        assert later() is None  # the collector still reclaims the loop's cycles
        assert gc.get_freeze_count() == frozen  # and leaves the frozen heap alone
    finally:
        gc.unfreeze()  # the rest of the test session runs on a normal heap


def test_garbage_left_by_start_up_is_collected_before_the_freeze() -> None:
    try:
        dropped = _cycle()  # start-up garbage: unreachable before the loop starts
        settle_heap()
        assert dropped() is None  # collected, not frozen forever
    finally:
        gc.unfreeze()
