"""Stake-weighted governance of the parameters and of the QRNG source registry.

Lifecycle: ``SubmitProposal`` with a deposit of at least ``min_deposit`` (escrowed; there is no
separate deposit period) opens voting at once; voting ends at the end of block
``submit_height + voting_period_blocks``; votes may be changed until then (the last one counts).

Tally (Cosmos SDK x/gov rules, integer-only): voting power is bonded stake, counted over the
validators of the set governing the next height. A voter's delegations count for the voter's
option; a validator that voted also votes with the remaining shares of delegators who did not
vote themselves (inheritance). Values are ``shares * tokens // total_shares`` (rounded down).

Decision, with ``voted = yes + abstain + no + no_with_veto`` and ``bonded`` the total bonded
tokens of that set (exact boundaries, tested):

1. quorum fails if ``voted * RATE_ONE < quorum_rate * bonded`` (exactly at quorum is enough);
2. vetoed if ``no_with_veto * RATE_ONE > veto_threshold_rate * voted`` (exactly at the veto
   threshold is not a veto);
3. passes if ``yes * RATE_ONE > threshold_rate * (yes + no + no_with_veto)`` (strictly more;
   exactly at the threshold fails); otherwise rejected (also when nobody voted except abstain).

Deposits: refunded when the proposal passes, is rejected, or fails at execution; burned when
it is vetoed or misses quorum (spam costs the deposit). A passing proposal is executed at once;
if its content no longer applies (an invalid parameter combination, a source that is gone, a
state that would no longer encode) it ends as FAILED_EXECUTION and changes nothing: a proposal
can fail, it can never make a block raise on every node.
"""

from __future__ import annotations

import dataclasses

from protocol.canonical import CanonicalEncodingError
from services.ledger.core.errors import (
    DepositTooLowError,
    InvalidParamsError,
    InvalidProposalError,
    LedgerError,
    UnknownProposalError,
    VotingClosedError,
)
from services.ledger.core.fmap import FrozenMap
from services.ledger.core.params import RATE_ONE
from services.ledger.core.state import (
    LedgerState,
    Proposal,
    ProposalStatus,
    TallyResult,
    credit,
    debit,
    evolve,
    state_hash,
)
from services.ledger.core.tx import (
    ParameterChangeProposal,
    ProposalContent,
    QrngRegistryProposal,
    QrngSource,
    SubmitProposal,
    VoteOption,
    VoteProposal,
)


def apply_content(state: LedgerState, content: ProposalContent) -> LedgerState:
    """The state with ``content`` applied; ``InvalidProposalError`` if it does not apply."""
    if isinstance(content, ParameterChangeProposal):
        try:
            params = state.params.with_changes(
                (change.name, change.value) for change in content.changes
            )
        except InvalidParamsError as exc:
            raise InvalidProposalError(str(exc)) from exc
        return evolve(state, params=params)
    return evolve(state, qrng_sources=_apply_registry(state.qrng_sources, content))


def _apply_registry(
    sources: FrozenMap[str, QrngSource], content: QrngRegistryProposal
) -> FrozenMap[str, QrngSource]:
    for source_id in content.remove:
        if source_id not in sources:
            raise InvalidProposalError(f"QRNG source {source_id!r} is not registered")
        sources = sources.remove(source_id)
    for source in content.register:
        if source.source_id in sources:
            raise InvalidProposalError(f"QRNG source {source.source_id!r} is already registered")
        sources = sources.set(source.source_id, source)
    return sources


def submit_proposal(
    state: LedgerState, proposer: bytes, body: SubmitProposal, height: int
) -> LedgerState:
    if body.deposit < state.params.min_deposit:
        raise DepositTooLowError(
            f"deposit {body.deposit} is below the minimum {state.params.min_deposit}"
        )
    apply_content(state, body.content)  # refuse now what could not apply at the end
    state = debit(state, proposer, body.deposit)
    proposal_id = state.next_proposal_id
    proposal = Proposal(
        proposal_id=proposal_id,
        proposer=proposer,
        content=body.content,
        deposit=body.deposit,
        submit_height=height,
        voting_end_height=height + state.params.voting_period_blocks,
    )
    return evolve(
        state,
        proposals=state.proposals.set(proposal_id, proposal),
        active_proposals=(*state.active_proposals, proposal_id),
        next_proposal_id=proposal_id + 1,
    )


