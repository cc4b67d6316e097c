"""Worker processes that end with the process that started them.

A worker started by ``multiprocessing`` (a ``ProcessPoolExecutor``'s, a signature pool's) waits
on a pipe whose other end it holds a copy of itself (a forked child inherits it, a pool's queue
pickles both ends), so when the process that owns the pool dies without closing it (kill -9, a
signal's default action, a crash in C) the worker never sees end of file and runs on, reparented,
for good: one set per crash of an SDK client, a validator or an audit. ``watch_parent`` is the
initializer that prevents it: a daemon thread in the worker that looks every ``interval_s``
whether its parent is still the process that started it, and ends the worker when not. Not
the kernel's ``PR_SET_PDEATHSIG`` (``streams.supervisor.die_with_parent``, for services): it
follows the *thread* that started the child, and a pool starts workers from whichever thread
of an application submits work first, so a worker would die with a short-lived thread.
"""

from __future__ import annotations

import os
import threading
import time

CHECK_S = 1.0


def watch_parent(parent: int, interval_s: float = CHECK_S) -> None:
    """Run in a worker (``initializer=watch_parent, initargs=(os.getpid(),)``): exit it as soon
    as ``parent`` is no longer its parent (at once, if it died before the worker started)."""
    if os.getppid() != parent:
        os._exit(0)  # its owner is gone: nothing of the worker is worth flushing

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()
