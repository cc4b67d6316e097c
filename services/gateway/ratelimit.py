"""Per-key token buckets and daily quotas (in memory, per gateway process).

Each key has a bucket of ``burst`` tokens refilled at ``rate_per_s``; a request takes one.
Key-material requests also draw from a daily byte quota, and event streams from a per-key cap
on streams open at once (``StreamSlots``). An empty bucket or quota, or a full cap, gives 429
with ``Retry-After`` (seconds until the bucket has a token / the quota window resets). With
several gateway replicas each enforces its own share; a shared limiter (Redis, Envoy) belongs
in front of them in production.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from protocol.errors import QuStreamError

DAY_S = 86_400.0


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float
    quota_used: int = 0
    quota_window: float = 0.0


class Limited(QuStreamError):
    """Over the limit; ``retry_after_s`` says when to try again, ``what`` which limit."""

    def __init__(self, what: str, retry_after_s: int) -> None:
        super().__init__(what)
        self.what = what
        self.retry_after_s = retry_after_s


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key_id: str, rate_per_s: float, burst: int) -> None:
        """Take one token or raise ``Limited``."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key_id)
            if bucket is None:
                bucket = self._buckets[key_id] = _Bucket(float(burst), now, 0, now)
            bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.updated) * rate_per_s)
            bucket.updated = now
            if bucket.tokens < 1.0:
                wait = (1.0 - bucket.tokens) / rate_per_s if rate_per_s > 0 else DAY_S
                raise Limited(f"rate limit of {rate_per_s:g} requests/s (burst {burst})",
                              max(1, math.ceil(wait)))
            bucket.tokens -= 1.0

    def charge_quota(self, key_id: str, amount: int, limit: int) -> None:
        """Add ``amount`` to the key's daily usage or raise ``Limited`` (nothing charged)."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.setdefault(key_id, _Bucket(0.0, now, 0, now))
            if now - bucket.quota_window >= DAY_S:
                bucket.quota_window, bucket.quota_used = now, 0
            if bucket.quota_used + amount > limit:
                raise Limited(f"daily quota of {limit} key-material bytes",
                              max(1, math.ceil(bucket.quota_window + DAY_S - now)))
            bucket.quota_used += amount


class StreamSlots:
    """How many event streams each key holds open; ``acquire`` past the key's cap raises
    ``Limited``. Every ``acquire`` is paired with one ``release`` (the gateway releases when
    the stream's ASGI call ends, whichever way)."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, key_id: str, cap: int) -> None:
        with self._lock:
            held = self._open.get(key_id, 0)
            if held >= cap:
                raise Limited(f"limit of {cap} open event streams per key", 5)
            self._open[key_id] = held + 1

    def release(self, key_id: str) -> None:
        with self._lock:
            held = self._open.get(key_id, 0) - 1
            if held > 0:
                self._open[key_id] = held
            else:
                self._open.pop(key_id, None)

    def held(self, key_id: str) -> int:
        return self._open.get(key_id, 0)
