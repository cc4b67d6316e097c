"""FrozenMap: the cached, per-item digest equals a fresh one-writer encoding after any sequence of
writes, across versions that share their encodings; ``set_many`` equals chained ``set``."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.canonical import CanonicalWriter
from services.ledger.core.fmap import FrozenMap

TAG = "TestMap"


def _write(w: CanonicalWriter, key: int, value: tuple[int, str]) -> None:
    w.u64(key).u64(value[0]).text(value[1])


def _fresh_digest(items: dict[int, tuple[int, str]]) -> bytes:
    return (CanonicalWriter(TAG)
            .sequence(sorted(items.items()), lambda w, pair: _write(w, pair[0], pair[1]))
            .digest())


ops = st.lists(st.tuples(st.sampled_from(["set", "remove", "many"]), st.integers(0, 300),
                         st.integers(0, 5), st.text(max_size=3)), max_size=120)


@given(ops)
@settings(max_examples=60, deadline=None)
def test_digest_equals_fresh_encoding_after_any_writes(history: list[tuple[str, int, int, str]]
                                                      ) -> None:
    current: FrozenMap[int, tuple[int, str]] = FrozenMap()
    model: dict[int, tuple[int, str]] = {}
    versions = [(current, dict(model))]
    for op, key, number, text in history:
        if op == "set":
            current = current.set(key, (number, text))
            model[key] = (number, text)
        elif op == "remove":
            current = current.remove(key)
            model.pop(key, None)
        else:
            pairs = [(key, (number, text)), (key + 1, (number, text)), (key, (number + 1, text))]
            current = current.set_many(pairs)
            model.update(pairs)  # later pairs win, as with chained set
        assert len(current) == len(model)
        assert current.digest(TAG, _write) == _fresh_digest(model)
        versions.append((current, dict(model)))
    # Older versions still hash as they did: the shared encodings never leak between versions.
    for version, items in versions[::7]:
        assert dict(version.items()) == items
        assert version.digest(TAG, _write) == _fresh_digest(items)


def test_set_many_without_pairs_is_the_same_map() -> None:
    base: FrozenMap[int, int] = FrozenMap({1: 1})
    assert base.set_many([]) is base


def test_removed_keys_do_not_keep_their_encodings_forever() -> None:
    current: FrozenMap[int, tuple[int, str]] = FrozenMap()
    for key in range(2000):
        current = current.set(key, (key, "x")).remove(key - 1)
        current.digest(TAG, _write)
    assert len(current._encoded) < 600
    assert current.digest(TAG, _write) == _fresh_digest({1999: (1999, "x")})
