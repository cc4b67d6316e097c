"""A node's view of the chain between heights: everything needed to check and apply blocks, as
one immutable value, generic over the application. Validators, the tally, the SDK and the audit
share it:

    chain = genesis_chain(app, app_state, chain_id, genesis_hash, genesis_time_ms, randomness)
    logic = NodeBlockLogic(chain, app, pool, mempool, evidence, ...)  # the block builder's
    ... state machine decides (block, commit) ...
    chain, response = apply_block(chain, app, block, commit)
    next event: StartHeight(chain.tip.height, chain.validators)

``apply_block`` hands the application the block as a ``FinalizeBlockRequest``: the signers of
the previous height come from the block's own last commit (so every node applies the same
``VoteInfo``; a nil precommit counts as signed, only ABSENT is a miss), misbehaviour from the
block's verified evidence, with the offence height's validator set and block time from the
recent history kept here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from protocol.app import Application, FinalizeBlockRequest, FinalizeBlockResponse, VoteInfo
from protocol.block import ZERO_HASH, Block, EntropyRef, keeps_commitment
from protocol.commit import CommitCertificate, CommitFlag, verify_commit
from protocol.errors import InputError
from protocol.evidence import (
    DuplicateVoteEvidence,
    EvidenceError,
    to_misbehavior,
    verify_duplicate_vote,
)
from protocol.keys import SignatureCheck, default_signature_check
from protocol.mmr import EMPTY_HISTORY, History, append, root
from protocol.randomness import genesis_randomness
from protocol.validators import ValidatorSet

S = TypeVar("S")


class ChainError(InputError):
    """A decided block cannot be applied to this chain (wrong height, bad commit)."""


@dataclass(frozen=True, slots=True)
class ChainTip:
    """What the chain fixed before ``height``, the height being built or validated."""

    chain_id: str
    height: int
    previous_block_hash: bytes  # genesis hash at height 1
    previous_time_ms: int  # genesis time at height 1
    previous_randomness: bytes  # genesis randomness at height 1
    last_seq: tuple[tuple[str, int], ...]  # per source, last included seq, sorted by source
    app_hash: bytes  # application state hash after height - 1
    validators_hash: bytes
    next_validators_hash: bytes
    registered_sources: int = 0  # QRNG sources registered in the state after height - 1
    # The accumulator (``protocol.mmr``) over the block hashes of heights 1..height-1, whose
    # root the header at ``height`` carries. None for a light client whose checkpoint has no
    # peaks (after a skip, ``protocol.light``): it takes the header's root on its signers'
    # word, as it does the app hash.
    accumulator: History | None = None
    # The precommitments the chain holds (``docs/precommitment.md``): per source that a block
    # included, the ``next_digest`` of its last included chunk, sorted by source; and the
    # sources of the previous block. A chunk of the block at ``height`` is committed when its
    # digest is its source's commitment here, and fresh when its source is also in
    # ``previous_sources``. None when unknown (a light client's tip after a skip): the header's
    # flags and count are then taken on its signers' word, as its app hash is.
    commitments: tuple[tuple[str, bytes], ...] | None = ()
    previous_sources: tuple[str, ...] | None = ()

    @property
    def history_root(self) -> bytes | None:
        return None if self.accumulator is None else root(self.accumulator)

    def history_root_to_build_on(self) -> bytes:
        """The history root of a header built on this tip: only a tip with the history has
        one (a proposer's, never a light client's)."""
        if self.accumulator is None:
            raise ChainError(f"the tip before height {self.height} holds no history to build "
                             "a header on")
        return root(self.accumulator)

    def commitment_of(self, source_id: str) -> bytes | None:
        """The digest ``source_id``'s next included chunk is committed to (32 zero bytes when
        none: a source never included, or whose last chunk committed to nothing); None when
        this tip does not know."""
        if self.commitments is None:
            return None
        for source, digest in self.commitments:
            if source == source_id:
                return digest
        return ZERO_HASH

    def is_committed(self, ref: EntropyRef) -> bool:
        """Whether ``ref`` keeps its source's commitment on this (full) tip."""
        commitment = self.commitment_of(ref.source_id)
        return commitment is not None and keeps_commitment(commitment, ref)

    def last_seq_of(self, source_id: str) -> int:
        for source, seq in self.last_seq:
            if source == source_id:
                return seq
        return -1

    def advanced(self, block: Block, app_hash: bytes, next_next_validators_hash: bytes,
                 registered_sources: int = 0) -> ChainTip:
        """The tip after ``block`` is decided and applied (``app_hash`` is the state after it;
        ``next_next_validators_hash`` the set governing height + 2; ``registered_sources`` the
        QRNG sources registered in that state)."""
        last = dict(self.last_seq)
        for seq_range in block.header.entropy_ranges:
            last[seq_range.source_id] = seq_range.last
        commitments = None
        if self.commitments is not None:
            held = dict(self.commitments)
            for ref in block.body.entropy:  # in seq order per source: the last one stays
                held[ref.source_id] = ref.next_digest
            commitments = tuple(sorted(held.items()))
        return ChainTip(
            chain_id=self.chain_id,
            height=self.height + 1,
            previous_block_hash=block.hash,
            previous_time_ms=block.header.time_ms,
            previous_randomness=block.header.randomness,
            last_seq=tuple(sorted(last.items())),
            app_hash=app_hash,
            validators_hash=self.next_validators_hash,
            next_validators_hash=next_next_validators_hash,
            registered_sources=registered_sources,
            accumulator=(None if self.accumulator is None
                         else append(self.accumulator, block.hash)),
            commitments=commitments,
            previous_sources=tuple(r.source_id for r in block.header.entropy_ranges),
        )


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
        registered_sources=app.registered_sources(app_state),
        accumulator=EMPTY_HISTORY,
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


def finalize_request(chain: ChainState[Any], block: Block) -> FinalizeBlockRequest:
    """The application's view of decided ``block`` on top of ``chain``."""
    last_commit: tuple[VoteInfo, ...] = ()
    if block.body.last_commit is not None:
        previous = chain.record_of(block.height - 1)
        if previous is None:
            raise ChainError(f"no validator set recorded for height {block.height - 1}")
        flags = {s.validator_address: s.flag for s in block.body.last_commit.signatures}
        # A precommit for nil in the deciding round is a signature too: the validator was
        # online and voting (Cosmos counts every flag but ABSENT), so it is not "missing".
        last_commit = tuple(
            VoteInfo(v.address, v.power,
                     flags.get(v.address, CommitFlag.ABSENT) is not CommitFlag.ABSENT)
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
    tip = chain.tip.advanced(block, response.app_hash, next_next.hash(),
                             app.registered_sources(app_state))
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
