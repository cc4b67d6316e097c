"""Waiting for a ``qustream gateway run`` process over HTTP (integration tests and bench/)."""

from __future__ import annotations

import subprocess
import time

import httpx


def wait_for_head(url: str, height: int, timeout_s: float, *,
                  process: subprocess.Popen[bytes] | None = None, poll_s: float = 0.5) -> None:
    """Return once the gateway at ``url`` serves a head at ``height`` or above; AssertionError
    when ``timeout_s`` passes first, or at once when ``process`` (the gateway's) has exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the gateway at {url} exited with {process.returncode}")
        try:
            head = httpx.get(f"{url}/v1/chain/head", timeout=5)
            if head.status_code == 200 and head.json().get("height", 0) >= height:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll_s)
    raise AssertionError(f"{url} did not reach height {height} in {timeout_s} s")
