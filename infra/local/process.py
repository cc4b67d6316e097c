"""Detached server processes: spawning, pid files, liveness and port checks, stopping."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path


def port_open(port: int, host: str = "127.0.0.1", timeout_s: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just considered free (for tests that need their own servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def read_pid(pid_file: Path) -> int | None:
    """The pid recorded in ``pid_file``, or None when it is absent or unreadable."""
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def write_pid(pid_file: Path, pid: int) -> None:
    # Write then rename, so a concurrent `status` never reads half a number.
    tmp = pid_file.with_suffix(".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(pid_file)


# Exit statuses of children reaped by pid_alive(), for error messages ("killed by signal 9").
_reaped: dict[int, int] = {}


def exit_description(pid: int) -> str | None:
    """How our child ``pid`` ended, if pid_alive() saw it end; None when unknown."""
    status = _reaped.get(pid)
    if status is None:
        return None
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def _reap_if_child(pid: int) -> bool:
    """Reap ``pid`` if it is our exited child; True when it was reaped (so it is dead).

    A server started by this very process (as in tests) turns into a zombie when killed, and a
    zombie still answers ``kill(pid, 0)``; reaping it is the only way to see that it died.
    """
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    if reaped == pid:
        _reaped[pid] = status
        return True
    return False


def pid_alive(pid: int, must_contain: str | None = None) -> bool:
    """Whether ``pid`` is a live (non-zombie) process, whose command line contains
    ``must_contain`` when given — which guards against a recycled pid of an unrelated process."""
    if pid <= 0 or _reap_if_child(pid):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    proc = Path(f"/proc/{pid}")
    try:
        stat = (proc / "stat").read_text()
        # The state field follows the parenthesised command name, which may contain spaces.
        if stat[stat.rindex(")") + 2] in "ZX":
            return False
        if must_contain is not None:
            cmdline = _cmdline(proc)
            # An empty cmdline means "cannot tell" (it reads empty for a moment around exec),
            # not "someone else's process".
            return not cmdline or must_contain in cmdline
    except (OSError, IndexError):
        # No /proc (not Linux) or the process vanished in between: trust kill(pid, 0) above.
        return proc.exists() if Path("/proc/self").exists() else True
    return True


def _cmdline(proc: Path) -> str:
    """The command line of a /proc entry; right after exec it can read empty, so retry briefly."""
    for _ in range(20):
        raw = (proc / "cmdline").read_bytes()
        if raw:
            return raw.replace(b"\0", b" ").decode(errors="replace")
        time.sleep(0.025)
    return ""


def find_java_process(main_class: str, marker: str) -> int | None:
    """The lowest pid of a live JVM running ``main_class`` with ``marker`` in an argument.

    Used to adopt a server whose pid file was lost (e.g. a starter that crashed between spawning
    it and recording it), instead of reporting our own server as a foreign "port-busy" process.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    for entry in sorted((p for p in proc.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if (Path(args[0]).name == "java" and main_class in args
                and any(marker in arg for arg in args) and pid_alive(int(entry.name))):
            return int(entry.name)
    return None


def spawn_detached(command: Sequence[str], *, log_file: Path, cwd: Path,
                   env: dict[str, str] | None = None) -> int:
    """Start ``command`` in its own session with stdout+stderr appended to ``log_file``.

    Its own session (and so process group) means Ctrl-C in the shell that ran `qustream infra up`
    or the end of a pytest run does not take the server down with it.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: "
                  f"{' '.join(command[:1])} ... {command[-1]}\n".encode())
        log.flush()
        process = subprocess.Popen(
            list(command), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=cwd, env=env, start_new_session=True, close_fds=True,
        )
    # Popen warns (ResourceWarning) when a still-running child object is collected; the server
    # is meant to outlive us, and pid_alive() reaps it if it dies while we still exist.
    process.returncode = 0
    return process.pid


def terminate(pid: int, *, must_contain: str | None = None, grace_s: float = 60.0) -> bool:
    """Stop ``pid`` gracefully: SIGTERM to its process group, wait ``grace_s``, then SIGKILL.

    Returns True when a live process was stopped, False when there was none.
    """
    if not pid_alive(pid, must_contain):
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.2)
    _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return True


def terminate_all(targets: Sequence[tuple[int, str | None]], *,
                  grace_s: float = 60.0) -> list[bool]:
    """``terminate`` several processes at once: SIGTERM to all, one shared grace period, then
    SIGKILL to what is left. ``targets`` are (pid, must_contain); returns, per target, whether
    a live process was stopped."""
    alive = [pid_alive(pid, marker) for pid, marker in targets]
    for (pid, _), live in zip(targets, alive, strict=True):
        if live:
            _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(
            live and pid_alive(pid) for (pid, _), live in zip(targets, alive, strict=True)):
        time.sleep(0.2)
    for (pid, _), live in zip(targets, alive, strict=True):
        if live and pid_alive(pid):
            _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and any(
            live and pid_alive(pid) for (pid, _), live in zip(targets, alive, strict=True)):
        time.sleep(0.1)
    return alive


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        # Not a group leader (started by something else): signal just the process.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def tail_lines(path: Path, count: int) -> list[str]:
    """The last ``count`` lines of a text file (reads at most a few MiB from its end)."""
    if count <= 0 or not path.is_file():
        return []
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        block = min(size, max(64 * 1024, count * 400), 8 * 1024 * 1024)
        handle.seek(size - block)
        data = handle.read().decode(errors="replace")
    lines = data.splitlines()
    if block < size:
        lines = lines[1:]  # the first line is probably cut
    return lines[-count:]
