"""One-ahead chaining (issue 19 item 1): a chain holds one tested payload back, so the chunk it
publishes commits to the payload it will publish next (``next_digest``,
``protocol.entropy.chain``).

``take`` holds a new payload and returns the chunk of the one it held before, whose
``next_digest`` is the new payload's digest; ``release`` returns the held payload's chunk with
a zero ``next_digest`` (a clean stop: it commits to nothing). Pure; the publisher produces the
chunks. The payload is referenced, never copied.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol.entropy.chain import ZERO_DIGEST, ChainHead, Chunk, HealthSummary, extend


@dataclass(frozen=True, slots=True)
class Held:
    """A tested payload not yet published: secret until its chunk is."""

    payload: bytes
    payload_digest: bytes
    produced_at_ms: int
    simulated: bool
    health: HealthSummary


@dataclass(frozen=True, slots=True)
class AheadChain:
    """One chain of a source (one pool): its published head and the payload it holds."""

    source_id: str
    private: bool
    head: ChainHead = field(default_factory=ChainHead)
    held: Held | None = None

    def _chunk_of(self, held: Held, next_digest: bytes) -> tuple[Chunk, ChainHead]:
        return extend(self.head, source_id=self.source_id, private=self.private,
                      payload=held.payload, produced_at_ms=held.produced_at_ms,
                      simulated=held.simulated, health=held.health,
                      payload_digest=held.payload_digest, next_digest=next_digest)


def take(chain: AheadChain, new: Held) -> tuple[AheadChain, Chunk | None]:
    """Hold ``new``; the chunk of the payload held before (committing to ``new``), if any."""
    if chain.held is None:
        return AheadChain(chain.source_id, chain.private, chain.head, new), None
    chunk, head = chain._chunk_of(chain.held, new.payload_digest)
    return AheadChain(chain.source_id, chain.private, head, new), chunk


def release(chain: AheadChain) -> tuple[AheadChain, Chunk | None]:
    """Publish what is held, committing to nothing (zero ``next_digest``)."""
    if chain.held is None:
        return chain, None
    chunk, head = chain._chunk_of(chain.held, ZERO_DIGEST)
    return AheadChain(chain.source_id, chain.private, head, None), chunk


def discard(chain: AheadChain) -> AheadChain:
    """Drop the held payload unpublished: the chain's next chunk will not be committed to."""
    return AheadChain(chain.source_id, chain.private, chain.head, None)
