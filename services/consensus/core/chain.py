"""A node's view of the chain between heights: everything needed to build, validate and apply
blocks, as one immutable value. This is the glue the consensus service, the simulator and the
audit share:

    chain = genesis_chain(app, app_state, chain_id, genesis_hash, genesis_time_ms, randomness)
    logic = NodeBlockLogic(chain, app, pool, mempool, evidence, rules, now_ms, ...)  # per event
    ... state machine decides (block, commit) ...
    chain, response = apply_block(chain, app, block, commit)
    next event: StartHeight(chain.tip.height, chain.validators)

``apply_block`` hands the application the block as a ``FinalizeBlockRequest``: the signers of
the previous height come from the block's own last commit (so every node applies the same
``VoteInfo``), misbehaviour from the block's verified evidence, with the offence height's
validator set and block time from the recent history kept here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from services.block_builder.core.block import Block
from services.block_builder.core.proposal import (
    ChainTip,
    EntropyRules,
    InvalidBlockError,
    VerifiedPool,
    build_block,
    validate_block,
)
from services.block_builder.core.randomness import genesis_randomness
from services.consensus.core.app import (
    Application,
    FinalizeBlockRequest,
    FinalizeBlockResponse,
    VoteInfo,
)
from services.consensus.core.commit import (
    CommitCertificate,
    CommitFlag,
    SignatureCheck,
    default_signature_check,
    verify_commit,
)
from services.consensus.core.evidence import (
    DuplicateVoteEvidence,
    EvidenceError,
    to_misbehavior,
    verify_duplicate_vote,
)
from services.consensus.core.validators import ValidatorSet

S = TypeVar("S")


class ChainError(ValueError):
    """A decided block cannot be applied to this chain (wrong height, bad commit)."""


@dataclass(frozen=True, slots=True)
class HeightRecord:
    """What evidence of an offence at ``height`` needs: that height's set and block time."""

    height: int
    time_ms: int
    validators: ValidatorSet


@dataclass(frozen=True, slots=True)
class ChainState(Generic[S]):
    tip: ChainTip  # for the next height, tip.height
    app_state: S
    validators: ValidatorSet  # governs tip.height
    next_validators: ValidatorSet  # governs tip.height + 1
    last_commit: CommitCertificate | None  # decided commit of tip.height - 1
    history: tuple[HeightRecord, ...]  # the last ``evidence_max_age`` heights, oldest first
    committed_evidence: frozenset[tuple[int, bytes]]  # (offence height, hash) inside the window
    evidence_max_age: int

    @property
    def chain_id(self) -> str:
        return self.tip.chain_id

    def record_of(self, height: int) -> HeightRecord | None:
        # The history holds consecutive heights, oldest first: index, don't search.
        if not self.history:
            return None
        position = height - self.history[0].height
        if 0 <= position < len(self.history) and self.history[position].height == height:
            return self.history[position]
        return next((record for record in self.history if record.height == height), None)


def genesis_chain(
    app: Application[S],
    app_state: S,
    chain_id: str,
    genesis_hash: bytes,
    genesis_time_ms: int,
    genesis_randomness_value: bytes,
    evidence_max_age: int = 100,
) -> ChainState[S]:
    """The chain before height 1. ``genesis_hash`` becomes block 1's previous hash."""
    validators = app.validator_set(app_state, 1)
    next_validators = app.validator_set(app_state, 2)
    tip = ChainTip(
        chain_id=chain_id,
        height=1,
        previous_block_hash=genesis_hash,
        previous_time_ms=genesis_time_ms,
        previous_randomness=genesis_randomness(genesis_randomness_value),
        last_seq=(),
        app_hash=app.state_hash(app_state),
        validators_hash=validators.hash(),
        next_validators_hash=next_validators.hash(),
    )
    return ChainState(
        tip, app_state, validators, next_validators, None, (), frozenset(), evidence_max_age
    )


