"""Strict canonical decoders of the chain's data: votes, evidence, commit certificates, blocks.

They mirror the writers in ``protocol`` field by field and reject anything the writers could not
have produced (``CanonicalReader`` is strict), so one value has one encoding. Every failure is a
``WireError`` naming what was malformed; consumers dead-letter it. The Avro records that carry
these bytes on the topics are in ``streams.chain_wire``.
"""

from __future__ import annotations

import functools
import operator
import struct
from collections.abc import Callable
from typing import Any, TypeVar

from protocol.block import (
    ENTROPY_REF_FIELDS,
    Block,
    BlockFormatError,
    Body,
    EntropyRef,
    Header,
    SeqRange,
)
from protocol.canonical import CanonicalDecodeError, CanonicalReader, CanonicalWriter
from protocol.commit import CommitCertificate, CommitFlag, CommitSig
from protocol.entropy.chain import HealthSummary
from protocol.errors import InputError
from protocol.evidence import DuplicateVoteEvidence
from protocol.keys import Algorithm, KeyError_, PublicKey
from protocol.messages import MessageError, Vote, VoteType
from protocol.pulse import PulseRange
from protocol.validators import Validator, ValidatorSet, ValidatorSetError

_K = TypeVar("_K", Header, EntropyRef, CommitCertificate)  # what keeps its encoding
MAX_ITEMS = 100_000  # per sequence inside one block; a Kafka message is <= 8 MiB anyway


class WireError(InputError):
    """A chain record is malformed, of an unexpected schema, or inconsistent with its body."""


# ---------------------------------------------------------------- canonical decoders


def _vote(data: bytes) -> Vote:
    r = CanonicalReader(data, "SignedVote")
    vote_type = VoteType(r.u8())
    height, round = r.u64(), r.u32()
    block_hash = r.optional(lambda x: x.raw(32))
    address = r.raw(20)
    signature = r.bytes()
    r.done()
    return Vote(vote_type, height, round, block_hash, address, signature)


def decode_vote(data: bytes) -> Vote:
    return guard("vote", lambda: _vote(data))


def _evidence(data: bytes) -> DuplicateVoteEvidence:
    r = CanonicalReader(data, "DuplicateVoteEvidence")
    a, b = _vote(r.nested()), _vote(r.nested())
    r.done()
    evidence = DuplicateVoteEvidence(a, b)
    problem = evidence.structural_problem()
    if problem:
        raise WireError(f"evidence: {problem}")
    return evidence


def decode_evidence(data: bytes) -> DuplicateVoteEvidence:
    return guard("evidence", lambda: _evidence(data))


def _nested_commit_sig(r: CanonicalReader) -> CommitSig:
    """The ``CommitSig`` nested at ``r``, read in place (``CanonicalReader.enter``): a
    certificate holds one per validator, and copying each out into a reader of its own cost more
    than reading it."""
    _, end = r.enter("CommitSig")
    flag = CommitFlag(r.u8())
    address = r.raw(20)
    signature = r.bytes()
    r.leave(end)
    return CommitSig(flag, address, signature)


@functools.lru_cache(maxsize=8)
def _commit(data: bytes) -> CommitCertificate:
    # Memoized by bytes: a certificate arrives twice, in its BlockFinalized record and again as
    # the next block's ``last_commit``. The certificate is immutable, so sharing it is safe.
    r = CanonicalReader(data, "CommitCertificate")
    height, round, block_hash = r.u64(), r.u32(), r.raw(32)
    signatures = r.sequence(_nested_commit_sig, MAX_ITEMS)
    r.done()
    return _remember(CommitCertificate(height, round, block_hash, signatures), data)


def _remember(value: _K, data: bytes) -> _K:
    """Keep ``data`` as ``value``'s canonical encoding, so it is not encoded again for hashing.
    Sound because the reader is strict (module doc): the only bytes that decode to ``value``
    are its canonical encoding."""
    object.__setattr__(value, "_canonical", bytes(data))
    return value


def decode_commit(data: bytes) -> CommitCertificate:
    return guard("commit certificate", lambda: _commit(data))


# Fixed-width runs of the header's encoding, read with one unpack each
# (``CanonicalReader.fields``); the entropy reference's is ``ENTROPY_REF_FIELDS``.
_HEADER_LEAD = struct.Struct(">QIQ32s32s32s")  # height .. entropy_root
_HEADER_MIDDLE = struct.Struct(">II64s32s32s32s32s")  # fresh_sources .. next_validators_hash
_HEADER_TAIL = struct.Struct(">20s32s")  # proposer_address, history_root
_SEQ_RANGE_FIELDS = struct.Struct(">QQ")  # first, last


