"""The block builder's ``BlockLogic``: what the consensus core asks of a node's builder.

``NodeBlockLogic`` binds one node's chain view, entropy pool, mempool and evidence pool at one
moment: ``propose`` assembles a block with ``proposal.build_block``, ``validate`` runs
``proposal.validate_block`` against the same view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from protocol.app import Application
from protocol.block import Block
from protocol.chain import ChainState, check_evidence, check_last_commit
from protocol.evidence import DuplicateVoteEvidence
from protocol.keys import SignatureCheck, default_signature_check
from services.block_builder.core.proposal import (
    MAX_TIME_DRIFT_MS,
    EntropyRules,
    InvalidBlockError,
    VerifiedPool,
    build_block,
    validate_block,
)

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class NodeBlockLogic(Generic[S]):
    """``state_machine.BlockLogic`` for one node at one moment: builds proposals from its pool,
    mempool and evidence pool, validates proposals against its chain view."""

    chain: ChainState[S]
    app: Application[S]
    pool: VerifiedPool
    mempool: Sequence[bytes]
    evidence: Sequence[DuplicateVoteEvidence]
    rules: EntropyRules
    now_ms: int
    proposer_address: bytes
    check: SignatureCheck = default_signature_check
    max_time_drift_ms: int = MAX_TIME_DRIFT_MS

    def _check_tx(self, tx: bytes) -> bool:
        return self.app.check_tx(self.chain.app_state, tx).code == 0

    def propose(self, height: int, round: int) -> Block:
        chain = self.chain
        return build_block(
            chain.tip,
            round,
            self.now_ms,
            self.proposer_address,
            self.pool,
            self.mempool,
            self.evidence,
            chain.last_commit,
            self.rules,
            self._check_tx,
            lambda item: check_evidence(chain, item, self.check),
        )

    def validate(self, block: Block) -> str | None:
        chain = self.chain
        if block.header.proposer_address not in chain.validators:
            return f"proposer {block.header.proposer_address.hex()} is not a validator"
        try:
            validate_block(
                block,
                chain.tip,
                self.pool,
                self.rules,
                None,
                self._check_tx,
                lambda item: check_evidence(chain, item, self.check),
                lambda commit: check_last_commit(chain, commit, self.check),
                self.now_ms + self.max_time_drift_ms,
            )
        except InvalidBlockError as exc:
            return str(exc)
        return None
