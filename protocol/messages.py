"""Consensus votes (Prevote and Precommit) and the bytes a validator signs for votes and
proposals (the proposal message, which carries a block, is in ``protocol.proposal``).

Sign-bytes are canonical (``protocol.canonical``) and carry the chain id, so a signature from one
chain (or a test network) can never be replayed on another, and the domain tag, so a vote can
never be mistaken for a proposal. A vote's sign-bytes are reconstructible from
(chain id, type, height, round, block hash or nil, validator address) alone: that is what lets a
commit certificate store one signature per validator and nothing else.

Nothing here verifies against a validator set; ``verify_vote`` / ``verify_proposal`` check one
signature against one public key and are what every consumer calls before trusting a message.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import IntEnum

from protocol.canonical import HASH_SIZE, CanonicalWriter
from protocol.errors import InputError
from protocol.keys import ADDRESS_SIZE, PublicKey


class MessageError(InputError):
    """A consensus message is malformed (bad height, round, hash length or address)."""


class VoteType(IntEnum):
    PREVOTE = 1
    PRECOMMIT = 2


@functools.lru_cache(maxsize=1024)
def vote_sign_bytes(
    chain_id: str,
    vote_type: VoteType,
    height: int,
    round: int,
    block_hash: bytes | None,
    validator_address: bytes,
) -> bytes:
    """What a validator signs for a vote; ``block_hash`` None is a vote for nil.

    Memoized: a certificate's sign bytes are needed by whoever sends its signatures ahead to be
    verified and again by the verification, and votes are re-checked by every tally step."""
    return (
        CanonicalWriter("Vote")
        .text(chain_id)
        .u8(int(vote_type))
        .u64(height)
        .u32(round)
        .optional(block_hash, lambda w, h: w.raw(h, HASH_SIZE))
        .raw(validator_address, ADDRESS_SIZE)
        .finish()
    )


def proposal_sign_bytes(
    chain_id: str,
    height: int,
    round: int,
    pol_round: int,
    block_hash: bytes,
    proposer_address: bytes,
) -> bytes:
    """What the proposer signs; ``pol_round`` is -1 or the round of the proof of lock."""
    return (
        CanonicalWriter("Proposal")
        .text(chain_id)
        .u64(height)
        .u32(round)
        .i64(pol_round)
        .raw(block_hash, HASH_SIZE)
        .raw(proposer_address, ADDRESS_SIZE)
        .finish()
    )


@dataclass(frozen=True, slots=True)
class Vote:
    """A signed prevote or precommit. ``block_hash`` None means nil."""

    vote_type: VoteType
    height: int
    round: int
    block_hash: bytes | None
    validator_address: bytes
    signature: bytes

    def __post_init__(self) -> None:
        if self.height < 1 or self.round < 0:
            raise MessageError(f"vote has bad height/round {self.height}/{self.round}")
        if self.block_hash is not None and len(self.block_hash) != HASH_SIZE:
            raise MessageError(f"vote block hash must be {HASH_SIZE} bytes")
        if len(self.validator_address) != ADDRESS_SIZE:
            raise MessageError(f"vote validator address must be {ADDRESS_SIZE} bytes")

    def sign_bytes(self, chain_id: str) -> bytes:
        return vote_sign_bytes(
            chain_id,
            self.vote_type,
            self.height,
            self.round,
            self.block_hash,
            self.validator_address,
        )

    def canonical(self) -> bytes:
        """Full encoding, signature included (used in evidence and its hash)."""
        return (
            CanonicalWriter("SignedVote")
            .u8(int(self.vote_type))
            .u64(self.height)
            .u32(self.round)
            .optional(self.block_hash, lambda w, h: w.raw(h, HASH_SIZE))
            .raw(self.validator_address, ADDRESS_SIZE)
            .bytes(self.signature)
            .finish()
        )

    @property
    def block_key(self) -> bytes:
        """Sort/compare key for the voted value: nil sorts before every block hash."""
        return b"" if self.block_hash is None else self.block_hash


def verify_vote(chain_id: str, vote: Vote, public_key: PublicKey) -> bool:
    return public_key.verify(vote.sign_bytes(chain_id), vote.signature)
