"""``streams.kafka.compacted``: what a reader of a compacted topic keeps of what it read."""

from __future__ import annotations

from streams.kafka import Record, compacted


def _record(offset: int, key: bytes | None, value: bytes | None) -> Record:
    return Record("t", 0, offset, key, value, 0)


def test_the_newest_record_of_each_key_is_kept_and_a_tombstone_removes_its_key() -> None:
    records = [_record(0, b"a", b"1"), _record(1, b"b", b"1"), _record(2, b"a", b"2"),
               _record(3, b"c", b"1"), _record(4, b"b", None), _record(5, b"c", None),
               _record(6, b"c", b"3")]
    kept = compacted(records)
    assert {(r.key, r.value, r.offset) for r in kept} == {(b"a", b"2", 2), (b"c", b"3", 6)}
    assert compacted([]) == []
