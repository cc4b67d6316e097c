"""The one-pack encoders and decoders (``EntropyRef.canonical``, ``randomness_input``,
``protocol.codec``'s header and reference readers) against the field-by-field
``CanonicalWriter`` they stand for, over generated values: the same bytes, the same
refusals."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.block import ENTROPY_REF_FIELDS, Block, Body, EntropyRef, Header, SeqRange
from protocol.canonical import CanonicalEncodingError, CanonicalWriter
from protocol.codec import WireError, decode_block, decode_header
from protocol.entropy.chain import HealthSummary
from protocol.randomness import randomness_input

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
HASH = st.binary(min_size=32, max_size=32)
SOURCE = st.text(min_size=1, max_size=12)


@st.composite
def refs(draw: st.DrawFn) -> EntropyRef:
    windows = draw(U32)
    health = HealthSummary(draw(U32), draw(st.integers(0, 4096)), windows, draw(U64),
                           draw(U32), draw(U32), draw(st.integers(4096, 2**32 - 1)),
                           draw(st.integers(0, windows)))
    return EntropyRef(draw(SOURCE), draw(U64), draw(HASH), health, draw(HASH),
                      draw(st.booleans()))


def written(ref: EntropyRef) -> bytes:
    return ref.health.write(
        CanonicalWriter("EntropyRef").text(ref.source_id).u64(ref.seq)
        .raw(ref.digest, 32).raw(ref.next_digest, 32).boolean(ref.committed)).finish()


@settings(max_examples=300, deadline=None)
@given(refs())
def test_an_entropy_ref_encodes_as_the_writer_would_and_decodes_back(ref: EntropyRef) -> None:
    assert ref.canonical() == written(ref)
    header = _header_with([SeqRange(ref.source_id, ref.seq, ref.seq)])
    assert decode_header(header.canonical()) == header


@settings(max_examples=200, deadline=None)
@given(U64, st.lists(refs(), max_size=5))
def test_randomness_input_is_the_writer_s_message(height: int, entropy: list[EntropyRef]) -> None:
    ordered = sorted((r for r in entropy if r.committed), key=lambda r: (r.source_id, r.seq))
    expected = (CanonicalWriter("BlockRandomness").u64(height).sequence(
        ordered, lambda w, r: w.nested(CanonicalWriter("MixedChunk").text(r.source_id)
                                       .u64(r.seq).raw(r.digest, 32).finish())).finish())
    assert randomness_input(height, entropy) == expected


def test_out_of_range_values_are_refused_as_by_the_writer() -> None:
    ref = EntropyRef("qrng-0", 2**64, bytes(32), HealthSummary(), bytes(32))
    with pytest.raises(CanonicalEncodingError):
        ref.canonical()
    with pytest.raises(CanonicalEncodingError):
        randomness_input(2**64, ())
    with pytest.raises(ValueError, match="boolean committed"):
        EntropyRef("qrng-0", 1, bytes(32), HealthSummary(), bytes(32), 1)  # type: ignore[arg-type]


def _header_with(ranges: list[SeqRange]) -> Header:
    return Header("qustream-test", 7, 1, 1_700_000_000_000, b"\x01" * 32, b"\x02" * 32,
                  b"\x03" * 32, tuple(ranges), 1, 2, b"\x04" * 64, b"\x05" * 32, b"\x06" * 32,
                  b"\x07" * 32, b"\x08" * 32, b"app", b"\x09" * 20, b"\x0a" * 32)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 600))
def test_a_header_decodes_only_from_its_own_bytes(junk: bytes, cut: int) -> None:
    encoded = _header_with([SeqRange("qrng-0", 3, 3), SeqRange("qrng-1", 9, 9)]).canonical()
    for changed in (encoded[:cut], encoded + junk[:1] if junk else encoded + b"\x00"):
        if changed == encoded:
            continue
        with pytest.raises(WireError):
            decode_header(changed)


@given(refs(), st.integers(2, 255))
@settings(max_examples=50, deadline=None)
def test_a_committed_byte_other_than_0_or_1_is_refused(ref: EntropyRef, byte: int) -> None:
    block = Block(_header_with([]), Body(entropy=(ref,)))
    data = bytearray(block.canonical())
    encoded = ref.canonical()
    at = bytes(data).index(encoded) + len(encoded) - ENTROPY_REF_FIELDS.size + 8 + 32 + 32
    assert data[at] == int(ref.committed)
    assert decode_block(bytes(data)) == block
    data[at] = byte
    with pytest.raises(WireError, match="boolean byte"):
        decode_block(bytes(data))