def _whole(data: bytes, name: str, read: Callable[[CanonicalReader], _K]) -> _K:
    """The message ``name`` that is all of ``data``, kept with its bytes (``_remember``)."""
    r = CanonicalReader(data, name)
    value = read(r)
    r.done()
    return _remember(value, data)


def _nested(r: CanonicalReader, name: str, read: Callable[[CanonicalReader], _K]) -> _K:
    """The nested message ``name`` at ``r``, read in place (``CanonicalReader.enter``: a range
    client reads a header and its references a pulse), kept with its bytes."""
    start, end = r.enter(name)
    value = read(r)
    r.leave(end)
    return _remember(value, r.span(start, end))


def _entropy_ref(data: bytes) -> EntropyRef:
    return _whole(data, "EntropyRef", _read_entropy_ref)


def _nested_entropy_ref(r: CanonicalReader) -> EntropyRef:
    return _nested(r, "EntropyRef", _read_entropy_ref)


def _read_entropy_ref(r: CanonicalReader) -> EntropyRef:
    source_id = r.text()
    seq, digest, next_digest, committed, *health = r.fields(ENTROPY_REF_FIELDS)
    if committed > 1:
        raise CanonicalDecodeError(f"boolean byte must be 0 or 1, got {committed}")
    return EntropyRef(source_id, seq, digest, HealthSummary(*health), next_digest,
                      committed == 1)


def _nested_seq_range(r: CanonicalReader) -> SeqRange:
    _, end = r.enter("SeqRange")
    source_id = r.text()
    first, last = r.fields(_SEQ_RANGE_FIELDS)
    r.leave(end)
    return SeqRange(source_id, first, last)


def _header(data: bytes) -> Header:
    return _whole(data, "BlockHeader", _read_header)


def _nested_header(r: CanonicalReader) -> Header:
    return _nested(r, "BlockHeader", _read_header)


def _read_header(r: CanonicalReader) -> Header:
    chain_id = r.text()
    height, round_, time_ms, previous, last_commit, root = r.fields(_HEADER_LEAD)
    ranges = r.sequence(_nested_seq_range, MAX_ITEMS)
    fresh, registered, randomness, txs, evidence, validators, next_validators = r.fields(
        _HEADER_MIDDLE)
    app_hash = r.bytes()
    proposer, history = r.fields(_HEADER_TAIL)
    return Header(chain_id, height, round_, time_ms, previous, last_commit,
                  root, ranges, fresh, registered, randomness, txs, evidence,
                  validators, next_validators, app_hash, proposer, history)


def _read_body(r: CanonicalReader) -> Body:
    return Body(
        entropy=r.sequence(_nested_entropy_ref, MAX_ITEMS),
        txs=r.sequence(CanonicalReader.bytes, MAX_ITEMS),
        evidence=r.sequence(lambda x: _evidence(x.nested()), MAX_ITEMS),
        last_commit=r.optional(lambda x: _commit(x.nested())),
    )


def _block(data: bytes) -> Block:
    # The body is read in place and the block is not encoded again to compare with ``data``:
    # every reader here is strict (module doc), so ``data`` is the block's canonical encoding
    # already; test_chain_services_wire mutates blocks to hold that. At 64 validators a block
    # is some 215 kB (its last commit's signatures), and the copy of the body, two joins and
    # the compare cost more than the rest of its decoding on a validator's cold caches.
    r = CanonicalReader(data, "Block")
    header = _nested_header(r)
    _, end = r.enter("BlockBody")
    body = _read_body(r)
    r.leave(end)
    r.done()
    return Block(header, body)


def decode_block(data: bytes) -> Block:
    """The block of ``Block.canonical()`` bytes; ``WireError`` on anything else."""
    return guard("block", lambda: _block(data))


def decode_header(data: bytes) -> Header:
    """The header of ``Header.canonical()`` bytes; ``WireError`` on anything else (a light
    client checks headers alone: a pulse range carries headers, not blocks)."""
    return guard("block header", lambda: _header(data))


def read_public_key(reader: CanonicalReader) -> PublicKey:
    """A ``PublicKey.canonical()`` nested in ``reader``."""
    inner = CanonicalReader(reader.nested(), "PublicKey")
    algorithm, raw = inner.text(), inner.bytes()
    inner.done()
    try:
        return PublicKey(Algorithm.parse(algorithm), raw)
    except KeyError_ as exc:
        raise CanonicalDecodeError(f"bad public key: {exc}") from exc