def check_evidence(
    chain: ChainState[Any],
    evidence: DuplicateVoteEvidence,
    check: SignatureCheck = default_signature_check,
) -> str | None:
    """None when ``evidence`` may be included in the block at ``chain.tip.height``."""
    if (evidence.height, evidence.hash()) in chain.committed_evidence:
        return "evidence already included in an earlier block"
    record = chain.record_of(evidence.height)
    if record is None:
        return f"offence height {evidence.height} is outside the evidence window"
    try:
        verify_duplicate_vote(
            chain.chain_id,
            evidence,
            record.validators,
            chain.tip.height,
            chain.evidence_max_age,
            check,
        )
    except EvidenceError as exc:
        return str(exc)
    return None


def check_last_commit(
    chain: ChainState[Any],
    commit: CommitCertificate,
    check: SignatureCheck = default_signature_check,
) -> str | None:
    """None when ``commit`` proves the previous block (any valid +2/3 set of precommits)."""
    previous = chain.record_of(chain.tip.height - 1)
    if previous is None:
        return "no previous height to commit"
    result = verify_commit(
        chain.chain_id,
        chain.tip.previous_block_hash,
        chain.tip.height - 1,
        commit,
        previous.validators,
        check,
    )
    return None if result.ok else result.reason


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
            )
        except InvalidBlockError as exc:
            return str(exc)
        return None


def finalize_request(chain: ChainState[Any], block: Block) -> FinalizeBlockRequest:
    """The application's view of decided ``block`` on top of ``chain``."""
    last_commit: tuple[VoteInfo, ...] = ()
    if block.body.last_commit is not None:
        previous = chain.record_of(block.height - 1)
        if previous is None:
            raise ChainError(f"no validator set recorded for height {block.height - 1}")
        flags = {s.validator_address: s.flag for s in block.body.last_commit.signatures}
        last_commit = tuple(
            VoteInfo(v.address, v.power, flags.get(v.address) is CommitFlag.COMMIT)
            for v in previous.validators.validators
        )
    misbehavior = []
    for item in block.body.evidence:
        record = chain.record_of(item.height)
        if record is None:
            raise ChainError(f"evidence of height {item.height} is outside the window")
        misbehavior.append(to_misbehavior(item, record.validators, record.time_ms))
    return FinalizeBlockRequest(
        chain_id=chain.chain_id,
        height=block.height,
        time_ms=block.header.time_ms,
        proposer_address=block.header.proposer_address,
        txs=block.body.txs,
        last_commit=last_commit,
        misbehavior=tuple(misbehavior),
        randomness=block.header.randomness,
    )


def apply_block(
    chain: ChainState[S],
    app: Application[S],
    block: Block,
    commit: CommitCertificate,
    check: SignatureCheck | None = None,
) -> tuple[ChainState[S], FinalizeBlockResponse]:
    """Apply a decided block. With ``check`` given, the commit is verified first (nodes that
    decided it themselves may skip that; a replaying auditor must not)."""
    if block.height != chain.tip.height:
        raise ChainError(f"block of height {block.height} applied at {chain.tip.height}")
    if check is not None:
        result = verify_commit(
            chain.chain_id, block.hash, block.height, commit, chain.validators, check
        )
        if not result.ok:
            raise ChainError(f"commit of height {block.height} does not verify: {result.reason}")
    request = finalize_request(chain, block)
    app_state, response = app.finalize_block(chain.app_state, request)
    height = block.height
    # Keep what evidence for the next block may refer to: offences at most max_age old. The
    # history is in height order, so the expired records are a prefix (found from the front:
    # usually none or one, so this stays cheap with a long evidence window).
    kept = chain.history
    expired = 0
    while expired < len(kept) and height + 1 - kept[expired].height > chain.evidence_max_age:
        expired += 1
    current = HeightRecord(height, block.header.time_ms, chain.validators)
    history = (*kept[expired:], current) if chain.evidence_max_age >= 1 else ()
    committed = frozenset(
        entry
        for entry in chain.committed_evidence | {(e.height, e.hash()) for e in block.body.evidence}
        if height + 1 - entry[0] <= chain.evidence_max_age
    )
    next_next = app.validator_set(app_state, height + 2)
    tip = chain.tip.advanced(block, response.app_hash, next_next.hash())
    return (
        ChainState(
            tip=tip,
            app_state=app_state,
            validators=chain.next_validators,
            next_validators=next_next,
            last_commit=commit,
            history=history,
            committed_evidence=committed,
            evidence_max_age=chain.evidence_max_age,
        ),
        response,
    )
