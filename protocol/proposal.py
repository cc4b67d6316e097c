"""A proposal message: a signed block for (height, round).

Kept apart from ``messages`` (votes and sign bytes) because a proposal carries a whole block:
the block's body holds evidence, evidence holds votes, so putting proposals beside votes would
make the data model circular. Read bottom-up: votes, commit, evidence, block, proposal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol.block import Block
from protocol.keys import ADDRESS_SIZE, PublicKey
from protocol.messages import MessageError, Vote, proposal_sign_bytes


@dataclass(frozen=True, slots=True)
class Proposal:
    """A signed proposal of ``block`` for (height, round); ``pol_round`` as in the paper."""

    height: int
    round: int
    pol_round: int
    block: Block
    proposer_address: bytes
    signature: bytes
    block_hash: bytes = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if self.height < 1 or self.round < 0 or not -1 <= self.pol_round < self.round:
            raise MessageError(
                f"proposal has bad height/round/pol_round "
                f"{self.height}/{self.round}/{self.pol_round} (need -1 <= pol_round < round)"
            )
        if len(self.proposer_address) != ADDRESS_SIZE:
            raise MessageError(f"proposer address must be {ADDRESS_SIZE} bytes")
        object.__setattr__(self, "block_hash", self.block.hash)

    def sign_bytes(self, chain_id: str) -> bytes:
        return proposal_sign_bytes(
            chain_id,
            self.height,
            self.round,
            self.pol_round,
            self.block_hash,
            self.proposer_address,
        )


Message = Proposal | Vote


def verify_proposal(chain_id: str, proposal: Proposal, public_key: PublicKey) -> bool:
    return public_key.verify(proposal.sign_bytes(chain_id), proposal.signature)
