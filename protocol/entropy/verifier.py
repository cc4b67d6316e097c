"""The entropy chain verifier: which chunks a consumer may use.

Used by block_builder, the SDK and audit. It holds no I/O: feed it the decoded chunks and
checkpoints of one topic in partition order, and it hands back chunks only once they are
authentic::

    verifier = ChainVerifier(SourceRegistry.load("sources.json"))
    for record in decoded_records:           # EntropyChunkPublished / EntropyCheckpointSigned
        try:
            if is_chunk:
                verifier.accept_chunk(Chunk.from_record(record))       # -> () (pending)
            else:
                for chunk in verifier.accept_checkpoint(Checkpoint.from_record(record)):
                    use(chunk)                                         # verified, in seq order
        except EntropyRejectedError as exc:
            dead_letter(message, reason=str(exc), error_type=exc.code)

Contract:

- A chunk is *verified* when a checkpoint signed by its source's registered key covers it: the
  checkpoint's ``head_digest`` equals the chain digest at ``last_seq`` and every chunk from the
  first pending one to ``last_seq`` links to the next (``prev_digest``), has the right
  ``payload_digest`` and ``chunk_digest``. Chunks are returned once, in sequence order.
- Every chain (source id, pool) starts either at seq 0, at a trusted ``ChainAnchor`` given to the
  constructor (resume), or — with ``allow_mid_stream=True`` (default) — at the first chunk seen,
  which suits a consumer joining a topic whose early data expired: the signature over a later head
  still authenticates everything from that first chunk on.
- Rejections raise a subclass of ``EntropyRejectedError`` and leave the state unchanged, so the
  caller can dead-letter the message and continue. ``code`` is a short stable reason name.
- Memory is bounded: at most ``max_pending`` unverified chunks per chain
  (``PendingLimitError`` beyond it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from protocol.entropy.chain import Checkpoint, Chunk, expected_digest
from protocol.entropy.registry import SourceRegistryEntry
from protocol.errors import InputError


class EntropyRejectedError(InputError):
    """A chunk or checkpoint was rejected; the message names the source, seq and reason."""

    code = "rejected"


class UnknownSourceError(EntropyRejectedError):
    code = "unknown_source"


class BadSignatureError(EntropyRejectedError):
    code = "bad_signature"


class SequenceGapError(EntropyRejectedError):
    code = "sequence_gap"


class DuplicateChunkError(EntropyRejectedError):
    """The same chunk again (redelivery or replay of identical bytes): harmless, not used twice."""

    code = "duplicate"


class ConflictingChunkError(EntropyRejectedError):
    """A chunk reuses a sequence number with different bytes: a forgery or a broken source."""

    code = "conflicting_replay"


class DigestMismatchError(EntropyRejectedError):
    """A payload digest, chunk digest, chain link or checkpoint head does not match."""

    code = "digest_mismatch"


class CheckpointRangeError(EntropyRejectedError):
    """A checkpoint's range names chunks not received, or leaves pending chunks uncovered."""

    code = "checkpoint_range"


class SimulatedDataError(EntropyRejectedError):
    code = "simulated_not_allowed"


class PendingLimitError(EntropyRejectedError):
    code = "pending_limit"


RECENT_DIGESTS = 4096
ChainKey = tuple[str, bool]  # (source id, private pool)


@dataclass(frozen=True, slots=True)
class ChainAnchor:
    """A trusted point to resume a chain from: the last verified seq and its chunk digest."""

    source_id: str
    private: bool
    last_seq: int
    digest: bytes


@dataclass(slots=True)
class _Chain:
    next_seq: int | None  # None: mid-stream start allowed, not seen anything yet
    head: bytes | None  # digest of chunk next_seq - 1 (None: unknown, mid-stream start)
    verified_seq: int  # last verified seq, -1 for none
    pending: list[Chunk] = field(default_factory=list)
    # Digests of recently verified chunks, so a replay with different bytes is told apart from
    # a harmless redelivery; bounded, oldest first.
    recent: dict[int, bytes] = field(default_factory=dict)


