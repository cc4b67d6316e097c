"""The boundary between consensus and the application state machine (the ledger).

Modelled on ABCI's FinalizeBlock so that it reads familiar to anyone who knows CometBFT: consensus
decides a block, then hands the application the block's transactions, who signed the previous
block, and proven misbehaviour; the application returns per-transaction results and its state
hash. The application also answers which validator set governs a height (changes decided at
height H govern H+2) and whether a transaction may enter the mempool or a proposal.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, Protocol, TypeVar

from protocol.validators import ValidatorSet

S = TypeVar("S")


class MisbehaviorKind(StrEnum):
    DUPLICATE_VOTE = "duplicate_vote"


@dataclass(frozen=True, slots=True)
class VoteInfo:
    """Whether a validator of the previous height's set signed the commit of that height: a
    precommit for the block or for nil in the deciding round (only ABSENT is a miss)."""

    address: bytes
    power: int
    signed: bool


@dataclass(frozen=True, slots=True)
class Misbehavior:
    """Verified evidence, reduced to what the application needs to punish it."""

    kind: MisbehaviorKind
    validator_address: bytes
    height: int  # height of the offence
    time_ms: int  # block time of the offence height
    total_voting_power: int  # of the set at the offence height


@dataclass(frozen=True, slots=True)
class FinalizeBlockRequest:
    chain_id: str
    height: int
    time_ms: int  # block time, from the header (never a local clock)
    proposer_address: bytes
    txs: tuple[bytes, ...]  # encoded signed transactions, in block order
    last_commit: tuple[VoteInfo, ...]  # signers of height-1 (empty at the first height)
    misbehavior: tuple[Misbehavior, ...]
    randomness: bytes  # the block's randomness (64 bytes)


@dataclass(frozen=True, slots=True)
class TxResult:
    code: int  # 0 = applied; anything else = rejected, state untouched except the fee if charged
    log: str
    fee_charged: int = 0


@dataclass(frozen=True, slots=True)
class FinalizeBlockResponse:
    tx_results: tuple[TxResult, ...]
    app_hash: bytes  # state hash after this block; the next header carries it


class Application(Protocol, Generic[S]):
    """What consensus, the block builder, the simulator and the audit need from the ledger."""

    def check_tx(self, state: S, tx: bytes) -> TxResult:
        """Stateless + stateful checks against ``state`` (signature, nonce, balance for fee)."""
        ...

    def finalize_block(
        self, state: S, request: FinalizeBlockRequest
    ) -> tuple[S, FinalizeBlockResponse]:
        """Apply one decided block. Pure: the same state and request give the same result."""
        ...

    def validator_set(self, state: S, height: int) -> ValidatorSet:
        """The validator set governing ``height``; defined for last height + 1 and + 2."""
        ...

    def state_hash(self, state: S) -> bytes:
        ...

    def registered_sources(self, state: S) -> int:
        """How many QRNG sources are registered in ``state`` (a block built on it says so in
        its header, see ``protocol.pulse``)."""
        ...
