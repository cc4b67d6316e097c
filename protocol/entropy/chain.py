"""Chunks, the per-source hash chain and signed checkpoints (pure data and functions).

A source keeps one chain per pool (public ``entropy.raw``, private ``entropy.private``): sequence
numbers are gapless from 0 within a chain, and each chunk's digest covers the previous chunk's
digest, so one signature over the head authenticates every chunk before it.

Canonical encodings (see ``protocol.canonical``), reproducible by any implementation:

``chunk_digest = SHA-256(tag "QuStream/v1/EntropyChunk" | text source_id | bool private |
u64 seq | raw32 prev_digest | raw32 payload_digest | u32 payload_length | i64 produced_at_ms |
bool simulated | health | raw32 next_digest)``, ``payload_digest = SHA-256(payload)``,
``prev_digest`` of seq 0 is 32 zero bytes, and ``health`` (``HealthSummary.write``, also the
end of a block's ``EntropyRef``) is ``u32 rct_max_run | u32 apt_max_count | u32 windows |
u64 samples | u32 rct_cutoff | u32 apt_cutoff | u32 apt_window | u32 failures``.

``next_digest`` is the source's precommitment (``docs/precommitment.md``): the ``payload_digest``
of its next chunk in the same chain, which the source has already read and tested but not
published; 32 zero bytes when it commits to nothing (its last chunk before a clean stop). A
chunk whose ``payload_digest`` equals its predecessor's ``next_digest`` is *committed*: its
payload was fixed, and hidden, one chunk earlier. A source that lost the payload it committed to
(killed between the two) continues its chain with an uncommitted chunk, which blocks include but
never mix into the randomness.

Checkpoint message (what ML-DSA-65 signs): ``tag "QuStream/v1/EntropyCheckpoint" | text source_id
| bool private | u64 first_seq | u64 last_seq | raw32 head_digest | i64 signed_at_ms``, where
``head_digest`` is the ``chunk_digest`` of ``last_seq``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from protocol.canonical import HASH_SIZE, CanonicalWriter
from protocol.errors import InputError
from protocol.keys import Algorithm, SigningKey

DIGEST_SIZE = HASH_SIZE  # every digest of the entropy chain is a SHA-256
ZERO_DIGEST = bytes(DIGEST_SIZE)


class ChunkFormatError(InputError):
    """A chunk or checkpoint record is structurally invalid (field type, size or range)."""


U32_MAX = 0xFFFF_FFFF
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF


@dataclass(frozen=True, slots=True, order=True)
class HealthSummary:
    """The SP 800-90B continuous tests over the raw samples a chunk's bytes came from.

    ``windows`` APT windows of ``apt_window`` samples each (``samples`` in all) were tested
    with the source's cutoffs; ``rct_max_run`` is the longest repetition seen (a run carried
    in from the previous chunk counts whole), ``apt_max_count`` the highest count of a
    window's reference sample, ``failures`` the windows in which either test failed.
    ``impossible`` says which values no test run can produce; ``failing`` which summaries
    show entropy that must not be used (``protocol.block`` refuses a block carrying one).
    """

    rct_max_run: int = 0
    apt_max_count: int = 0
    windows: int = 0
    samples: int = 0
    rct_cutoff: int = 0
    apt_cutoff: int = 0
    apt_window: int = 0
    failures: int = 0

    def write(self, writer: CanonicalWriter) -> CanonicalWriter:
        """Append the canonical encoding (module doc) to ``writer``."""
        return (writer.u32(self.rct_max_run).u32(self.apt_max_count).u32(self.windows)
                .u64(self.samples).u32(self.rct_cutoff).u32(self.apt_cutoff)
                .u32(self.apt_window).u32(self.failures))

    def to_json(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in HEALTH_FIELDS}

    @classmethod
    def from_json(cls, data: Any) -> HealthSummary:
        """From ``to_json``'s dict: every field present, an integer (``ChunkFormatError``
        otherwise; ``impossible`` is the caller's to ask)."""
        if not isinstance(data, Mapping) or data.keys() != _HEALTH_KEYS:
            raise ChunkFormatError(f"a health summary has exactly the fields {HEALTH_FIELDS}")
        values = [data[name] for name in HEALTH_FIELDS]
        if not all(type(value) is int for value in values):
            raise ChunkFormatError(f"health summary fields must be integers, got {values}")
        return cls(*values)

    def impossible(self) -> str | None:
        """Why no test run produces these values (out of the encoding's range, more failing
        windows than windows, a window count above the window); None when they are possible."""
        for name in ("rct_max_run", "apt_max_count", "windows", "rct_cutoff", "apt_cutoff",
                     "apt_window", "failures"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= U32_MAX:
                return f"health {name} {value!r} is not a u32"
        if type(self.samples) is not int or not 0 <= self.samples <= U64_MAX:
            return f"health samples {self.samples!r} is not a u64"
        if self.failures > self.windows:
            return f"health says {self.failures} of {self.windows} windows failed"
        if self.apt_max_count > self.apt_window:
            return (f"health APT count {self.apt_max_count} exceeds its window of "
                    f"{self.apt_window} samples")
        return None

    def failing(self) -> str | None:
        """Why this summary does not show passing entropy, None when it does: no failing
        window, the longest run below the RCT cutoff, the highest APT count below the APT
        cutoff, at least one window tested and ``samples == windows * apt_window``."""
        if self.failures:
            return f"{self.failures} of {self.windows} tested windows failed"
        if self.rct_max_run >= self.rct_cutoff:
            return (f"RCT: a run of {self.rct_max_run} reaches the cutoff "
                    f"{self.rct_cutoff}")
        if self.apt_max_count >= self.apt_cutoff:
            return (f"APT: a count of {self.apt_max_count} reaches the cutoff "
                    f"{self.apt_cutoff}")
        if self.windows == 0:
            return "no window was tested"
        if self.samples != self.windows * self.apt_window:
            return (f"{self.samples} samples are not {self.windows} windows of "
                    f"{self.apt_window}")
        return None


HEALTH_FIELDS = tuple(f.name for f in fields(HealthSummary))
_HEALTH_KEYS = frozenset(HEALTH_FIELDS)
"""The summary's fields in encoding order; ``EntropyChunkPublished`` names them
``health_<field>``."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """One published chunk as it travels (``EntropyChunkPublished``)."""

    source_id: str
    private: bool
    seq: int
    prev_digest: bytes
    payload_digest: bytes
    chunk_digest: bytes
    payload: bytes
    produced_at_ms: int
    simulated: bool
    health: HealthSummary
    next_digest: bytes = ZERO_DIGEST  # see the module doc

    def to_record(self) -> dict[str, Any]:
        return {
            "source_id": self.source_id, "seq": self.seq, "prev_digest": self.prev_digest,
            "payload_digest": self.payload_digest, "chunk_digest": self.chunk_digest,
            "payload": self.payload, "produced_at_ms": self.produced_at_ms,
            "simulated": self.simulated, "private": self.private,
            **{f"health_{name}": getattr(self.health, name) for name in HEALTH_FIELDS},
            "next_digest": self.next_digest,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Chunk:
        """Build from a decoded ``EntropyChunkPublished``; digests are NOT checked here."""
        try:
            chunk = cls(
                str(record["source_id"]), bool(record.get("private", False)),
                int(record["seq"]), bytes(record["prev_digest"]),
                bytes(record["payload_digest"]), bytes(record["chunk_digest"]),
                bytes(record["payload"]), int(record["produced_at_ms"]),
                bool(record["simulated"]),
                HealthSummary(*(int(record.get(f"health_{name}", 0))
                                for name in HEALTH_FIELDS)),
                bytes(record.get("next_digest") or ZERO_DIGEST),  # "" in older records
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ChunkFormatError(f"malformed EntropyChunkPublished record: {exc}") from exc
        for name in ("prev_digest", "payload_digest", "chunk_digest", "next_digest"):
            if len(getattr(chunk, name)) != DIGEST_SIZE:
                raise ChunkFormatError(
                    f"chunk {chunk.source_id}#{chunk.seq}: {name} is not {DIGEST_SIZE} bytes")
        if chunk.seq < 0:
            raise ChunkFormatError(f"chunk {chunk.source_id}: negative seq {chunk.seq}")
        impossible = chunk.health.impossible()
        if impossible is not None:
            raise ChunkFormatError(f"chunk {chunk.source_id}#{chunk.seq}: {impossible}")
        return chunk


def chunk_digest(
    source_id: str, private: bool, seq: int, prev_digest: bytes, payload_digest: bytes,
    payload_length: int, produced_at_ms: int, simulated: bool, health: HealthSummary,
    next_digest: bytes = ZERO_DIGEST,
) -> bytes:
    return health.write(
        CanonicalWriter("EntropyChunk").text(source_id).boolean(private).u64(seq)
        .raw(prev_digest, DIGEST_SIZE).raw(payload_digest, DIGEST_SIZE).u32(payload_length)
        .i64(produced_at_ms).boolean(simulated)
    ).raw(next_digest, DIGEST_SIZE).digest()


def expected_digest(chunk: Chunk) -> bytes:
    """The chunk digest recomputed from the chunk's fields and payload digest."""
    return chunk_digest(chunk.source_id, chunk.private, chunk.seq, chunk.prev_digest,
                        chunk.payload_digest, len(chunk.payload), chunk.produced_at_ms,
                        chunk.simulated, chunk.health, chunk.next_digest)


def payload_sha256(payload: bytes | memoryview) -> bytes:
    """``payload_digest`` of a chunk (hashlib releases the GIL while it hashes a large
    buffer, so other threads run meanwhile)."""
    return hashlib.sha256(memoryview(payload)).digest()


def commits_to(previous: Chunk, chunk: Chunk) -> bool:
    """Whether ``chunk`` keeps the precommitment of ``previous``, its predecessor."""
    return previous.next_digest != ZERO_DIGEST and previous.next_digest == chunk.payload_digest


@dataclass(frozen=True, slots=True)
class ChainHead:
    """Where a chain stands: the next sequence number and the digest of the last chunk."""

    next_seq: int = 0
    digest: bytes = ZERO_DIGEST

    @property
    def last_seq(self) -> int:
        """Sequence of the last chunk, -1 for an empty chain."""
        return self.next_seq - 1


def extend(
    head: ChainHead, *, source_id: str, private: bool, payload: bytes, produced_at_ms: int,
    simulated: bool, health: HealthSummary, payload_digest: bytes | None = None,
    next_digest: bytes = ZERO_DIGEST,
) -> tuple[Chunk, ChainHead]:
    """Append one payload to the chain: returns the chunk and the new head.

    ``payload_digest``: ``SHA-256(payload)`` when the caller already has it (the ingest
    service hashes on its reader thread, next to the health tests); computed here otherwise.
    ``next_digest``: the payload digest of the chunk the source will append next (module doc).
    """
    if payload_digest is None:
        payload_digest = payload_sha256(payload)
    elif len(payload_digest) != DIGEST_SIZE:
        raise ChunkFormatError(f"payload digest of {len(payload_digest)} bytes, not "
                               f"{DIGEST_SIZE}")
    if len(next_digest) != DIGEST_SIZE:
        raise ChunkFormatError(f"next digest of {len(next_digest)} bytes, not {DIGEST_SIZE}")
    digest = chunk_digest(source_id, private, head.next_seq, head.digest, payload_digest,
                          len(payload), produced_at_ms, simulated, health, next_digest)
    chunk = Chunk(source_id, private, head.next_seq, head.digest, payload_digest, digest,
                  payload, produced_at_ms, simulated, health, next_digest)
    return chunk, ChainHead(head.next_seq + 1, digest)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signature over a chain head (``EntropyCheckpointSigned``)."""

    source_id: str
    private: bool
    first_seq: int
    last_seq: int
    head_digest: bytes
    signed_at_ms: int
    algorithm: str
    signature: bytes

    def message(self) -> bytes:
        return checkpoint_message(self.source_id, self.private, self.first_seq, self.last_seq,
                                  self.head_digest, self.signed_at_ms)

    def to_record(self) -> dict[str, Any]:
        return {
            "source_id": self.source_id, "private": self.private, "first_seq": self.first_seq,
            "last_seq": self.last_seq, "head_digest": self.head_digest,
            "signed_at_ms": self.signed_at_ms, "algorithm": self.algorithm,
            "signature": self.signature,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Checkpoint:
        try:
            checkpoint = cls(
                str(record["source_id"]), bool(record.get("private", False)),
                int(record["first_seq"]), int(record["last_seq"]), bytes(record["head_digest"]),
                int(record["signed_at_ms"]), str(record["algorithm"]),
                bytes(record["signature"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ChunkFormatError(f"malformed EntropyCheckpointSigned record: {exc}") from exc
        if len(checkpoint.head_digest) != DIGEST_SIZE:
            raise ChunkFormatError(
                f"checkpoint {checkpoint.source_id}: head_digest is not {DIGEST_SIZE} bytes")
        if not 0 <= checkpoint.first_seq <= checkpoint.last_seq:
            raise ChunkFormatError(
                f"checkpoint {checkpoint.source_id}: bad range "
                f"{checkpoint.first_seq}..{checkpoint.last_seq}")
        return checkpoint


def checkpoint_message(
    source_id: str, private: bool, first_seq: int, last_seq: int, head_digest: bytes,
    signed_at_ms: int,
) -> bytes:
    return (
        CanonicalWriter("EntropyCheckpoint").text(source_id).boolean(private).u64(first_seq)
        .u64(last_seq).raw(head_digest, DIGEST_SIZE).i64(signed_at_ms).finish()
    )


def sign_checkpoint(
    key: SigningKey, *, source_id: str, private: bool, first_seq: int, head: ChainHead,
    signed_at_ms: int,
) -> Checkpoint:
    """Sign ``head`` as covering ``first_seq .. head.last_seq``."""
    if not 0 <= first_seq <= head.last_seq:
        raise ChunkFormatError(
            f"checkpoint range {first_seq}..{head.last_seq} of {source_id} is empty or negative")
    message = checkpoint_message(source_id, private, first_seq, head.last_seq, head.digest,
                                 signed_at_ms)
    return Checkpoint(source_id, private, first_seq, head.last_seq, head.digest, signed_at_ms,
                      key.algorithm.value, key.sign(message))


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    """Sign at least every ``every_chunks`` chunks or ``every_ms`` milliseconds."""

    every_chunks: int = 64
    every_ms: int = 1000

    def __post_init__(self) -> None:
        if self.every_chunks < 1 or self.every_ms < 1:
            raise ChunkFormatError(
                f"checkpoint policy needs positive values, got every_chunks="
                f"{self.every_chunks} every_ms={self.every_ms}")

    def due(self, chunks_since: int, ms_since: int) -> bool:
        return chunks_since >= self.every_chunks or (chunks_since > 0
                                                     and ms_since >= self.every_ms)


SUPPORTED_ALGORITHMS = frozenset(a.value for a in Algorithm)
