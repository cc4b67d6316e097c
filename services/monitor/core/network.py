"""The monitor's view of the chain and its validators, folded from ``chain.consensus`` and
``chain.blocks`` (and, when the monitor follows the ledger, the validators' ledger records).

Judging a height. Block ``h``'s certificate holds the precommits counted when the quorum was
reached; a live validator whose precommit came a moment later is absent from it. So a height is
judged once ``chain.consensus`` has moved ``judge_lag_blocks`` heights past it: a validator of
the set *signed* height ``h`` when its precommit is in the certificate of ``h``, in the
``last_commit`` that block ``h + 1`` carries, or was logged on ``chain.consensus`` for height
``h``; otherwise it *missed* it. A round before the deciding one *timed out* when no proposal of
that round was logged, and the validator whose turn it was (``BlockSeen.round_proposers``,
known when the ledger is followed) is charged with it.

Waiting on the consensus log (one partition, one order) rather than on later blocks makes the
judgement independent of how the two topics interleave, which matters when the monitor reads
a backlog of both after a restart. Without any consensus record (the topic unreadable), heights
are judged ``FALLBACK_LAG`` blocks later on the certificates alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar, assert_never

from protocol.pulse import PulseStatus, is_random
from services.monitor.core.facts import (
    BlockRejected,
    BlockSeen,
    ChainFact,
    PrecommitSeen,
    ProposalSeen,
    ValidatorStatusSeen,
)
from services.monitor.core.policy import MonitorPolicy
from services.monitor.core.positions import Positions
from services.monitor.core.windows import Counts, Samples

T = TypeVar("T")
MAX_AHEAD = 10_000  # consensus heights remembered beyond the newest block
FALLBACK_LAG = 64
KEEP_INTERVALS = 21  # block intervals kept to learn the block period (odd: one median)


@dataclass(frozen=True, slots=True)
class ValidatorState:
    address: str
    in_set: bool = True
    last_signed_height: int = 0
    missed: Counts = field(default_factory=Counts)
    proposal_timeouts: Counts = field(default_factory=Counts)
    slashes: Counts = field(default_factory=Counts)
    jailed: bool = False
    jailed_since_ms: int | None = None
    tombstoned: bool = False
    tokens: int | None = None  # known when the ledger is followed


@dataclass(frozen=True, slots=True)
class Judgement:
    """A finalized height waiting to be judged (see the module doc)."""

    height: int
    round: int
    at_ms: int
    validators: tuple[str, ...]
    signed: tuple[str, ...]
    round_proposers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NetworkState:
    positions: Positions = field(default_factory=dict)
    height: int = 0
    last_block_ms: int | None = None
    intervals: tuple[int, ...] = ()
    finality_ms: Samples = field(default_factory=Samples)
    late_rounds: Counts = field(default_factory=Counts)
    unattributed_timeouts: Counts = field(default_factory=Counts)
    rejected: BlockRejected | None = None
    # the latest block's pulse when it is not random (protocol.pulse), and since when
    not_random: BlockSeen | None = None
    not_random_since_ms: int | None = None
    consensus_height: int = 0  # the highest height seen on chain.consensus
    judged_height: int = 0  # every height up to this one is judged
    validators: Mapping[str, ValidatorState] = field(default_factory=dict)
    precommits: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    proposals: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    pending: tuple[Judgement, ...] = ()


def _remember(mapping: Mapping[int, tuple[T, ...]], height: int, item: T
              ) -> dict[int, tuple[T, ...]]:
    items = mapping.get(height, ())
    return dict(mapping) if item in items else {**mapping, height: (*items, item)}


def _consensus(policy: MonitorPolicy, state: NetworkState, height: int) -> NetworkState:
    if height > state.consensus_height:
        return _judge_due(policy, replace(state, consensus_height=height))
    return state


def _precommit(policy: MonitorPolicy, state: NetworkState, vote: PrecommitSeen) -> NetworkState:
    if state.judged_height < vote.height <= state.height + MAX_AHEAD:
        state = replace(state, precommits=_remember(state.precommits, vote.height,
                                                    vote.validator))
    return _consensus(policy, state, vote.height)


def _proposal(policy: MonitorPolicy, state: NetworkState, proposal: ProposalSeen
              ) -> NetworkState:
    if state.judged_height < proposal.height <= state.height + MAX_AHEAD:
        state = replace(state, proposals=_remember(state.proposals, proposal.height,
                                                   proposal.round))
    return _consensus(policy, state, proposal.height)


def _judge_due(policy: MonitorPolicy, state: NetworkState) -> NetworkState:
    """Judge every pending height the consensus log has moved far enough past."""
    due = max(state.consensus_height - policy.judge_lag_blocks, state.height - FALLBACK_LAG)
    ready = [j for j in state.pending if j.height <= due]
    if not ready:
        return state
    for judgement in ready:
        state = _judge(policy, state, judgement)
    judged = max(state.judged_height, max(j.height for j in ready))
    return replace(
        state,
        pending=tuple(j for j in state.pending if j.height > due),
        judged_height=judged,
        precommits={h: v for h, v in state.precommits.items() if h > judged},
        proposals={h: v for h, v in state.proposals.items() if h > judged},
    )


def _judge(policy: MonitorPolicy, state: NetworkState, judgement: Judgement) -> NetworkState:
    window = policy.validator_window
    seen = set(judgement.signed) | set(state.precommits.get(judgement.height, ()))
    validators = dict(state.validators)
    for address in judgement.validators:
        record = validators.get(address, ValidatorState(address))
        if address in seen:
            record = replace(record, last_signed_height=max(record.last_signed_height,
                                                            judgement.height))
        else:
            record = replace(record, missed=record.missed.add(window, judgement.at_ms))
        validators[address] = record
    proposed = set(state.proposals.get(judgement.height, ()))
    unattributed = state.unattributed_timeouts
    for round_ in range(judgement.round):
        if round_ in proposed:
            continue
        if round_ < len(judgement.round_proposers):
            address = judgement.round_proposers[round_]
            record = validators.get(address, ValidatorState(address))
            validators[address] = replace(record, proposal_timeouts=record.proposal_timeouts.add(
                window, judgement.at_ms))
        else:
            unattributed = unattributed.add(window, judgement.at_ms)
    return replace(state, validators=validators, unattributed_timeouts=unattributed)


def _block(policy: MonitorPolicy, state: NetworkState, block: BlockSeen) -> NetworkState:
    if block.height <= state.height:
        return state  # a duplicate (two tallies, a retry) or an old block: already judged
    # The previous height's late precommits, carried by this block, count as signatures.
    pending = tuple(
        replace(j, signed=tuple(dict.fromkeys((*j.signed, *block.previous_signed))))
        if j.height == block.height - 1 else j
        for j in state.pending
    )
    pending += (Judgement(block.height, block.round, block.finalized_at_ms, block.validators,
                          block.signed, block.round_proposers),)
    validators = dict(state.validators)
    members = set(block.validators)
    for address in block.validators:
        validators.setdefault(address, ValidatorState(address))
    for address, record in validators.items():
        if record.in_set != (address in members):
            validators[address] = replace(record, in_set=address in members)
    for address in block.double_signers:
        record = validators.get(address, ValidatorState(address, in_set=False))
        validators[address] = replace(record, slashes=record.slashes.add(
            policy.slash_window, block.finalized_at_ms))
    intervals = state.intervals
    if state.last_block_ms is not None and block.height == state.height + 1:
        interval = max(0, block.finalized_at_ms - state.last_block_ms)
        intervals = (*intervals, interval)[-KEEP_INTERVALS:]
    finality = max(0, block.finalized_at_ms - block.proposed_at_ms)
    window = policy.chain_window
    state = replace(
        state,
        pending=pending,
        height=block.height,
        last_block_ms=max(block.finalized_at_ms, state.last_block_ms or 0),
        intervals=intervals,
        finality_ms=state.finality_ms.add(window, block.finalized_at_ms, finality),
        late_rounds=(state.late_rounds.add(window, block.finalized_at_ms) if block.round > 0
                     else state.late_rounds),
        rejected=None if state.rejected and block.height > state.rejected.height
        else state.rejected,
        validators=validators,
        not_random=None if is_random(PulseStatus(block.pulse_status)) else block,
        not_random_since_ms=(None if is_random(PulseStatus(block.pulse_status))
                             else state.not_random_since_ms or block.finalized_at_ms),
    )
    return _judge_due(policy, state)


def _status(policy: MonitorPolicy, state: NetworkState, status: ValidatorStatusSeen
            ) -> NetworkState:
    record = state.validators.get(status.validator, ValidatorState(status.validator,
                                                                   in_set=False))
    newly_jailed = status.jailed and not record.jailed
    slashed = (newly_jailed and not status.tombstoned and record.tokens is not None
               and status.tokens < record.tokens)  # downtime: jailed and slashed at once
    updated = replace(
        record,
        jailed=status.jailed,
        jailed_since_ms=(status.at_ms if newly_jailed else
                         record.jailed_since_ms if status.jailed else None),
        tombstoned=status.tombstoned,
        tokens=status.tokens,
        slashes=record.slashes.add(policy.slash_window, status.at_ms) if slashed
        else record.slashes,
    )
    return replace(state, validators={**state.validators, status.validator: updated})


def evolve(policy: MonitorPolicy, state: NetworkState, fact: ChainFact) -> NetworkState:
    """Fold one chain fact into the state."""
    match fact:
        case PrecommitSeen():
            return _precommit(policy, state, fact)
        case ProposalSeen():
            return _proposal(policy, state, fact)
        case BlockSeen():
            return _block(policy, state, fact)
        case BlockRejected():
            return replace(state, rejected=fact)
        case ValidatorStatusSeen():
            return _status(policy, state, fact)
        case _:
            assert_never(fact)


def block_period_ms(policy: MonitorPolicy, state: NetworkState) -> int:
    """The expected time between blocks: configured, or the median of recent intervals."""
    if policy.block_period_ms is not None:
        return policy.block_period_ms
    if not state.intervals:
        return policy.min_block_period_ms
    ordered = sorted(state.intervals)
    return max(policy.min_block_period_ms, ordered[len(ordered) // 2])
