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
  verified head to ``last_seq`` links to the next (``prev_digest``), has the right
  ``payload_digest`` and ``chunk_digest``. Chunks are returned once, in sequence order.
- Unsigned chunks are cheap to forge and anyone who can write the topic can link one to a
  source's public head. So until a checkpoint arrives, chunks that compete for one sequence
  number are *all* held (a tree of branches, at most ``MAX_COMPETING`` per sequence number,
  first come first kept): the signed checkpoint names the head of the branch its source built,
  that branch is verified and every contradicting candidate is discarded and handed to the
  caller (``take_discarded``) to be dead-lettered as ``losing_branch``. One forged chunk can
  therefore never lock a source out; a writer who wins the race with ``MAX_COMPETING`` forged
  chunks for a sequence number can still stall that source (and is visible in the DLQ).
- Every chain (source id, pool) starts either at seq 0, at a trusted ``ChainAnchor`` given to the
  constructor (resume), or — with ``allow_mid_stream=True`` (default) — at the first chunk seen,
  which suits a consumer joining a topic whose early data expired: the signature over a later head
  still authenticates everything from that first chunk on.
- Rejections raise a subclass of ``EntropyRejectedError`` and leave the state unchanged, so the
  caller can dead-letter the message and continue. ``code`` is a short stable reason name.
- Memory is bounded: at most ``max_pending`` unverified chunks per chain and
  ``MAX_COMPETING`` per sequence number (``PendingLimitError`` beyond them).
