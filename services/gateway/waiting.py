"""Request handlers waiting on their event loops for what a feeding thread adds.

The gateway's followers run in threads; request handlers run on event loops (one or several).
A handler registers an ``asyncio.Event`` with its loop, then checks its condition, then waits;
the thread wakes every registered event through ``call_soon_threadsafe`` after each change.
Registering before checking loses no wake-up: a change after the check sets the event later,
on the handler's own loop, so it comes after the handler's ``clear``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Waiters:
    """Handlers waiting for a change; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def wake_all(self) -> None:
        """Called by the feeding thread after each change."""
        with self._lock:
            waiting = list(self._waiting)
        for loop, event in waiting:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # loop closed
                continue

    async def until(self, found: Callable[[], T | None], timeout_s: float) -> T | None:
        """What ``found`` returns once it is not None, or None after ``timeout_s``."""
        result = found()
        if result is not None or timeout_s <= 0:
            return result
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        entry = (loop, event)
        with self._lock:
            self._waiting.append(entry)
        try:
            deadline = loop.time() + timeout_s
            while (result := found()) is None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                event.clear()
                try:
                    await asyncio.wait_for(event.wait(), remaining)
                except TimeoutError:
                    return found()
            return result
        finally:
            with self._lock:
                self._waiting.remove(entry)
