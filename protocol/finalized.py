"""A finalized block as the public chain carries it: the block, its commit certificate and the
application state hash after it (the content of a ``BlockFinalized`` record)."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.block import Block
from protocol.commit import CommitCertificate


@dataclass(frozen=True, slots=True)
class FinalizedRecord:
    """A decoded ``BlockFinalized``: the block, its certificate and what the tally observed.

    ``consensus_offset`` is the offset on ``chain.consensus`` of the precommit that completed
    the quorum; ``proposed_at_ms`` / ``finalized_at_ms`` are the log timestamps of the
    proposal and of that precommit (so two tallies write byte-identical records)."""

    chain_id: str
    block: Block
    commit: CommitCertificate
    state_hash: bytes
    consensus_offset: int
    proposed_at_ms: int
    finalized_at_ms: int

    @property
    def height(self) -> int:
        return self.block.height
