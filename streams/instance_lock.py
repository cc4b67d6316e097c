"""One process per identity on a host: an exclusive lock held for the process's lifetime.

Two processes that sign with one validator key from one state directory can each sign a
different vote for the same height and round: the double-sign guard file is read once at start,
so each guards only against itself (a supervisor's orphan left running next to its restarted
twin, an operator's second terminal). ``InstanceLock`` refuses the second process at start,
naming the pid that holds the lock.

Why ``flock`` and not a pid file: the kernel drops the lock when the process ends, however it ends
(kill -9 included), so a restart never finds a stale lock to clean up, and no pid is ever
guessed alive or dead. The lock is advisory (it binds only processes that ask for it: ours) and
belongs to the open file, so a child forked later shares it; the signature pool's workers, which
fork, are started before it and end with their parent (``streams.orphans``).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from protocol.errors import OperationError


class InstanceLockedError(OperationError):
    """Another process holds the lock: the same identity is already running on this host."""


class InstanceLock:
    """Hold ``path`` exclusively until ``release`` (or the process ends); raises
    ``InstanceLockedError`` at once when another process holds it. ``what`` names the identity
    in the error, ``why`` says what two at once would break."""

    def __init__(self, path: Path, what: str, why: str) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # A file object, not a bare descriptor: if the owner is dropped without ``release``
        # (its constructor raised), closing the file on collection releases the lock.
        handle: IO[bytes] = open(path, "a+b")  # noqa: SIM115 - held for the owner's lifetime
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read(32).decode(errors="replace").strip() or "unknown"
            handle.close()
            raise InstanceLockedError(
                f"{what} is already running on this host (pid {holder} holds {path}); {why}. "
                "Stop that process first.") from None
        except BaseException:
            handle.close()
            raise
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        self._handle: IO[bytes] | None = handle

    @property
    def held(self) -> bool:
        return self._handle is not None

    def release(self) -> None:
        """Let the next process in (the file stays: removing it could race a newcomer)."""
        if self._handle is not None:
            self._handle.close()  # closing the last descriptor drops the flock
            self._handle = None

    def __enter__(self) -> InstanceLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