def vote(state: LedgerState, voter: bytes, body: VoteProposal, height: int) -> LedgerState:
    proposal = state.proposals.get(body.proposal_id)
    if proposal is None:
        raise UnknownProposalError(f"no proposal {body.proposal_id}")
    if proposal.status is not ProposalStatus.VOTING:
        raise VotingClosedError(f"proposal {body.proposal_id} is {proposal.status.name}")
    return evolve(state, votes=state.votes.set((body.proposal_id, voter), body.option))


def tally(state: LedgerState, proposal_id: int) -> TallyResult:
    """Stake behind each option of ``proposal_id`` now (see the module docstring)."""
    bonded = [state.validators[member.address] for member in state.validator_sets[1].validators]
    totals = dict.fromkeys(VoteOption, 0)
    deducted = {record.address: 0 for record in bonded}
    validator_votes: dict[bytes, VoteOption] = {}
    for (voted_on, voter), option in state.votes.items():
        if voted_on != proposal_id:
            continue
        if voter in deducted:
            validator_votes[voter] = option
        for record in bonded:
            delegation = state.delegations.get((voter, record.address))
            if delegation is None or record.shares == 0:
                continue
            totals[option] += delegation.shares * record.tokens // record.shares
            deducted[record.address] += delegation.shares
    for record in bonded:
        option_of_validator = validator_votes.get(record.address)
        if option_of_validator is None or record.shares == 0:
            continue
        remaining = record.shares - deducted[record.address]
        totals[option_of_validator] += remaining * record.tokens // record.shares
    return TallyResult(
        yes=totals[VoteOption.YES],
        abstain=totals[VoteOption.ABSTAIN],
        no=totals[VoteOption.NO],
        no_with_veto=totals[VoteOption.NO_WITH_VETO],
        bonded=sum(record.tokens for record in bonded),
    )


def decide(
    result: TallyResult, quorum_rate: int, threshold_rate: int, veto_rate: int
) -> ProposalStatus:
    """The outcome of a tally under the three rates (rules 1-3 of the module docstring)."""
    voted = result.voted
    if result.bonded == 0 or voted * RATE_ONE < quorum_rate * result.bonded:
        return ProposalStatus.FAILED_QUORUM
    if result.no_with_veto * RATE_ONE > veto_rate * voted:
        return ProposalStatus.VETOED
    deciding = result.yes + result.no + result.no_with_veto
    if deciding and result.yes * RATE_ONE > threshold_rate * deciding:
        return ProposalStatus.PASSED
    return ProposalStatus.REJECTED


def end_block(state: LedgerState, height: int) -> LedgerState:
    """Close every proposal whose voting period ends at ``height``: tally, decide, execute."""
    for proposal_id in state.active_proposals:
        proposal = state.proposals[proposal_id]
        if proposal.voting_end_height <= height:
            state = _close(state, proposal)
    return state


def _close(state: LedgerState, proposal: Proposal) -> LedgerState:
    params = state.params
    result = tally(state, proposal.proposal_id)
    status = decide(result, params.quorum_rate, params.threshold_rate, params.veto_threshold_rate)
    if status is ProposalStatus.PASSED:
        try:
            executed = apply_content(state, proposal.content)
            state_hash(executed)  # the result must stay encodable, or no later block would be
            state = executed
        except (LedgerError, CanonicalEncodingError):
            # Whatever the content does wrong, the proposal fails here, on every node alike,
            # and the chain goes on: execution never raises out of a block.
            status = ProposalStatus.FAILED_EXECUTION
    if status in (ProposalStatus.VETOED, ProposalStatus.FAILED_QUORUM):
        burned = state.supply.burned + proposal.deposit
        state = evolve(state, supply=dataclasses.replace(state.supply, burned=burned))
    else:
        state = credit(state, proposal.proposer, proposal.deposit)
    votes = state.votes
    for key in state.votes:
        if key[0] == proposal.proposal_id:
            votes = votes.remove(key)
    closed = dataclasses.replace(proposal, status=status, tally=result)
    return evolve(
        state,
        proposals=state.proposals.set(proposal.proposal_id, closed),
        active_proposals=tuple(i for i in state.active_proposals if i != proposal.proposal_id),
        votes=votes,
    )