- ``set_registry`` follows a registry that changes (the ledger's, height by height): a source
  that leaves it is forgotten at once.
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
MAX_COMPETING = 4  # unverified chunks kept per (chain, seq): the genuine one and forgeries
MAX_DISCARDED = 4096  # discarded chunks kept for ``take_discarded`` (a reader may never ask)
ChainKey = tuple[str, bool]  # (source id, private pool)


class LosingBranchError(EntropyRejectedError):
    """A chunk that was held as a candidate but is not on the chain its source signed: a
    checkpoint decided for another chunk at its sequence number (a forgery, or a branch that
    descends from one). Handed out by ``take_discarded`` so the caller can dead-letter it."""

    code = "losing_branch"


@dataclass(frozen=True, slots=True)
class ChainAnchor:
    """A trusted point to resume a chain from: the last verified seq and its chunk digest."""

    source_id: str
    private: bool
    last_seq: int
    digest: bytes


@dataclass(slots=True)
class _Chain:
    verified_seq: int  # last verified seq, -1 for none
    head: bytes | None  # digest of chunk ``verified_seq``; None: mid-stream, not anchored yet
    # Unverified chunks by seq, first come first kept, at most MAX_COMPETING per seq. Each one
    # links to the verified head or to a candidate of the previous seq (an unanchored chain
    # also keeps roots): a tree of competing branches until a signed checkpoint picks one.
    candidates: dict[int, list[Chunk]] = field(default_factory=dict)
    by_digest: dict[bytes, Chunk] = field(default_factory=dict)
    # Digests of recently verified chunks, so a replay with different bytes is told apart from
    # a harmless redelivery; bounded, oldest first.
    recent: dict[int, bytes] = field(default_factory=dict)

    @property
    def anchored(self) -> bool:
        return self.head is not None


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
        self._discarded: list[Chunk] = []
        for anchor in anchors:
            self._chains[(anchor.source_id, anchor.private)] = _Chain(anchor.last_seq,
                                                                      anchor.digest)

    def set_registry(self, registry: Mapping[str, SourceRegistryEntry]) -> None:
        """Follow a changed registry: chains of sources no longer registered are forgotten
        (their candidates are discarded), new sources start like unseen ones."""
        self._registry = registry
        for key in [k for k in self._chains if k[0] not in registry]:
            chain = self._chains.pop(key)
            self._discarded.extend(c for seq in sorted(chain.candidates)
                                   for c in chain.candidates[seq])
        del self._discarded[:-MAX_DISCARDED]

    def verified_seq(self, source_id: str, private: bool = False) -> int:
        """Last verified sequence number of a chain, -1 when none."""
        chain = self._chains.get((source_id, private))
        return -1 if chain is None else chain.verified_seq

    def anchor(self, source_id: str, private: bool = False) -> ChainAnchor | None:
        """The chain's last verified point, to persist and pass back after a restart."""
        chain = self._chains.get((source_id, private))
        if chain is None or chain.verified_seq < 0 or chain.head is None:
            return None
        return ChainAnchor(source_id, private, chain.verified_seq, chain.head)

    def pending_count(self, source_id: str, private: bool = False) -> int:
        """Unverified chunks held for a chain (every competing branch counted)."""
        chain = self._chains.get((source_id, private))
        return 0 if chain is None else len(chain.by_digest)

    def take_discarded(self) -> tuple[Chunk, ...]:
        """Chunks dropped since the last call because a checkpoint decided against them (or
        their source left the registry), oldest first: ``LosingBranchError`` material. Only
        the newest ``MAX_DISCARDED`` are kept for a caller that never asks."""
        discarded, self._discarded = tuple(self._discarded), []
        return discarded

    def _entry(self, source_id: str, what: str) -> SourceRegistryEntry:
        entry = self._registry.get(source_id)
        if entry is None:
            raise UnknownSourceError(f"{what} from unregistered source {source_id!r}")
        return entry

    def _chain(self, key: ChainKey) -> _Chain:
        chain = self._chains.get(key)
        if chain is None:
            chain = _Chain(-1, None if self._allow_mid_stream else bytes(32))
            self._chains[key] = chain
        return chain

    def accept_chunk(self, chunk: Chunk) -> tuple[Chunk, ...]:
        """Check one chunk's digests and link, and hold it until a checkpoint covers it.

        Returns the chunks that became verified (always empty today: checkpoints follow their
        chunks; kept as a tuple so callers treat both inputs alike). Raises an
        ``EntropyRejectedError`` subclass for unknown source, simulated data not allowed,
        digest mismatch, duplicate, conflicting replay of a verified chunk, gap, or too many
        pending or competing chunks. A chunk that competes with an unverified one at its
        sequence number is kept beside it: only a signed checkpoint decides between them.
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
        if chunk.seq <= chain.verified_seq:
            known = chain.recent.get(chunk.seq)
            if known is not None and known != chunk.chunk_digest:
                raise ConflictingChunkError(
                    f"{name} reuses a verified sequence number with different bytes")
            raise DuplicateChunkError(f"{name} was already verified (up to "
                                      f"#{chain.verified_seq})")
        if chunk.chunk_digest in chain.by_digest:
            raise DuplicateChunkError(f"{name} was already received")
        if not self._links(chain, chunk):
            parents = chain.candidates.get(chunk.seq - 1)
            if parents or (chain.anchored and chunk.seq == chain.verified_seq + 1):
                raise DigestMismatchError(f"{name}: prev_digest does not link to any received "
                                          f"#{chunk.seq - 1}")
            raise SequenceGapError(f"{name}: #{chunk.seq - 1} was never received (verified up "
                                   f"to #{chain.verified_seq})")
        competing = chain.candidates.get(chunk.seq, [])
        if len(competing) >= MAX_COMPETING:
            raise PendingLimitError(f"{name}: {len(competing)} competing chunks already wait "
                                    "for a checkpoint at this sequence number")
        if len(chain.by_digest) >= self._max_pending:
            raise PendingLimitError(f"{name}: {len(chain.by_digest)} chunks already await a "
                                    "checkpoint")
        chain.candidates[chunk.seq] = [*competing, chunk]
        chain.by_digest[chunk.chunk_digest] = chunk
        return ()

    @staticmethod
    def _links(chain: _Chain, chunk: Chunk) -> bool:
        """Whether ``chunk`` continues the verified head or a held candidate (an unanchored
        chain, joined mid-stream, also takes any chunk as the root of a branch)."""
        if chain.anchored and chunk.seq == chain.verified_seq + 1:
            return chunk.prev_digest == chain.head
        parent = chain.by_digest.get(chunk.prev_digest)
        if parent is not None:
            return parent.seq == chunk.seq - 1
        return not chain.anchored

    def accept_checkpoint(self, checkpoint: Checkpoint) -> tuple[Chunk, ...]:
        """Verify a checkpoint and return the chunks it verified, in sequence order.

        The checkpoint names the head of the one branch its source signed: that branch, from
        the verified head (or, joined mid-stream, from its first received chunk) up to
        ``last_seq``, becomes verified; every other candidate at or below ``last_seq``, and
        every candidate above it that does not descend from the new head, is discarded
        (``take_discarded``). A checkpoint for a range already verified returns ``()`` (a
        redelivery). Raises ``UnknownSourceError``, ``BadSignatureError``,
        ``CheckpointRangeError`` (it names chunks not received yet, or starts after pending
        chunks it would leave uncovered) or ``DigestMismatchError`` (no received branch has
        its head).
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
        at_head = chain.candidates.get(checkpoint.last_seq)
        if not at_head:
            raise CheckpointRangeError(f"{name} covers chunks not received (highest received "
                                       f"#{max(chain.candidates, default=chain.verified_seq)})")
        head = next((c for c in at_head if c.chunk_digest == checkpoint.head_digest), None)
        if head is None:
            raise DigestMismatchError(f"{name}: head digest differs from every received chain")
        branch = [head]
        while branch[-1].seq > chain.verified_seq + 1:
            parent = chain.by_digest.get(branch[-1].prev_digest)
            if parent is None:
                break  # the root of a branch of an unanchored chain
            branch.append(parent)
        branch.reverse()
        if chain.anchored and checkpoint.first_seq > branch[0].seq:
            raise CheckpointRangeError(f"{name} leaves pending chunk #{branch[0].seq} uncovered")
        self._settle(chain, branch, checkpoint.last_seq, checkpoint.head_digest)
        return tuple(branch)

    def _settle(self, chain: _Chain, branch: list[Chunk], last_seq: int, head: bytes) -> None:
        """Make ``branch`` verified and drop every candidate that contradicts it."""
        on_branch = {c.chunk_digest for c in branch}
        survivors: dict[int, list[Chunk]] = {}
        linked = {head}
        for seq in sorted(chain.candidates):
            for chunk in chain.candidates[seq]:
                if chunk.chunk_digest in on_branch:
                    continue
                if seq > last_seq and chunk.prev_digest in linked:
                    survivors.setdefault(seq, []).append(chunk)
                    linked.add(chunk.chunk_digest)
                else:
                    self._discarded.append(chunk)
        del self._discarded[:-MAX_DISCARDED]
        chain.candidates = survivors
        chain.by_digest = {c.chunk_digest: c for seq in survivors for c in survivors[seq]}
        for chunk in branch:
            chain.recent[chunk.seq] = chunk.chunk_digest
        while len(chain.recent) > RECENT_DIGESTS:
            del chain.recent[next(iter(chain.recent))]
        chain.verified_seq = last_seq
        chain.head = head