class ChainVerifier:
    """Verifies the hash chains and checkpoints of the registered sources (see module doc).

    ``allow_simulated``: accept simulated chunks from sources whose registry entry says
    ``simulated`` (default True); never from a source registered as real hardware.
    """

    def __init__(
        self,
        registry: Mapping[str, SourceRegistryEntry],
        *,
        anchors: tuple[ChainAnchor, ...] = (),
        allow_mid_stream: bool = True,
        allow_simulated: bool = True,
        max_pending: int = 4096,
    ) -> None:
        self._registry = registry
        self._allow_mid_stream = allow_mid_stream
        self._allow_simulated = allow_simulated
        self._max_pending = max_pending
        self._chains: dict[ChainKey, _Chain] = {}
        for anchor in anchors:
            self._chains[(anchor.source_id, anchor.private)] = _Chain(
                anchor.last_seq + 1, anchor.digest, anchor.last_seq)

    def verified_seq(self, source_id: str, private: bool = False) -> int:
        """Last verified sequence number of a chain, -1 when none."""
        chain = self._chains.get((source_id, private))
        return -1 if chain is None else chain.verified_seq

    def anchor(self, source_id: str, private: bool = False) -> ChainAnchor | None:
        """The chain's last verified point, to persist and pass back after a restart."""
        chain = self._chains.get((source_id, private))
        if chain is None or chain.verified_seq < 0:
            return None
        last = chain.pending[0].prev_digest if chain.pending else chain.head
        assert last is not None
        return ChainAnchor(source_id, private, chain.verified_seq, last)

    def pending_count(self, source_id: str, private: bool = False) -> int:
        chain = self._chains.get((source_id, private))
        return 0 if chain is None else len(chain.pending)

    def _entry(self, source_id: str, what: str) -> SourceRegistryEntry:
        entry = self._registry.get(source_id)
        if entry is None:
            raise UnknownSourceError(f"{what} from unregistered source {source_id!r}")
        return entry

    def _chain(self, key: ChainKey) -> _Chain:
        chain = self._chains.get(key)
        if chain is None:
            chain = _Chain(None if self._allow_mid_stream else 0,
                           None if self._allow_mid_stream else bytes(32), -1)
            self._chains[key] = chain
        return chain

    def accept_chunk(self, chunk: Chunk) -> tuple[Chunk, ...]:
        """Check one chunk's digests and link, and hold it until a checkpoint covers it.

        Returns the chunks that became verified (always empty today: checkpoints follow their
        chunks; kept as a tuple so callers treat both inputs alike). Raises an
        ``EntropyRejectedError`` subclass for unknown source, simulated data not allowed,
        digest mismatch, duplicate, conflicting replay, gap, or too many pending chunks.
        """
        name = f"chunk {chunk.source_id}{'/private' if chunk.private else ''}#{chunk.seq}"
        entry = self._entry(chunk.source_id, name)
        if chunk.simulated and not (self._allow_simulated and entry.simulated):
            raise SimulatedDataError(
                f"{name} is simulated but the source is registered as hardware")
        if hashlib.sha256(chunk.payload).digest() != chunk.payload_digest:
            raise DigestMismatchError(f"{name}: payload does not match payload_digest")
        if expected_digest(chunk) != chunk.chunk_digest:
            raise DigestMismatchError(f"{name}: chunk_digest does not match its header")
        chain = self._chain((chunk.source_id, chunk.private))
        if chain.next_seq is None:
            chain.next_seq, chain.head = chunk.seq, chunk.prev_digest
        if chunk.seq < chain.next_seq:
            known = self._known_digest(chain, chunk.seq)
            if known is not None and known != chunk.chunk_digest:
                raise ConflictingChunkError(
                    f"{name} reuses a sequence number with different bytes")
            raise DuplicateChunkError(f"{name} was already received (expected "
                                      f"#{chain.next_seq})")
        if chunk.seq > chain.next_seq:
            raise SequenceGapError(f"{name}: expected #{chain.next_seq}, "
                                   f"{chunk.seq - chain.next_seq} chunk(s) missing")
        if chunk.prev_digest != chain.head:
            raise DigestMismatchError(f"{name}: prev_digest does not link to #{chunk.seq - 1}")
        if len(chain.pending) >= self._max_pending:
            raise PendingLimitError(f"{name}: {len(chain.pending)} chunks already await a "
                                    "checkpoint")
        chain.pending.append(chunk)
        chain.next_seq = chunk.seq + 1
        chain.head = chunk.chunk_digest
        return ()

    @staticmethod
    def _known_digest(chain: _Chain, seq: int) -> bytes | None:
        if chain.pending and chain.pending[0].seq <= seq:
            return chain.pending[seq - chain.pending[0].seq].chunk_digest
        return chain.recent.get(seq)  # None: too old, only the sequence number is remembered

    def accept_checkpoint(self, checkpoint: Checkpoint) -> tuple[Chunk, ...]:
        """Verify a checkpoint and return the chunks it verified, in sequence order.

        A checkpoint for a range already verified returns ``()`` when its head matches (a
        redelivery). Raises ``UnknownSourceError``, ``BadSignatureError``,
        ``CheckpointRangeError`` (it names chunks not received yet, or starts after pending
        chunks it would leave uncovered) or ``DigestMismatchError`` (head differs from the
        chain).
        """
        name = (f"checkpoint {checkpoint.source_id}{'/private' if checkpoint.private else ''}"
                f"#{checkpoint.first_seq}..{checkpoint.last_seq}")
        entry = self._entry(checkpoint.source_id, name)
        if checkpoint.algorithm != entry.public_key.algorithm.value:
            raise BadSignatureError(f"{name}: algorithm {checkpoint.algorithm} is not the "
                                    f"registered {entry.public_key.algorithm.value}")
        if not entry.public_key.verify(checkpoint.message(), checkpoint.signature):
            raise BadSignatureError(f"{name}: signature does not verify with the registered key")
        chain = self._chain((checkpoint.source_id, checkpoint.private))
        if checkpoint.last_seq <= chain.verified_seq:
            return ()
        if chain.next_seq is None or checkpoint.last_seq >= chain.next_seq:
            raise CheckpointRangeError(f"{name} covers chunks not received (next expected "
                                       f"#{chain.next_seq})")
        first_pending = chain.pending[0].seq
        if checkpoint.first_seq > first_pending and chain.verified_seq >= 0:
            raise CheckpointRangeError(f"{name} leaves pending chunk #{first_pending} uncovered")
        count = checkpoint.last_seq - first_pending + 1
        if chain.pending[count - 1].chunk_digest != checkpoint.head_digest:
            raise DigestMismatchError(f"{name}: head digest differs from the received chain")
        verified = tuple(chain.pending[:count])
        del chain.pending[:count]
        for chunk in verified:
            chain.recent[chunk.seq] = chunk.chunk_digest
        while len(chain.recent) > RECENT_DIGESTS:
            del chain.recent[next(iter(chain.recent))]
        chain.verified_seq = checkpoint.last_seq
        return verified
