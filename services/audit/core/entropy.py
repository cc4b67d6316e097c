"""Auditing ``entropy.raw`` against the blocks that used it.

Every chunk and checkpoint record goes through the ingest's own ``ChainVerifier`` (registered
key, hash chain, payload and chunk digests, checkpoint signature). A chunk is *verified* once a
checkpoint with a valid signature covers it. Then every ``EntropyRef`` of every applied block is
matched (``match``):

- verified with the same payload digest and health summary: checked (``entropy`` count);
- older than the first retained chunk of its source: the raw chunk has expired, so that height's
  entropy is checked by commitment only (the signed header commits to the digests and the
  randomness derivation was re-done from them) — reported as a note, not a failure;
- anything else is a failure at the block's height: the digest or the health summary differs,
  the chunk is not on the topic, or it is not covered by a verified checkpoint — naming the
  rejected checkpoint record (partition, offset, reason) when one claimed to cover it.

Rejected records nobody used are warnings: Kafka is not trusted, garbage on it is no divergence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol.block import EntropyRef
from protocol.entropy.chain import Checkpoint, Chunk, ChunkFormatError, HealthSummary
from protocol.entropy.registry import SourceRegistryEntry
from protocol.entropy.verifier import ChainVerifier, EntropyRejectedError
from services.audit.core.findings import Finding, Severity

TOPIC = "entropy.raw"


@dataclass(frozen=True, slots=True)
class RejectedCheckpoint:
    source_id: str
    first_seq: int
    last_seq: int
    partition: int
    offset: int
    reason: str


@dataclass(slots=True)
class EntropyAuditor:
    registry: Mapping[str, SourceRegistryEntry]
    verifier: ChainVerifier = field(init=False)
    # (payload digest, health summary) per verified chunk: what a ref must carry; no payloads
    verified: dict[tuple[str, int], tuple[bytes, HealthSummary]] = field(default_factory=dict)
    first_seen: dict[str, int] = field(default_factory=dict)
    seen: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    rejected_checkpoints: list[RejectedCheckpoint] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.verifier = ChainVerifier(self.registry, allow_mid_stream=True)

    def _warn(self, reason: str, partition: int, offset: int) -> None:
        self.warnings.append(Finding("entropy_record", reason, TOPIC, offset, partition, None,
                                     Severity.WARNING))

    def feed(self, schema: str, record: Mapping[str, Any], partition: int, offset: int) -> None:
        """One decoded ``EntropyChunkPublished`` or ``EntropyCheckpointSigned`` record."""
        self.counts["records"] = self.counts.get("records", 0) + 1
        try:
            if schema == "EntropyChunkPublished":
                chunk = Chunk.from_record(record)
                if chunk.private:
                    raise EntropyRejectedError(f"private chunk {chunk.source_id}#{chunk.seq}")
                self.first_seen.setdefault(chunk.source_id, chunk.seq)
                self.seen[(chunk.source_id, chunk.seq)] = (partition, offset)
                self.verifier.accept_chunk(chunk)
            elif schema == "EntropyCheckpointSigned":
                checkpoint = Checkpoint.from_record(record)
                try:
                    chunks = self.verifier.accept_checkpoint(checkpoint)
                except EntropyRejectedError as exc:
                    self.rejected_checkpoints.append(RejectedCheckpoint(
                        checkpoint.source_id, checkpoint.first_seq, checkpoint.last_seq,
                        partition, offset, f"{exc.code}: {exc}"))
                    raise
                self.counts["checkpoints"] = self.counts.get("checkpoints", 0) + 1
                for chunk in chunks:
                    self.verified[(chunk.source_id, chunk.seq)] = (chunk.payload_digest,
                                                                   chunk.health)
            else:
                self._warn(f"{schema} does not belong on entropy.raw", partition, offset)
        except (EntropyRejectedError, ChunkFormatError) as exc:
            self._warn(f"rejected: {exc}", partition, offset)

    def match(self, refs: Iterable[tuple[int, int, EntropyRef]]
              ) -> tuple[list[Finding], list[int]]:
        """Failures for refs not backed by verified chunks, and the heights whose entropy could
        only be checked by commitment (raw chunks expired)."""
        failures: list[Finding] = []
        by_commitment: set[int] = set()
        for height, offset, ref in refs:
            key = (ref.source_id, ref.seq)
            digest, health = self.verified.get(key, (None, None))
            if digest == ref.digest and health == ref.health:
                self.counts["refs_checked"] = self.counts.get("refs_checked", 0) + 1
                continue
            first = self.first_seen.get(ref.source_id)
            if digest is None and (first is None or ref.seq < first) and key not in self.seen:
                by_commitment.add(height)
                continue
            if digest == ref.digest:
                reason = (f"entropy ref {ref.source_id}#{ref.seq} health {ref.health} differs "
                          f"from the verified chunk's {health}")
            elif digest is not None:
                reason = (f"entropy ref {ref.source_id}#{ref.seq} digest "
                          f"{ref.digest.hex()[:16]} differs from the verified chunk's "
                          f"{digest.hex()[:16]}")
            elif key not in self.seen:
                reason = f"entropy ref {ref.source_id}#{ref.seq} names a chunk not on entropy.raw"
            else:
                reason = self._unverified_reason(ref)
            failures.append(Finding("entropy", reason, "chain.blocks", offset, 0, height))
        return failures, sorted(by_commitment)

    def _unverified_reason(self, ref: EntropyRef) -> str:
        partition, offset = self.seen[(ref.source_id, ref.seq)]
        base = (f"chunk {ref.source_id}#{ref.seq} (entropy.raw partition {partition} offset "
                f"{offset}) is not covered by a checkpoint with a valid signature")
        for rejected in self.rejected_checkpoints:
            if rejected.source_id == ref.source_id and (
                    rejected.first_seq <= ref.seq <= rejected.last_seq):
                return (f"{base}: its checkpoint #{rejected.first_seq}..{rejected.last_seq} at "
                        f"entropy.raw partition {rejected.partition} offset {rejected.offset} "
                        f"was rejected ({rejected.reason})")
        return base
