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

The registry follows the ledger (``set_registry``, after every applied block): a source removed
by governance is refused from the next height on, on every node alike.

A chunk whose signed health summary does not pass (``HealthSummary.failing``: a source that
published data its own SP 800-90B tests failed) can never be in a block (``protocol.block``
refuses it), and no later chunk of its chain can either, since ranges are contiguous. So
``accept_checkpoint`` pools the chunks before it, never pools it or anything after it, remembers
the source in ``unjoinable`` and raises ``UnhealthyChunkError``; the chain of that source is
then stuck until it restarts (governance / a new chain), as for any unjoinable chain.

A source whose verified chunks cannot continue the chain (the chain expects ``#n`` next and
the source publishes from a later sequence number, e.g. a QRNG server that restarted its chain
or a node that joined after the missing chunks expired) would otherwise sit in the pool for
ever, never includable: ``accept_checkpoint`` drops those chunks, remembers the source in
``unjoinable`` and raises ``UnjoinableChainError`` so the record is dead-lettered with the
reason. It is a report, not a rejection of the checkpoint: the checkpoint itself verified.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from protocol.block import EntropyRef
from protocol.chain import ChainTip
from protocol.entropy.chain import Checkpoint, Chunk
from protocol.entropy.registry import SourceRegistryEntry
from protocol.entropy.verifier import (
    ChainVerifier,
    EntropyRejectedError,
    LosingBranchError,
    UnknownSourceError,
)


class UnjoinableChainError(EntropyRejectedError):
    """Verified chunks of a source that can never continue the chain (module doc);
    ``verified`` names them (they are no longer pending anywhere)."""

    code = "unjoinable_chain"

    def __init__(self, reason: str, verified: tuple[Chunk, ...] = ()) -> None:
        super().__init__(reason)
        self.verified = verified


class UnhealthyChunkError(UnjoinableChainError):
    """A verified chunk whose health summary does not pass (module doc)."""

    code = "unhealthy_chunk"


@dataclass(frozen=True, slots=True)
class CheckpointOutcome:
    """What one verified checkpoint did: chunks added to the pool and the chunks it verified
    (no longer pending)."""

    added: int
    verified: tuple[Chunk, ...]


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
        self.unjoinable: dict[str, str] = {}  # source -> why its chunks cannot join the chain
        self._unhealthy: dict[str, tuple[int, str]] = {}  # source -> first failing seq, why
        self._discarded: list[tuple[Chunk, EntropyRejectedError]] = []

    def set_registry(self, registry: Mapping[str, SourceRegistryEntry]) -> None:
        """The registry of the ledger state the next block builds on (module doc)."""
        registry = dict(registry)
        if registry == self._registry:
            return
        self._registry = registry
        self._verifier.set_registry(registry)
        self._collect_discarded(lambda c: UnknownSourceError(
            f"chunk {c.source_id}#{c.seq}: the source left the registry before a checkpoint "
            "covered it"))
        self._chunks = {s: self._chunks.get(s, {}) for s in registry}
        for source in [s for s in self.unjoinable if s not in registry]:
            del self.unjoinable[source]
        for source in [s for s in self._unhealthy if s not in registry]:
            del self._unhealthy[source]

    # -- feeding

    def accept_chunk(self, chunk: Chunk) -> None:
        """Raises ``EntropyRejectedError`` (the caller dead-letters the record)."""
        if chunk.private:
            raise EntropyRejectedError(f"private chunk {chunk.source_id}#{chunk.seq} on the "
                                       "public topic")
        self._verifier.accept_chunk(chunk)

    def accept_checkpoint(self, checkpoint: Checkpoint) -> CheckpointOutcome:
        """Verify a checkpoint and pool the chunks it covers. Raises what the verifier raises,
        and ``UnjoinableChainError`` when the source's chunks cannot continue the chain."""
        verified = self._verifier.accept_checkpoint(checkpoint)
        now = self._clock()
        source = checkpoint.source_id
        floor = self._last_included.get(source, -1)
        pooled = self._chunks.setdefault(source, {})
        added = 0
        for chunk in verified:
            if chunk.seq <= floor:
                continue
            failing = chunk.health.failing()
            if failing is not None and source not in self._unhealthy:
                self._unhealthy[source] = (chunk.seq, f"chunk {source}#{chunk.seq} did not pass "
                                                      f"its health tests: {failing}")
            if chunk.seq >= self._unhealthy.get(source, (chunk.seq + 1, ""))[0]:
                continue
            # The block names a chunk by its payload digest (see protocol/block.py EntropyRef)
            # and carries its health summary and precommitment, which the chunk digest the
            # source signed covers.
            ref = EntropyRef(chunk.source_id, chunk.seq, chunk.payload_digest, chunk.health,
                             chunk.next_digest)
            pooled[chunk.seq] = PooledChunk(ref, self.current_height, now, len(chunk.payload))
            added += 1
        self._collect_discarded(lambda c: LosingBranchError(
            f"chunk {c.source_id}#{c.seq} ({c.chunk_digest.hex()[:16]}) is not on the chain "
            f"{c.source_id!r} signed at #{checkpoint.last_seq}: forged, or built on a forgery"))
        outcome = CheckpointOutcome(added, verified)
        unhealthy = self._unhealthy.get(source)
        if unhealthy is not None and any(c.seq >= unhealthy[0] for c in verified):
            reason = (f"{unhealthy[1]}; no block can include it, so the chain of {source!r} "
                      f"cannot continue past #{unhealthy[0] - 1}")
            self.unjoinable[source] = reason
            self.verified_chunks += added
            raise UnhealthyChunkError(reason, verified)
        if pooled and min(pooled) > floor + 1:
            first, last = min(pooled), max(pooled)
            pooled.clear()
            reason = (f"verified chunks #{first}..#{last} of {source!r} cannot join the chain, "
                      f"which expects #{floor + 1} next: the source restarted its chain (or "
                      f"this node missed chunks that expired)")
            self.unjoinable[source] = reason
            raise UnjoinableChainError(reason, verified)
        self.unjoinable.pop(source, None)
        self.verified_chunks += added
        return outcome

    def _collect_discarded(self, reason: Callable[[Chunk], EntropyRejectedError]) -> None:
        for chunk in self._verifier.take_discarded():
            error = reason(chunk)
            self.count_rejection(error.code)
            self._discarded.append((chunk, error))

    def take_discarded(self) -> list[tuple[Chunk, EntropyRejectedError]]:
        """Chunks held as candidates and then dropped (a checkpoint decided against them, or
        their source left the registry), each with the error to dead-letter it with."""
        discarded, self._discarded = self._discarded, []
        return discarded

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
        """The settled chunks right after ``seq``, contiguous: walked by seq, so an unpaced
        source's backlog is not sorted on every call."""
        cutoff = self._clock() - settle_ms / 1000
        out: list[EntropyRef] = []
        chunks = self._chunks.get(source, {})
        next_seq = seq + 1  # must continue the chain right after ``seq``
        while (pooled := chunks.get(next_seq)) is not None and pooled.verified_at <= cutoff:
            out.append(pooled.ref)
            next_seq += 1
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