def _validator(data: bytes) -> Validator:
    r = CanonicalReader(data, "Validator")
    validator = Validator(r.raw(20), read_public_key(r), r.u64())
    r.done()
    return validator


def _validator_set(data: bytes) -> ValidatorSet:
    r = CanonicalReader(data, "ValidatorSet")
    validators = r.sequence(lambda x: _validator(x.nested()), MAX_ITEMS)
    r.done()
    try:
        decoded = ValidatorSet(validators)
    except ValidatorSetError as exc:
        raise WireError(f"malformed validator set: {exc}") from exc
    if decoded.canonical() != data:  # sorted, no duplicates: one set, one encoding
        raise WireError("validator set bytes are not the canonical encoding of their content")
    return decoded


def decode_validator_set(data: bytes) -> ValidatorSet:
    """The set of ``ValidatorSet.canonical()`` bytes; ``WireError`` on anything else."""
    return guard("validator set", lambda: _validator_set(data))


def guard(what: str, decode: Any) -> Any:
    try:
        return decode()
    except WireError:
        raise
    except (CanonicalDecodeError, BlockFormatError, MessageError, ValueError) as exc:
        raise WireError(f"malformed {what}: {exc}") from exc


def _pulse_range(data: bytes, shapes: bool = True) -> PulseRange:
    r = CanonicalReader(data, "PulseRange")
    chain_id = r.text()
    previous = r.optional(_nested_header)
    commit = _commit(r.nested())
    if shapes:
        reader = _ShapedEntries()
        pulses = r.sequence(reader.read, MAX_ITEMS)
    else:
        pulses = r.sequence(_range_entry, MAX_ITEMS)
    r.done()
    return PulseRange(chain_id, previous, commit, pulses)


def _range_entry(r: CanonicalReader) -> tuple[Header, tuple[EntropyRef, ...]]:
    """One ``PulseEntry`` (``protocol.pulse``) read field by field."""
    return _nested_header(r), r.sequence(_nested_entropy_ref, MAX_ITEMS)


_HEADER_TAG = CanonicalWriter("BlockHeader").finish()  # the length-prefixed domain tags
_SEQ_RANGE_TAG = CanonicalWriter("SeqRange").finish()
_ENTROPY_REF_TAG = CanonicalWriter("EntropyRef").finish()
_REF_CODES = ("Q", "32s", "32s", "B", "I", "I", "I", "Q", "I", "I", "I", "I")  # ENTROPY_REF_FIELDS
if struct.Struct(">" + "".join(_REF_CODES)).format != ENTROPY_REF_FIELDS.format:
    raise ImportError("protocol.codec: _REF_CODES no longer spell ENTROPY_REF_FIELDS")


