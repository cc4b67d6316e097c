"""The verified entropy pool a node keeps from ``entropy.raw`` (implements ``VerifiedPool``).

Records of ``entropy.raw`` go through ``ChainVerifier`` (registered key, hash chain, signed
checkpoint); a chunk enters the pool only when a verified checkpoint covers it. Rejections are
returned to the caller (the node dead-letters them to ``dlq.entropy``). The pool remembers, per
chunk, the height the node was at and the local monotonic time when it saw the chunk verified.

Two views, because proposer and validators see the topic at slightly different moments and the
block rules must not turn that skew into rejected proposals:

- ``proposer_view(settle_ms)``: the chunks verified at least ``settle_ms`` ago here. The
  proposer includes every such chunk (up to the per-source cap), so a validator is very likely
  to hold each included chunk already (the node also waits for missing ones before validating,
  see ``missing``).
- ``validator_view(settle_ms)``: ``age_in_heights`` answers for every verified chunk (so a
  just-verified chunk in a proposal is accepted), while ``verified_after`` and
  ``healthy_sources`` (the "must include" side of the rules: the age bound and the two-source
  rule) only count chunks verified at least ``settle_ms`` ago. With the validator's settle time
  above the proposer's by more than the topic's delivery skew, a chunk a validator requires
  was settled at the proposer too.

Chunks at or below the chain's last included seq are dropped on ``advance`` (they can never be
included again), so memory is bounded by what arrives between blocks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from protocol.block import EntropyRef
from protocol.chain import ChainTip
from protocol.entropy.chain import Checkpoint, Chunk
from protocol.entropy.registry import SourceRegistryEntry
from protocol.entropy.verifier import ChainVerifier, EntropyRejectedError


@dataclass(frozen=True, slots=True)
class PooledChunk:
    ref: EntropyRef
    verified_height: int
    verified_at: float  # local monotonic seconds
    size: int


class EntropyPool:
    """Per source, verified chunks not yet included in a block, in seq order."""

    def __init__(
        self,
        registry: Mapping[str, SourceRegistryEntry],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = dict(registry)
        self._verifier = ChainVerifier(self._registry)
        self._chunks: dict[str, dict[int, PooledChunk]] = {s: {} for s in self._registry}
        self._last_included: dict[str, int] = {}
        self._clock = clock
        self.current_height = 1
        self.verified_chunks = 0
        self.rejected: dict[str, int] = {}

    # -- feeding

    def accept_chunk(self, chunk: Chunk) -> None:
        """Raises ``EntropyRejectedError`` (the caller dead-letters the record)."""
        if chunk.private:
            raise EntropyRejectedError(f"private chunk {chunk.source_id}#{chunk.seq} on the "
                                       "public topic")
        self._verifier.accept_chunk(chunk)

    def accept_checkpoint(self, checkpoint: Checkpoint) -> int:
        """Verify a checkpoint; returns how many chunks entered the pool."""
        verified = self._verifier.accept_checkpoint(checkpoint)
        now = self._clock()
        floor = self._last_included.get(checkpoint.source_id, -1)
        added = 0
        for chunk in verified:
            if chunk.seq <= floor:
                continue
            # The block names a chunk by its payload digest (see core/block.py EntropyRef).
            ref = EntropyRef(chunk.source_id, chunk.seq, chunk.payload_digest)
            self._chunks[chunk.source_id][chunk.seq] = PooledChunk(
                ref, self.current_height, now, len(chunk.payload))
            added += 1
        self.verified_chunks += added
        return added

    def count_rejection(self, code: str) -> None:
        self.rejected[code] = self.rejected.get(code, 0) + 1

    def advance(self, tip: ChainTip) -> None:
        """The chain moved to ``tip``: forget included chunks, count heights from here."""
        self.current_height = tip.height
        for source, last in tip.last_seq:
            self._last_included[source] = last
            chunks = self._chunks.get(source)
            if chunks:
                for seq in [s for s in chunks if s <= last]:
                    del chunks[seq]

    # -- queries

    def registered_sources(self) -> tuple[str, ...]:
        return tuple(sorted(self._registry))

    def known(self, ref: EntropyRef) -> bool:
        pooled = self._chunks.get(ref.source_id, {}).get(ref.seq)
        return pooled is not None and pooled.ref == ref

    def missing(self, refs: tuple[EntropyRef, ...]) -> tuple[EntropyRef, ...]:
        """Refs of a proposal this node has not seen verified (yet)."""
        return tuple(ref for ref in refs if not self.known(ref))

    def chunk_size(self, ref: EntropyRef) -> int:
        pooled = self._chunks.get(ref.source_id, {}).get(ref.seq)
        return 0 if pooled is None else pooled.size

    def pending(self) -> dict[str, int]:
        return {source: len(chunks) for source, chunks in sorted(self._chunks.items())}

    def _settled(self, source: str, seq: int, settle_ms: int) -> tuple[EntropyRef, ...]:
        cutoff = self._clock() - settle_ms / 1000
        out: list[EntropyRef] = []
        chunks = self._chunks.get(source, {})
        for next_seq in sorted(s for s in chunks if s > seq):
            pooled = chunks[next_seq]
            if pooled.verified_at > cutoff or (out and out[-1].seq + 1 != next_seq):
                break
            if not out and next_seq != seq + 1:
                break  # must continue the chain right after ``seq``
            out.append(pooled.ref)
        return tuple(out)

    def _age(self, ref: EntropyRef) -> int | None:
        pooled = self._chunks.get(ref.source_id, {}).get(ref.seq)
        if pooled is None or pooled.ref != ref:
            return None
        return self.current_height - pooled.verified_height

    def proposer_view(self, settle_ms: int) -> PoolView:
        return PoolView(self, settle_ms)

    def validator_view(self, settle_ms: int) -> PoolView:
        return PoolView(self, settle_ms)


@dataclass(frozen=True, slots=True)
class PoolView:
    """A ``VerifiedPool`` over an ``EntropyPool`` with a settle time (see the module doc)."""

    pool: EntropyPool
    settle_ms: int

    def registered_sources(self) -> tuple[str, ...]:
        return self.pool.registered_sources()

    def healthy_sources(self) -> tuple[str, ...]:
        # Health is judged by delivery: a source counts when it has settled verified chunks
        # (a quarantined source publishes nothing, so it drops out on its own).
        return tuple(
            s for s in self.pool.registered_sources()
            if self.pool._settled(s, self.pool._last_included.get(s, -1), self.settle_ms)
        )

    def verified_after(self, source_id: str, seq: int) -> tuple[EntropyRef, ...]:
        return self.pool._settled(source_id, seq, self.settle_ms)

    def age_in_heights(self, ref: EntropyRef) -> int | None:
        return self.pool._age(ref)
