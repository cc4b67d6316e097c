"""A small persistent mapping: reads like a dict, every write returns a new map.

Why not a plain dict: ledger states are values (a rejected transaction simply keeps the old
state, a replay compares states), so nothing may be mutated in place. Why not copy one dict per
write: with many accounts that is O(n) per transfer. The map is split into 64 buckets chosen by
``hash(key)``; a write copies the bucket tuple and one bucket, so a write costs O(64 + n / 64).

The bucket of a key depends on Python's per-process hash seed, so it is never observable: all
iteration (``items``, ``keys``, ``values``, ``__iter__``) is in sorted key order, and the
canonical digest is computed over sorted items. Keys of one map must be mutually comparable.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from protocol.canonical import CanonicalWriter, sha256

K = TypeVar("K")
V = TypeVar("V")

_BUCKETS = 64
_EMPTY: dict[Any, Any] = {}  # shared by every empty bucket; never written to
_REMOVED = object()  # marks a removal in ``_ordered_with``


def _first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


class FrozenMap(Generic[K, V]):
    """Immutable mapping with copy-on-write updates; buckets are shared between versions."""

    __slots__ = ("_buckets", "_cache", "_encoded", "_len", "_sorted")

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        buckets: list[dict[K, V]] = [_EMPTY for _ in range(_BUCKETS)]
        pairs = items.items() if isinstance(items, Mapping) else items
        for key, value in pairs:
            index = hash(key) % _BUCKETS
            if buckets[index] is _EMPTY:
                buckets[index] = {}
            buckets[index][key] = value
        self._buckets: tuple[dict[K, V], ...] = tuple(buckets)
        self._len = sum(len(bucket) for bucket in buckets)
        self._cache: dict[str, bytes] = {}
        self._encoded: dict[tuple[str, K], tuple[V, bytes]] = {}
        self._sorted: list[tuple[K, V]] | None = None  # items in key order, once asked for

    @classmethod
    def _from_buckets(cls, buckets: tuple[dict[K, V], ...], length: int,
                      encoded: dict[tuple[str, K], tuple[V, bytes]],
                      ordered: list[tuple[K, V]] | None = None) -> FrozenMap[K, V]:
        new = cls.__new__(cls)
        new._buckets = buckets
        new._len = length
        new._cache = {}
        new._encoded = encoded
        new._sorted = ordered
        return new

    def _ordered_with(self, changes: Iterable[tuple[K, Any]]) -> list[tuple[K, V]] | None:
        """This map's sorted items with ``changes`` applied (``_REMOVED``: removed), derived
        from the cached order by binary search: a write costs a list copy, not a sort."""
        if self._sorted is None:
            return None
        ordered = list(self._sorted)
        for key, value in changes:
            at = bisect.bisect_left(ordered, key, key=_first)  # type: ignore[call-overload]
            present = at < len(ordered) and ordered[at][0] == key
            if value is _REMOVED:
                if present:
                    del ordered[at]
            elif present:
                ordered[at] = (key, value)
            else:
                ordered.insert(at, (key, value))
        return ordered

    def __len__(self) -> int:
        return self._len

    def __contains__(self, key: object) -> bool:
        return key in self._buckets[hash(key) % _BUCKETS]

    def __getitem__(self, key: K) -> V:
        return self._buckets[hash(key) % _BUCKETS][key]

    def get(self, key: K, default: V | None = None) -> V | None:
        return self._buckets[hash(key) % _BUCKETS].get(key, default)

    def set(self, key: K, value: V) -> FrozenMap[K, V]:
        """A new map with ``key`` bound to ``value``."""
        index = hash(key) % _BUCKETS
        bucket = dict(self._buckets[index])
        grown = key not in bucket
        bucket[key] = value
        return self._replace_bucket(index, bucket, self._len + grown,
                                    self._ordered_with(((key, value),)))

    def set_many(self, pairs: Iterable[tuple[K, V]]) -> FrozenMap[K, V]:
        """A new map with every (key, value) bound, later pairs winning: the same map as
        chained ``set`` calls, with each touched bucket (and the bucket tuple) copied once."""
        buckets = list(self._buckets)
        copied: set[int] = set()
        length = self._len
        pairs = list(pairs)
        for key, value in pairs:
            index = hash(key) % _BUCKETS
            if index not in copied:
                buckets[index] = dict(buckets[index])
                copied.add(index)
            bucket = buckets[index]
            if key not in bucket:
                length += 1
            bucket[key] = value
        if not copied:
            return self
        return FrozenMap._from_buckets(tuple(buckets), length, self._encoded,
                                       self._ordered_with(pairs))

    def remove(self, key: K) -> FrozenMap[K, V]:
        """A new map without ``key`` (the same map when ``key`` is absent)."""
        index = hash(key) % _BUCKETS
        if key not in self._buckets[index]:
            return self
        bucket = dict(self._buckets[index])
        del bucket[key]
        return self._replace_bucket(index, bucket if bucket else _EMPTY, self._len - 1,
                                    self._ordered_with(((key, _REMOVED),)))

    def _replace_bucket(self, index: int, bucket: dict[K, V], length: int,
                        ordered: list[tuple[K, V]] | None) -> FrozenMap[K, V]:
        buckets = list(self._buckets)
        buckets[index] = bucket
        return FrozenMap._from_buckets(tuple(buckets), length, self._encoded, ordered)

    def items(self) -> list[tuple[K, V]]:
        """All pairs in sorted key order (the only order this map exposes)."""
        if self._sorted is None:
            pairs: list[tuple[K, V]] = []
            for bucket in self._buckets:
                pairs.extend(bucket.items())
            pairs.sort(key=_first)
            self._sorted = pairs
        return list(self._sorted)

    def keys(self) -> list[K]:
        return [key for key, _ in self.items()]

    def values(self) -> list[V]:
        return [value for _, value in self.items()]

    def __iter__(self) -> Iterator[K]:
        return iter(self.keys())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FrozenMap):
            return NotImplemented
        return self._len == other._len and all(
            key in other and other[key] == value for key, value in self.items()
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"FrozenMap({dict(self.items())!r})"

    def digest(self, tag: str, write_item: Callable[[CanonicalWriter, K, V], object],
               item_bytes: Callable[[K, V], bytes] | None = None) -> bytes:
        """SHA-256 of the canonical encoding: ``tag``, then the items in sorted key order.

        Cached per tag: a map is immutable, so a module whose map did not change between two
        blocks is not re-encoded. Callers must use one ``write_item`` per tag. Within a changed
        map, items are re-encoded only if their value object changed: every version derived
        from one map shares the encodings of its items, keyed by (tag, key) and checked by
        identity of the (immutable) value, so a block that touches three accounts re-encodes
        three, not all of them. The result is byte-for-byte the one-writer encoding.
        ``item_bytes``, when given, returns what ``write_item`` writes for an item, without a
        writer per item (for maps whose every item changes each block).
        """
        cached = self._cache.get(tag)
        if cached is None:
            pairs = self.items()
            encoded = self._encoded
            parts = [CanonicalWriter(tag).u32(len(pairs)).finish()]
            for key, value in pairs:
                hit = encoded.get((tag, key))
                if hit is None or hit[0] is not value:
                    if item_bytes is not None:
                        hit = (value, item_bytes(key, value))
                    else:
                        item = CanonicalWriter.fragment()
                        write_item(item, key, value)
                        hit = (value, item.finish())
                    encoded[(tag, key)] = hit
                parts.append(hit[1])
            cached = sha256(b"".join(parts))
            self._cache[tag] = cached
            if len(encoded) > 2 * len(pairs) + 256:  # drop encodings of removed keys
                live = {(tag, key) for key, _ in pairs}
                for stale in [k for k in encoded if k[0] == tag and k not in live]:
                    del encoded[stale]
        return cached