class _EntryShape:
    """The byte layout of a ``PulseEntry`` whose structure (lengths, tags, chain id, source
    ids, counts) equals that of an entry decoded the general way (``_range_entry``).

    The entries of a range mostly share one: one chain, the same sources, fixed-width
    fields. Such an entry is read with one ``struct`` unpack and its structural fields
    compared with the shape's as one tuple. Every byte of the entry is covered, so an entry
    that matches is one ``_range_entry`` reads at the same offsets into the same values, with
    the same checks after (the constructors validate; the committed byte is 0 or 1); one that
    does not match is read by ``_range_entry``. Written by hand because nothing decodes our
    canonical encoding but this module; it takes about a third off what a range client
    spends decoding (docs/performance.md), and a property test holds it equal to ``_range_entry``
    on any range and any corruption of one (tests/unit/test_fast_encodings.py)."""

    __slots__ = ("_chain_id", "_expected", "_header_span", "_header_values", "_layout",
                 "_ranges", "_refs", "_structure")

    def __init__(self, header: Header, entropy: tuple[EntropyRef, ...]) -> None:
        codes: list[str] = []
        structure: list[int] = []
        expected: list[Any] = []

        def fixed(code: str, value: Any) -> None:
            structure.append(len(codes))
            expected.append(value)
            codes.append(code)

        def field(code: str) -> int:
            codes.append(code)
            return len(codes) - 1

        def text(value: str) -> None:
            encoded = value.encode("utf-8")
            fixed("I", len(encoded))
            fixed(f"{len(encoded)}s", encoded)

        def offset() -> int:
            return struct.calcsize(">" + "".join(codes))

        fixed("I", len(header.canonical()))
        header_start = offset()
        fixed(f"{len(_HEADER_TAG)}s", _HEADER_TAG)
        text(header.chain_id)
        values = [field(code) for code in ("Q", "I", "Q", "32s", "32s", "32s")]
        fixed("I", len(header.entropy_ranges))
        ranges = []
        for seq_range in header.entropy_ranges:
            fixed("I", len(seq_range.canonical()))
            fixed(f"{len(_SEQ_RANGE_TAG)}s", _SEQ_RANGE_TAG)
            text(seq_range.source_id)
            ranges.append((seq_range.source_id, field("Q"), field("Q")))
        values += [field(code) for code in ("I", "I", "64s", "32s", "32s", "32s", "32s")]
        fixed("I", len(header.app_hash))
        values += [field(f"{len(header.app_hash)}s"), field("20s"), field("32s")]
        self._header_span = (header_start, offset())
        fixed("I", len(entropy))
        refs = []
        for ref in entropy:
            fixed("I", len(ref.canonical()))
            ref_start = offset()
            fixed(f"{len(_ENTROPY_REF_TAG)}s", _ENTROPY_REF_TAG)
            text(ref.source_id)
            first = len(codes)
            codes.extend(_REF_CODES)
            refs.append((ref.source_id, first, ref_start, offset()))
        self._layout = struct.Struct(">" + "".join(codes))
        self._structure = operator.itemgetter(*structure)
        self._expected = tuple(expected)
        self._chain_id = header.chain_id
        self._header_values = operator.itemgetter(*values)
        self._ranges = tuple(ranges)
        self._refs = tuple(refs)

    def read(self, r: CanonicalReader, summaries: dict[tuple[int, ...], HealthSummary]
             ) -> tuple[Header, tuple[EntropyRef, ...]] | None:
        """The entry at ``r``'s position if it has this shape (``r`` moves past it), else
        None (``r`` stays). ``summaries``: the health summaries made so far, by field."""
        start = r.position()
        try:
            v = r.fields(self._layout)
        except CanonicalDecodeError:  # shorter than this shape: not one
            return None
        if self._structure(v) != self._expected:
            r.rewind(start)
            return None
        height, round_, time_ms, previous, last_commit, root, fresh, registered, randomness, \
            txs, evidence, validators, next_validators, app_hash, proposer, history = \
            self._header_values(v)
        header = Header(self._chain_id, height, round_, time_ms, previous, last_commit, root,
                        tuple(SeqRange(source, v[first], v[last])
                              for source, first, last in self._ranges),
                        fresh, registered, randomness, txs, evidence, validators,
                        next_validators, app_hash, proposer, history)
        header = _remember(header, r.span(start + self._header_span[0],
                                          start + self._header_span[1]))
        entropy = []
        for source, at, ref_start, ref_end in self._refs:
            seq, digest, next_digest, committed = v[at:at + 4]
            if committed > 1:
                raise CanonicalDecodeError(f"boolean byte must be 0 or 1, got {committed}")
            fields = v[at + 4:at + len(_REF_CODES)]
            health = summaries.get(fields)  # a source's summary repeats: one object each
            if health is None:
                health = summaries[fields] = HealthSummary(*fields)
            entropy.append(_remember(
                EntropyRef(source, seq, digest, health, next_digest, committed == 1),
                r.span(start + ref_start, start + ref_end)))
        return header, tuple(entropy)


class _ShapedEntries:
    """Reads a range's entries, each with the shape of a recent one where it has it
    (``_EntryShape``), else field by field (then its shape is remembered). Bounded for a
    range whose entries all differ: past ``GIVE_UP`` more misses than hits, every entry is
    read field by field."""

    SHAPES = 4  # tried most recently used first
    GIVE_UP = 16

    def __init__(self) -> None:
        self._shapes: list[_EntryShape] = []
        self._misses = 0
        self._summaries: dict[tuple[int, ...], HealthSummary] = {}

    def read(self, r: CanonicalReader) -> tuple[Header, tuple[EntropyRef, ...]]:
        if self._misses < self.GIVE_UP:
            for index, shape in enumerate(self._shapes):
                entry = shape.read(r, self._summaries)
                if entry is not None:
                    if index:
                        self._shapes.insert(0, self._shapes.pop(index))
                    self._misses = max(0, self._misses - 1)
                    return entry
            self._misses += 1
        entry = _range_entry(r)
        if self._misses < self.GIVE_UP:
            self._shapes.insert(0, _EntryShape(*entry))
            del self._shapes[self.SHAPES:]
        return entry


def decode_pulse_range(data: bytes) -> PulseRange:
    """The range of ``protocol.pulse.encode_pulse_range`` bytes; ``WireError`` on anything
    else. Decoded, not verified: ``sdk.beacon.verify_pulse_range_bytes`` checks it."""
    return guard("pulse range", lambda: _pulse_range(data))
