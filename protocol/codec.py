"""Strict canonical decoders of the chain's data: votes, evidence, commit certificates, blocks.

They mirror the writers in ``protocol`` field by field and reject anything the writers could not
have produced (``CanonicalReader`` is strict), so one value has one encoding. Every failure is a
``WireError`` naming what was malformed; consumers dead-letter it. The Avro records that carry
these bytes on the topics are in ``streams.chain_wire``.
"""

from __future__ import annotations

import functools
import struct
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
from protocol.canonical import CanonicalDecodeError, CanonicalReader
from protocol.commit import CommitCertificate, CommitFlag, CommitSig
from protocol.entropy.chain import HealthSummary
from protocol.errors import InputError
from protocol.evidence import DuplicateVoteEvidence
from protocol.keys import Algorithm, KeyError_, PublicKey
from protocol.messages import MessageError, Vote, VoteType
from protocol.pulse import PulseRange
from protocol.validators import Validator, ValidatorSet, ValidatorSetError

_T = TypeVar("_T")
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


def _commit_sig(data: bytes) -> CommitSig:
    r = CanonicalReader(data, "CommitSig")
    flag = CommitFlag(r.u8())
    address = r.raw(20)
    signature = r.bytes()
    r.done()
    return CommitSig(flag, address, signature)


@functools.lru_cache(maxsize=8)
def _commit(data: bytes) -> CommitCertificate:
    # Memoized by bytes: a certificate arrives twice, in its BlockFinalized record and again as
    # the next block's ``last_commit``. The certificate is immutable, so sharing it is safe.
    r = CanonicalReader(data, "CommitCertificate")
    height, round, block_hash = r.u64(), r.u32(), r.raw(32)
    signatures = r.sequence(lambda x: _commit_sig(x.nested()), MAX_ITEMS)
    r.done()
    return _remember(CommitCertificate(height, round, block_hash, signatures), data)


def _remember(value: _T, data: bytes) -> _T:
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


def _entropy_ref(data: bytes) -> EntropyRef:
    r = CanonicalReader(data, "EntropyRef")
    source_id = r.text()
    seq, digest, next_digest, committed, *health = r.fields(ENTROPY_REF_FIELDS)
    r.done()
    if committed > 1:
        raise CanonicalDecodeError(f"boolean byte must be 0 or 1, got {committed}")
    return EntropyRef(source_id, seq, digest, HealthSummary(*health), next_digest,
                      committed == 1)


def _seq_range(data: bytes) -> SeqRange:
    r = CanonicalReader(data, "SeqRange")
    source_id = r.text()
    first, last = r.fields(_SEQ_RANGE_FIELDS)
    r.done()
    return SeqRange(source_id, first, last)


def _header(data: bytes) -> Header:
    r = CanonicalReader(data, "BlockHeader")
    chain_id = r.text()
    height, round_, time_ms, previous, last_commit, root = r.fields(_HEADER_LEAD)
    ranges = r.sequence(lambda x: _seq_range(x.nested()), MAX_ITEMS)
    fresh, registered, randomness, txs, evidence, validators, next_validators = r.fields(
        _HEADER_MIDDLE)
    app_hash = r.bytes()
    proposer, history = r.fields(_HEADER_TAIL)
    r.done()
    header = Header(chain_id, height, round_, time_ms, previous, last_commit,
                    root, ranges, fresh, registered, randomness, txs, evidence,
                    validators, next_validators, app_hash, proposer, history)
    return _remember(header, data)


def _body(data: bytes) -> Body:
    r = CanonicalReader(data, "BlockBody")
    body = Body(
        entropy=r.sequence(lambda x: _entropy_ref(x.nested()), MAX_ITEMS),
        txs=r.sequence(lambda x: x.bytes(), MAX_ITEMS),
        evidence=r.sequence(lambda x: _evidence(x.nested()), MAX_ITEMS),
        last_commit=r.optional(lambda x: _commit(x.nested())),
    )
    r.done()
    return body


def _block(data: bytes) -> Block:
    r = CanonicalReader(data, "Block")
    header, body = _header(r.nested()), _body(r.nested())
    r.done()
    block = Block(header, body)
    if block.canonical() != data:  # belt and braces: one block, one encoding
        raise WireError("block bytes are not the canonical encoding of their content")
    return block


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


def _pulse_range(data: bytes) -> PulseRange:
    r = CanonicalReader(data, "PulseRange")
    chain_id = r.text()
    previous = r.optional(lambda x: _header(x.nested()))
    commit = _commit(r.nested())
    pulses = r.sequence(lambda x: (_header(x.nested()), x.sequence(
        lambda y: _entropy_ref(y.nested()), MAX_ITEMS)), MAX_ITEMS)
    r.done()
    return PulseRange(chain_id, previous, commit, pulses)


def decode_pulse_range(data: bytes) -> PulseRange:
    """The range of ``protocol.pulse.encode_pulse_range`` bytes; ``WireError`` on anything
    else. Decoded, not verified: ``sdk.beacon.verify_pulse_range_bytes`` checks it."""
    return guard("pulse range", lambda: _pulse_range(data))
