"""Time windows over event time: tumbling and hopping, as immutable bucket tuples.

A ``WindowSpec`` cuts time (milliseconds since the epoch) into buckets of ``hop_ms``. A hopping
window of ``size_ms`` is a run of ``size_ms / hop_ms`` consecutive buckets; tumbling windows are
the case ``hop_ms == size_ms`` (one bucket per window). A series keeps one value per bucket:

- ``Counts``: an integer per bucket (events, bytes, failures ...);
- ``Samples``: the observed values per bucket (latencies), for percentiles.

Which window a question is about is always said by the caller with ``now_ms``: the *current*
window is the oldest window that still contains ``now_ms`` (the one holding the most history):
it ends with the bucket of ``now_ms`` and spans ``size_ms`` back. For tumbling windows that is
the bucket of ``now_ms`` itself, started at the boundary.

Series are pruned by their own newest bucket only (never by ``now`` or by other series), so the
content of a series depends on the events added to it and not on when or in which interleaving
with other inputs they were processed: replaying a topic rebuilds exactly the same buckets.
Every function returns a new value; nothing is mutated.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_SAMPLES_PER_BUCKET = 4096  # bounds memory when a bucket is flooded (samples are dropped)


class WindowError(ValueError):
    """A window specification that cannot work (non-positive sizes, size not a multiple)."""


@dataclass(frozen=True, slots=True)
class WindowSpec:
    size_ms: int
    hop_ms: int

    def __post_init__(self) -> None:
        if self.hop_ms <= 0 or self.size_ms <= 0 or self.size_ms % self.hop_ms:
            raise WindowError(
                f"window size {self.size_ms} ms must be a positive multiple of its hop "
                f"{self.hop_ms} ms")

    @classmethod
    def tumbling(cls, size_ms: int) -> WindowSpec:
        return cls(size_ms, size_ms)

    @classmethod
    def hopping(cls, size_ms: int, hop_ms: int) -> WindowSpec:
        return cls(size_ms, hop_ms)

    @property
    def is_tumbling(self) -> bool:
        return self.size_ms == self.hop_ms

    def bucket(self, at_ms: int) -> int:
        """Start of the bucket holding ``at_ms``."""
        return at_ms - at_ms % self.hop_ms

    def current(self, now_ms: int) -> tuple[int, int]:
        """[start, end) of the current window at ``now_ms`` (see the module doc)."""
        end = self.bucket(now_ms) + self.hop_ms
        return end - self.size_ms, end

    def keeps(self, bucket: int, newest: int) -> bool:
        """Whether a series whose newest bucket is ``newest`` still needs ``bucket``."""
        return bucket > newest - self.size_ms


@dataclass(frozen=True, slots=True)
class Counts:
    """(bucket start, count) pairs, oldest first."""

    buckets: tuple[tuple[int, int], ...] = ()

    def add(self, spec: WindowSpec, at_ms: int, amount: int = 1) -> Counts:
        if amount == 0:
            return self
        bucket = spec.bucket(at_ms)
        newest = max(bucket, self.buckets[-1][0]) if self.buckets else bucket
        if not spec.keeps(bucket, newest):
            return self  # older than anything the window can still show
        merged = dict(self.buckets)
        merged[bucket] = merged.get(bucket, 0) + amount
        return Counts(tuple(sorted((b, c) for b, c in merged.items() if spec.keeps(b, newest))))

    def total(self, spec: WindowSpec, now_ms: int) -> int:
        start, end = spec.current(now_ms)
        return sum(count for bucket, count in self.buckets if start <= bucket < end)

    def first_bucket(self) -> int | None:
        return self.buckets[0][0] if self.buckets else None


@dataclass(frozen=True, slots=True)
class Samples:
    """(bucket start, observed values) pairs, oldest first; values in arrival order."""

    buckets: tuple[tuple[int, tuple[int, ...]], ...] = ()

    def add(self, spec: WindowSpec, at_ms: int, value: int) -> Samples:
        bucket = spec.bucket(at_ms)
        newest = max(bucket, self.buckets[-1][0]) if self.buckets else bucket
        if not spec.keeps(bucket, newest):
            return self
        merged = dict(self.buckets)
        values = merged.get(bucket, ())
        if len(values) < MAX_SAMPLES_PER_BUCKET:
            merged[bucket] = (*values, value)
        return Samples(tuple(sorted((b, v) for b, v in merged.items() if spec.keeps(b, newest))))

    def values(self, spec: WindowSpec, now_ms: int) -> tuple[int, ...]:
        start, end = spec.current(now_ms)
        return tuple(v for bucket, values in self.buckets if start <= bucket < end
                     for v in values)


def percentile(values: tuple[int, ...], per_mille: int) -> int | None:
    """Nearest-rank percentile (``per_mille`` 500 = median, 950 = p95); None when empty.

    Integers only: the rank is ceil(per_mille * n / 1000)."""
    if not values:
        return None
    if not 0 < per_mille <= 1000:
        raise WindowError(f"percentile {per_mille}/1000 is outside (0, 1000]")
    ordered = sorted(values)
    rank = -(-per_mille * len(ordered) // 1000)
    return ordered[max(rank, 1) - 1]
