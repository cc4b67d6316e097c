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


SOURCES = st.sampled_from(["qrng-0", "qrng-1", "qrng-2", "dice.lane-0", "é"])


@st.composite
def range_entries(draw: st.DrawFn) -> list[tuple[Header, tuple[EntropyRef, ...]]]:
    """Pulse entries whose shapes repeat and change (sources come and go, app hashes of a few
    lengths), as a range's do."""
    chain_id = draw(st.sampled_from(["qustream-test", "c", "ünï"]))
    entries = []
    for height in range(1, draw(st.integers(1, 14)) + 1):
        sources = sorted(draw(st.sets(SOURCES, max_size=3)))
        entropy = tuple(EntropyRef(source, draw(st.integers(0, 2**64 - 1)), draw(HASH),
                                   draw(refs()).health, draw(HASH), draw(st.booleans()))
                        for source in sources)
        ranges = tuple(SeqRange(ref.source_id, ref.seq, ref.seq) for ref in entropy)
        header = Header(chain_id, height, draw(U32), draw(U64), draw(HASH), draw(HASH),
                        draw(HASH), ranges, draw(U32), draw(U32),
                        draw(st.binary(min_size=64, max_size=64)), draw(HASH), draw(HASH),
                        draw(HASH), draw(HASH), draw(st.sampled_from([b"", b"\x01" * 32, b"ab"])),
                        draw(st.binary(min_size=20, max_size=20)), draw(HASH))
        entries.append((header, entropy))
    return entries


def _range_bytes(entries: list[tuple[Header, tuple[EntropyRef, ...]]]) -> bytes:
    from protocol.commit import CommitCertificate
    from protocol.pulse import encode_pulse_range, pulse_range_entry

    last = entries[-1][0]
    return encode_pulse_range(last.chain_id, None,
                              CommitCertificate(last.height, 0, last.hash(), ()).canonical(),
                              [pulse_range_entry(h, e) for h, e in entries])


def _decoded(data: bytes, shapes: bool) -> object:
    """What a range decodes to, every field (the committed flags and kept encodings too,
    which equality leaves out), or the error."""
    from protocol.codec import _pulse_range, guard

    try:
        decoded = guard("pulse range", lambda: _pulse_range(data, shapes))
    except WireError:
        return WireError
    return [(h, h.canonical(), [(r, r.committed, r.canonical()) for r in e])
            for h, e in decoded.pulses]


@settings(max_examples=150, deadline=None)
@given(range_entries(), st.data())
def test_a_range_reads_the_same_by_entry_shapes_as_field_by_field(
        entries: list[tuple[Header, tuple[EntropyRef, ...]]], data: st.DataObject) -> None:
    encoded = _range_bytes(entries)
    expected = [(h, h.canonical(), [(r, r.committed, r.canonical()) for r in e])
                for h, e in entries]
    assert _decoded(encoded, True) == _decoded(encoded, False) == expected
    # Any corruption: a changed byte (a length, a tag, a count, a committed flag, a value),
    # a cut or an appended byte, reads the same both ways, refused or not.
    at = data.draw(st.integers(0, len(encoded) - 1))
    changed = bytearray(encoded)
    changed[at] = data.draw(st.integers(0, 255))
    for corrupt in (bytes(changed), encoded[:at], encoded + b"\x00"):
        assert _decoded(corrupt, True) == _decoded(corrupt, False)
    # A committed byte other than 0 or 1, in any entry (most are read by a shape).
    with_refs = [e for _, e in entries if e]
    if with_refs:
        ref = data.draw(st.sampled_from(with_refs))[-1]
        reference = ref.canonical()
        at = encoded.rindex(reference) + len(reference) - ENTROPY_REF_FIELDS.size + 8 + 32 + 32
        changed = bytearray(encoded)
        changed[at] = data.draw(st.integers(2, 255))
        assert _decoded(bytes(changed), True) == _decoded(bytes(changed), False) == WireError
