"""Canonical encoding: golden vectors other implementations must reproduce, and range checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.canonical import CanonicalEncodingError, CanonicalWriter

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "canonical" / "vectors.json"


def _build(case: dict) -> bytes:
    writer = CanonicalWriter(case["tag"])
    for kind, value in case["fields"]:
        if kind == "bytes":
            writer.bytes(bytes.fromhex(value))
        elif kind == "raw32":
            writer.raw(bytes.fromhex(value), 32)
        elif kind == "optional_u64":
            writer.optional(value, lambda w, v: w.u64(v))
        elif kind == "seq_text":
            writer.sequence(value, lambda w, v: w.text(v))
        elif kind == "bool":
            writer.boolean(value)
        else:
            getattr(writer, kind)(value)
    return writer.finish()


def test_golden_vectors() -> None:
    cases = json.loads(VECTORS.read_text())
    assert len(cases) >= 5
    for case in cases:
        encoded = _build(case)
        assert encoded.hex() == case["encoding"], case["tag"]
        assert CanonicalWriter(case["tag"]).digest() != b""  # tag alone hashes too


def test_tag_is_length_prefixed_ascii() -> None:
    assert CanonicalWriter("X").finish() == b"\x00\x0dQuStream/v1/X"


@pytest.mark.parametrize(
    ("method", "value"),
    [("u8", 256), ("u16", 65536), ("u32", 2**32), ("u64", 2**64), ("u64", -1),
     ("i64", 2**63), ("u64", True), ("u32", 1.0)],
)
def test_out_of_range_or_wrong_type_is_an_error(method: str, value: object) -> None:
    with pytest.raises(CanonicalEncodingError):
        getattr(CanonicalWriter("T"), method)(value)


def test_bad_tag_and_raw_length_rejected() -> None:
    with pytest.raises(CanonicalEncodingError):
        CanonicalWriter("a/b")
    with pytest.raises(CanonicalEncodingError):
        CanonicalWriter("T").raw(b"\x00" * 31, 32)


@given(st.lists(st.binary(max_size=40), max_size=6), st.lists(st.binary(max_size=40), max_size=6))
def test_length_prefixes_make_encodings_injective(a: list[bytes], b: list[bytes]) -> None:
    def enc(items: list[bytes]) -> bytes:
        return CanonicalWriter("L").sequence(items, lambda w, v: w.bytes(v)).finish()

    assert (enc(a) == enc(b)) == (a == b)
