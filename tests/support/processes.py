"""Whether a process of this machine still runs (Linux ``/proc``): a zombie has ended, it only
waits for its parent to reap it."""

from __future__ import annotations

from pathlib import Path


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
