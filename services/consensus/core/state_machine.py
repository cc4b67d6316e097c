"""The Tendermint round state machine, pure: ``handle(config, logic, state, event)`` returns the
new state and the outputs. No clock, no randomness, no I/O: timeouts are events the shell
schedules and feeds back, time and entropy arrive inside blocks.

It follows Algorithm 1 of Buchman, Kwon, Milosevic, "The latest gossip on BFT consensus"
(arXiv:1807.04938); the line numbers below are the paper's. Quorums are stake-weighted and
integer-only: "2f+1" is ``ValidatorSet.has_quorum`` (power * 3 > total * 2) and "f+1" is
``exceeds_one_third``.

    L11 StartRound(r): proposer proposes validValue (or a new block) with validRound;
        others schedule timeoutPropose(r).
    L22 on PROPOSAL(h,r,v,-1) in step propose: prevote v if valid and (unlocked or locked on v).
    L28 on PROPOSAL(h,r,v,vr) + 2f+1 PREVOTE(h,vr,v), 0 <= vr < r, step propose: prevote v if
        valid and (lockedRound <= vr or locked on v), else nil.
    L34 on 2f+1 PREVOTE(h,r,*) in step prevote, first time: schedule timeoutPrevote(r).
    L36 on block v + 2f+1 PREVOTE(h,r,v), v valid, step >= prevote, first time: if in prevote,
        lock on v and precommit v; in any case validValue = v, validRound = r.
    L44 on 2f+1 PREVOTE(h,r,nil) in step prevote: precommit nil.
    L47 on 2f+1 PRECOMMIT(h,r,*), first time: schedule timeoutPrecommit(r).
    L49 on block v + 2f+1 PRECOMMIT(h,r',v) for any round r': decide v (with its certificate).
    L55 on messages of round r > current round from validators with > 1/3 power: StartRound(r).
    L57-65 timeouts: propose -> prevote nil; prevote -> precommit nil; precommit -> next round.

Two deliberate choices, both safe:
- L49 decides on +2/3 precommits without re-running the local ``valid`` check. Honest
  precommitters validated the block; some rules (entropy age) depend on a node's view, and a
  node that saw entropy earlier must not refuse to follow a decided chain.
- The proposal message of the current round is not required for L36/L49: any block the node
  knows with the quorum's hash is used, as CometBFT does with its block parts.

Messages enter verified: the machine checks each signature (through ``config.check``, which the
simulator replaces by a shared cache) and membership before counting. Messages of height + 1 are
buffered and replayed when that height starts; older or farther ones are rejected with a reason
(the shell sends those to a DLQ). Conflicting votes become ``EvidenceDetected``.

Bounded work per message, whatever it claims (a hostile writer of ``chain.consensus`` or a
Byzantine validator must not stall everyone):

- cheap checks first: a round more than ``MAX_ROUNDS_AHEAD`` beyond the machine's own round is
  refused before anything else; then membership, then the signature; only a signed message of
  an admissible round asks who proposes that round (``ProposerSchedule``: each round once);
- rounds held are bounded: up to the current round + 1, plus at most two catch-up rounds per
  validator (``vote_set.HeightVoteSet``), so the upon-rules scan a bounded number of rounds;
- the buffer of height + 1 holds only messages that verify against that height's set (given by
  ``StartHeight.next_validators``), at most ``max_future_per_validator`` per validator.

``commit_for_next_height`` gives the certificate the next block carries as ``last_commit``: the
decision's, completed with every precommit of the deciding round that arrived after the quorum
(see ``services/consensus/node.py`` for the commit window that waits for them).

A node without a key, or whose key is not in the set, follows consensus without signing (an
observer: the tally, the audit).

``handle_votes(config, logic, state, votes)`` is ``handle`` over a run of votes, returning at the
first vote with outputs: the same states and outputs, with one state built per run of counted
votes instead of one per vote (a validator's poll of a large network is mostly such votes).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import Enum, IntEnum
from typing import Protocol, assert_never

from protocol.block import Block
from protocol.commit import CommitCertificate, CommitFlag, CommitSig, verify_commit
from protocol.evidence import DuplicateVoteEvidence
from protocol.keys import SignatureCheck, SigningKey, default_signature_check
from protocol.messages import Vote, VoteType
from protocol.proposal import Message, Proposal
from protocol.proposer import ProposerPriorities, ProposerSchedule, next_height
from protocol.validators import Validator, ValidatorSet
from services.consensus.core.signer import DoubleSignError, SignerState, SignStep
from services.consensus.core.vote_set import (
    NIL_KEY,
    HeightVoteSet,
    VoteSetBuilder,
    VoteSetError,
)

# Rounds a message may lie beyond the machine's own before it is refused unread. Honest nodes
# see each other's rounds within one or two of their own (a node that is behind skips ahead on
# more than a third of the power, L55), and reaching round 100 at one height takes hours of
# growing timeouts; a bound is what keeps proposer selection (O(round)) out of an attacker's
# hands (see protocol/proposer.py).
MAX_ROUNDS_AHEAD = 100


class Step(IntEnum):
    NEW = 0  # height known, round 0 not started yet
    PROPOSE = 1
    PREVOTE = 2
    PRECOMMIT = 3
    COMMITTED = 4  # decided; waiting for StartHeight(height + 1)


class TimeoutStep(IntEnum):
    PROPOSE = 1
    PREVOTE = 2
    PRECOMMIT = 3


@dataclass(frozen=True, slots=True)
class TimeoutParams:
    """Timeout of round r = base + r * delta, so rounds grow until the network is synchronous."""

    propose_ms: int = 3000
    propose_delta_ms: int = 500
    prevote_ms: int = 1000
    prevote_delta_ms: int = 500
    precommit_ms: int = 1000
    precommit_delta_ms: int = 500

    def duration(self, step: TimeoutStep, round: int) -> int:
        if step is TimeoutStep.PROPOSE:
            return self.propose_ms + round * self.propose_delta_ms
        if step is TimeoutStep.PREVOTE:
            return self.prevote_ms + round * self.prevote_delta_ms
        return self.precommit_ms + round * self.precommit_delta_ms


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class StartHeight:
    """Begin ``height`` under ``validators`` (after the previous block was applied);
    ``next_validators`` (the set of height + 1, when known) lets the machine verify the early
    messages of the next height before it buffers them."""

    height: int
    validators: ValidatorSet
    next_validators: ValidatorSet | None = None


@dataclass(frozen=True, slots=True)
class ProposalReceived:
    proposal: Proposal


@dataclass(frozen=True, slots=True)
class VoteReceived:
    vote: Vote


@dataclass(frozen=True, slots=True)
class TimeoutFired:
    height: int
    round: int
    step: TimeoutStep


@dataclass(frozen=True, slots=True)
class CommitReceived:
    """A decided block with its certificate (from qs.chain.blocks): lets a node that missed
    the votes catch up. Accepted only if the certificate verifies against the current set."""

    block: Block
    commit: CommitCertificate


Event = StartHeight | ProposalReceived | VoteReceived | TimeoutFired | CommitReceived


# ---------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class Broadcast:
    message: Message


@dataclass(frozen=True, slots=True)
class ScheduleTimeout:
    height: int
    round: int
    step: TimeoutStep
    duration_ms: int


@dataclass(frozen=True, slots=True)
class Decided:
    height: int
    round: int
    block: Block
    commit: CommitCertificate


@dataclass(frozen=True, slots=True)
class EvidenceDetected:
    evidence: DuplicateVoteEvidence


class RejectionKind(Enum):
    """Why the machine refused an input, as a type the shell can decide on (the value is the
    stable dead-letter error type)."""

    INVALID = "rejected_by_core"  # wrong height, proposer, signature, membership, ...
    FUTURE_BUFFER_FULL = "future_buffer_full"  # valid maybe, but no room to keep it yet
    INVALID_BLOCK = "invalid_block"  # a well-formed proposal whose block this node refuses


@dataclass(frozen=True, slots=True)
class MessageRejected:
    event: Event
    reason: str
    kind: RejectionKind = RejectionKind.INVALID


Output = Broadcast | ScheduleTimeout | Decided | EvidenceDetected | MessageRejected


# ---------------------------------------------------------------- configuration and state


class BlockLogic(Protocol):
    """What the machine needs from the node's block builder (bound to the node's chain tip)."""

    def propose(self, height: int, round: int) -> Block:
        """A new block for (height, round), built by this node."""
        ...

    def validate(self, block: Block) -> str | None:
        """None when ``block`` is a valid proposal for its height, else the reason."""
        ...


@dataclass(frozen=True, slots=True)
class ConsensusConfig:
    chain_id: str
    key: SigningKey | None  # None: observe only
    timeouts: TimeoutParams = TimeoutParams()
    check: SignatureCheck = default_signature_check
    max_future_messages: int = 10_000
    max_future_per_validator: int = 64

    @property
    def address(self) -> bytes | None:
        return None if self.key is None else self.key.address


@dataclass(frozen=True, slots=True)
class ConsensusState:
    height: int
    round: int
    step: Step
    validators: ValidatorSet
    priorities: ProposerPriorities
    votes: HeightVoteSet
    signer: SignerState = field(default_factory=SignerState)
    locked_block: Block | None = None
    locked_round: int = -1
    valid_block: Block | None = None
    valid_round: int = -1
    proposals: Mapping[int, Proposal] = field(default_factory=dict)  # round -> first proposal
    blocks: Mapping[bytes, Block] = field(default_factory=dict)  # hash -> block seen proposed
    validity: Mapping[bytes, str | None] = field(default_factory=dict)  # hash -> reason / None
    done: frozenset[tuple[str, int]] = frozenset()  # "first time" guards (rule, round)
    decision: Decided | None = None
    future: tuple[Event, ...] = ()  # messages of height + 1
    future_senders: Mapping[bytes, int] = field(default_factory=dict)  # per sender, in ``future``
    next_validators: ValidatorSet | None = None  # the set of height + 1, when known
    # Proposers of this height, computed on demand (a cache: not part of the state's value).
    schedule: ProposerSchedule | None = field(default=None, compare=False, repr=False)


_STATE_FIELDS = tuple(f.name for f in fields(ConsensusState))
_VOTES_AT = _STATE_FIELDS.index("votes")
_state_values = operator.attrgetter(*_STATE_FIELDS)


def _with_votes(state: ConsensusState, votes: HeightVoteSet) -> ConsensusState:
    """``replace(state, votes=votes)`` in half the time (the path of every counted vote):
    ``dataclasses.replace`` reads each field by name and goes through keyword arguments."""
    values = list(_state_values(state))
    values[_VOTES_AT] = votes
    return ConsensusState(*values)


def initial_state(
    height: int,
    validators: ValidatorSet,
    priorities: ProposerPriorities,
    signer: SignerState | None = None,
) -> ConsensusState:
    """A machine waiting for ``StartHeight(height, validators)``. ``signer`` is the persisted
    double-sign protection state when a validator restarts."""
    return ConsensusState(
        height=height,
        round=0,
        step=Step.NEW,
        validators=validators,
        priorities=priorities,
        votes=HeightVoteSet(height, validators),
        signer=signer or SignerState(),
        schedule=ProposerSchedule(priorities, validators),
    )


def proposer_of(state: ConsensusState, round: int) -> bytes:
    schedule = state.schedule
    if schedule is None:
        schedule = ProposerSchedule(state.priorities, state.validators)
        object.__setattr__(state, "schedule", schedule)  # a cache (see the field)
    return schedule.proposer(round)


def commit_for_next_height(state: ConsensusState) -> CommitCertificate | None:
    """The certificate of the decided block to carry as the next block's ``last_commit``: the
    decision's, with every validator it records as absent filled in from the precommits of the
    deciding round counted since (for the block, or for nil). Each added record is a precommit
    whose signature the machine verified, so the result verifies wherever the decision's does,
    with the same round and block; None before a decision."""
    decision = state.decision
    if decision is None:
        return None
    commit = decision.commit
    precommits = state.votes.get(commit.round, VoteType.PRECOMMIT)
    records: list[CommitSig] = []
    for record in commit.signatures:
        if record.flag is CommitFlag.ABSENT:
            address = record.validator_address
            for_block = precommits.vote_for(address, commit.block_hash)
            for_nil = precommits.vote_for(address, None)
            if for_block is not None:
                record = CommitSig(CommitFlag.COMMIT, address, for_block.signature)
            elif for_nil is not None:
                record = CommitSig(CommitFlag.NIL, address, for_nil.signature)
        records.append(record)
    if tuple(records) == commit.signatures:
        return commit
    return CommitCertificate(commit.height, commit.round, commit.block_hash, tuple(records))


def all_precommits_in(state: ConsensusState) -> bool:
    """Every validator's precommit of the deciding round is counted (nothing left to wait
    for in the commit window)."""
    decision = state.decision
    if decision is None:
        return False
    return len(state.votes.get(decision.round, VoteType.PRECOMMIT).votes) == len(state.validators)


def precommits_in(state: ConsensusState, addresses: Iterable[bytes]) -> bool:
    """Each of ``addresses`` that is in the validator set has a precommit of the deciding round
    counted (for the block or for nil); False before a decision."""
    decision = state.decision
    if decision is None:
        return False
    counted = state.votes.get(decision.round, VoteType.PRECOMMIT).votes
    return all(address in counted for address in addresses if address in state.validators)


# ---------------------------------------------------------------- the transition function


def handle(
    config: ConsensusConfig, logic: BlockLogic, state: ConsensusState, event: Event
) -> tuple[ConsensusState, tuple[Output, ...]]:
    """Apply one input. Deterministic in (config, logic answers, state, event)."""
    out: list[Output] = []
    match event:
        case StartHeight():
            state = _on_start_height(config, logic, state, event, out)
        case VoteReceived():
            before = state
            state = _on_message(config, state, event, out)
            if not _may_enable_rules(before, state, event.vote):
                return state, tuple(out)
        case ProposalReceived():
            state = _on_message(config, state, event, out)
        case TimeoutFired():
            state = _on_timeout(config, logic, state, event, out)
        case CommitReceived():
            state = _on_commit(config, state, event, out)
        case _:
            assert_never(event)
    state = _run_rules(config, logic, state, out)
    return state, tuple(out)


def _may_enable_rules(before: ConsensusState, after: ConsensusState, vote: Vote) -> bool:
    """Whether counting ``vote`` may have enabled an upon-rule, so ``_run_rules`` must look.

    Every ``handle`` ends with the rules at their fixpoint, and what they read of the votes is
    thresholds only: +2/3 of a set's power (L34, L47), +2/3 for one value (L28, L36, L44, L49),
    +1/3 seen in a round beyond the current one (L55). A vote of a round held so far that
    crosses neither threshold of its own set changes none of them, so no rule can have become
    enabled: skipping the scan gives the same state and outputs, and saves most of what a vote
    costs the machine in a large network (the scan reads every round's sets)."""
    if after.votes is before.votes:
        return False  # refused, a re-delivery, or buffered for the next height
    if vote.round > before.round:
        return True
    old = before.votes.get(vote.round, vote.vote_type)
    new = after.votes.get(vote.round, vote.vote_type)
    quorum = after.validators.has_quorum
    key = vote.block_key
    return (quorum(old.power) != quorum(new.power)
            or quorum(old.power_by_value.get(key, 0)) != quorum(new.power_by_value.get(key, 0)))


def handle_votes(
    config: ConsensusConfig, logic: BlockLogic, state: ConsensusState, votes: Sequence[Vote]
) -> tuple[ConsensusState, tuple[Output, ...], int]:
    """``handle`` of ``VoteReceived(vote)`` for each of ``votes`` in order, up to and including
    the first vote that has outputs: the state after it, its outputs (empty when no vote had
    any) and how many votes were handled. The states and outputs are the fold's (a hypothesis
    test holds them equal).

    Why: most votes of a large network count towards one set and change nothing else, and
    ``handle`` makes a new vote set, height vote set and state for each of them, about half of
    what the core spends on a vote. Here a run of such votes of one (round, type) is counted
    into one ``VoteSetBuilder`` and the state is built once: when the run ends, when a vote
    crosses a threshold (then the rules run, where ``_may_enable_rules`` has ``handle`` run
    them), and before any vote this path leaves to ``handle``: a machine not started, another
    height, a round beyond the current one, a non-member, a validator's second vote in the set
    (a re-delivery or an equivocation)."""
    run: VoteSetBuilder | None = None
    quorum = state.validators.has_quorum
    for at, vote in enumerate(votes):
        if run is not None and (vote.round != run.base.round
                                or vote.vote_type is not run.base.vote_type):
            state, run = _with_run(state, run), None
        validator = _countable(state, vote, run)
        if validator is None:
            if run is not None:
                state, run = _with_run(state, run), None
            state, outputs = handle(config, logic, state, VoteReceived(vote))
            quorum = state.validators.has_quorum
            if outputs:
                return state, outputs, at + 1
            continue
        if not config.check(validator.public_key, vote.sign_bytes(config.chain_id),
                            vote.signature):
            if run is not None:
                state = _with_run(state, run)
            return state, (_bad_vote_signature(VoteReceived(vote), vote),), at + 1
        if run is None:
            run = VoteSetBuilder(state.votes.get(vote.round, vote.vote_type))
        key = vote.block_key
        set_before, value_before = run.power, run.power_by_value.get(key, 0)
        run.first_vote(vote, validator.power)
        if (quorum(set_before) != quorum(run.power)
                or quorum(value_before) != quorum(run.power_by_value[key])):
            state, run = _with_run(state, run), None
            out: list[Output] = []
            state = _run_rules(config, logic, state, out)
            quorum = state.validators.has_quorum
            if out:
                return state, tuple(out), at + 1
    if run is not None:
        state = _with_run(state, run)
    return state, (), len(votes)


def _countable(state: ConsensusState, vote: Vote, run: VoteSetBuilder | None
               ) -> Validator | None:
    """The voter, when ``handle_votes`` may count ``vote`` itself (its doc); else None."""
    votes = state.votes
    if (state.step is Step.NEW or vote.height != state.height or vote.round > state.round
            or votes.height != state.height or vote.round > votes.round + 1
            or votes.validators is not state.validators):
        return None
    counted: Mapping[bytes, Vote]
    if run is not None:
        counted = run.votes
    else:
        existing = votes.sets.get((vote.round, vote.vote_type))
        counted = existing.votes if existing is not None else {}
    if vote.validator_address in counted:
        return None
    return state.validators.get(vote.validator_address)


def _with_run(state: ConsensusState, run: VoteSetBuilder) -> ConsensusState:
    return _with_votes(state, state.votes.with_set(run.build()))


def _bad_vote_signature(event: Event, vote: Vote) -> MessageRejected:
    return MessageRejected(event, f"bad vote signature from {vote.validator_address.hex()}")


def _on_start_height(
    config: ConsensusConfig,
    logic: BlockLogic,
    state: ConsensusState,
    event: StartHeight,
    out: list[Output],
) -> ConsensusState:
    if state.step is Step.NEW and event.height == state.height:
        buffered: tuple[Event, ...] = state.future
        state = replace(
            state,
            validators=event.validators,
            votes=HeightVoteSet(event.height, event.validators),
            future=(),
            future_senders={},
            next_validators=event.next_validators,
            schedule=ProposerSchedule(state.priorities, event.validators),
        )
    elif state.step is Step.COMMITTED and event.height == state.height + 1:
        buffered = state.future
        priorities = next_height(state.priorities, state.validators, event.validators)
        state = ConsensusState(
            height=event.height,
            round=0,
            step=Step.NEW,
            validators=event.validators,
            priorities=priorities,
            votes=HeightVoteSet(event.height, event.validators),
            signer=state.signer,
            next_validators=event.next_validators,
            schedule=ProposerSchedule(priorities, event.validators),
        )
    else:
        out.append(
            MessageRejected(event, f"cannot start height {event.height} at {state.height} "
                                   f"in step {state.step.name.lower()}")
        )
        return state
    state = _start_round(config, logic, state, 0, out)
    for message in buffered:
        assert isinstance(message, ProposalReceived | VoteReceived)
        state = _on_message(config, state, message, out)
        state = _run_rules(config, logic, state, out)
    return state


def _on_message(
    config: ConsensusConfig,
    state: ConsensusState,
    event: ProposalReceived | VoteReceived,
    out: list[Output],
) -> ConsensusState:
    message: Message = event.proposal if isinstance(event, ProposalReceived) else event.vote
    waiting = state.step is Step.NEW and message.height == state.height
    if waiting or message.height == state.height + 1:
        return _buffer(config, state, event, message,
                       state.validators if waiting else state.next_validators, out)
    if message.height != state.height:
        out.append(
            MessageRejected(event, f"message of height {message.height} at height {state.height}")
        )
        return state
    if message.round > state.round + MAX_ROUNDS_AHEAD:
        out.append(MessageRejected(event, f"round {message.round} lies more than "
                                          f"{MAX_ROUNDS_AHEAD} rounds beyond round {state.round}"))
        return state
    if isinstance(message, Proposal):
        return _on_proposal(config, state, event, message, out)
    return _on_vote(config, state, event, message, out)


def _sender(message: Message) -> bytes:
    return message.proposer_address if isinstance(message, Proposal) else (
        message.validator_address)


def _buffer(
    config: ConsensusConfig,
    state: ConsensusState,
    event: ProposalReceived | VoteReceived,
    message: Message,
    validators: ValidatorSet | None,
    out: list[Output],
) -> ConsensusState:
    """Keep a message of a height that has not started, verified when its set is known."""
    sender = _sender(message)
    reason = None
    if message.round > MAX_ROUNDS_AHEAD:
        reason = f"round {message.round} lies more than {MAX_ROUNDS_AHEAD} rounds ahead"
    elif validators is not None:
        validator = validators.get(sender)
        if validator is None:
            reason = f"{sender.hex()} is not a validator at height {message.height}"
        elif not config.check(validator.public_key, message.sign_bytes(config.chain_id),
                              message.signature):
            reason = f"bad signature from {sender.hex()} (height {message.height})"
    if reason is not None:
        out.append(MessageRejected(event, reason))
        return state
    held = state.future_senders.get(sender, 0)
    if len(state.future) >= config.max_future_messages or (
            held >= config.max_future_per_validator):
        out.append(MessageRejected(event, f"future-message buffer is full (for {sender.hex()})",
                                   RejectionKind.FUTURE_BUFFER_FULL))
        return state
    senders = dict(state.future_senders)
    senders[sender] = held + 1
    return replace(state, future=(*state.future, event), future_senders=senders)


def _on_proposal(
    config: ConsensusConfig,
    state: ConsensusState,
    event: Event,
    proposal: Proposal,
    out: list[Output],
) -> ConsensusState:
    # Cheap checks before the work the claimed round asks for (module doc): membership, the
    # round window, the signature; only then who proposes that round.
    sender = proposal.proposer_address
    validator = state.validators.get(sender)
    if validator is None:
        out.append(MessageRejected(event, f"proposal for {proposal.height}/{proposal.round} "
                                          f"from {sender.hex()}, which is not a validator"))
        return state
    if not state.votes.admits(proposal.round, sender):
        out.append(MessageRejected(event, f"proposal for round {proposal.round}, beyond round "
                                          f"{state.round} + 1, from {sender.hex()} which "
                                          "opened its catch-up rounds already"))
        return state
    known = state.proposals.get(proposal.round)
    if known is not None:
        if known.block_hash != proposal.block_hash:
            out.append(MessageRejected(event, "a second, different proposal for this round"))
        return state
    if not config.check(
        validator.public_key, proposal.sign_bytes(config.chain_id), proposal.signature
    ):
        out.append(MessageRejected(event, f"bad proposal signature from {sender.hex()}"))
        return state
    expected = proposer_of(state, proposal.round)
    if sender != expected:
        out.append(
            MessageRejected(
                event,
                f"proposal for {proposal.height}/{proposal.round} from "
                f"{sender.hex()}, expected proposer {expected.hex()}",
            )
        )
        return state
    if proposal.block.height != proposal.height:
        out.append(MessageRejected(event, "proposal and its block disagree on the height"))
        return state
    return _store_proposal(replace(state, votes=state.votes.open_round(proposal.round, sender)),
                           proposal)


def _store_proposal(state: ConsensusState, proposal: Proposal) -> ConsensusState:
    proposals = dict(state.proposals)
    proposals[proposal.round] = proposal
    blocks = state.blocks
    if proposal.block_hash not in blocks:
        blocks = dict(blocks)
        blocks[proposal.block_hash] = proposal.block
    return replace(state, proposals=proposals, blocks=blocks)


def _on_vote(
    config: ConsensusConfig,
    state: ConsensusState,
    event: Event,
    vote: Vote,
    out: list[Output],
) -> ConsensusState:
    validator = state.validators.get(vote.validator_address)
    if validator is None:
        out.append(
            MessageRejected(event, f"{vote.validator_address.hex()} is not a validator")
        )
        return state
    existing = state.votes.get(vote.round, vote.vote_type).vote_for(
        vote.validator_address, vote.block_hash
    )
    if existing is not None and existing == vote:
        return state  # re-delivery: skip the signature check
    if not state.votes.admits(vote.round, vote.validator_address):
        out.append(MessageRejected(event, f"vote for round {vote.round}, beyond round "
                                          f"{state.round} + 1, from "
                                          f"{vote.validator_address.hex()} which opened its "
                                          "catch-up rounds already"))
        return state
    if not config.check(validator.public_key, vote.sign_bytes(config.chain_id), vote.signature):
        out.append(_bad_vote_signature(event, vote))
        return state
    return _add_vote(state, vote, out)


def _add_vote(state: ConsensusState, vote: Vote, out: list[Output]) -> ConsensusState:
    try:
        votes, result = state.votes.add(vote)
    except VoteSetError as exc:
        out.append(MessageRejected(VoteReceived(vote), str(exc)))
        return state
    if result.evidence is not None:
        out.append(EvidenceDetected(result.evidence))
    return state if votes is state.votes else _with_votes(state, votes)


def _on_timeout(
    config: ConsensusConfig,
    logic: BlockLogic,
    state: ConsensusState,
    event: TimeoutFired,
    out: list[Output],
) -> ConsensusState:
    if event.height != state.height or event.round != state.round:
        return state
    if event.step is TimeoutStep.PROPOSE and state.step is Step.PROPOSE:  # L57
        state = _cast(config, state, VoteType.PREVOTE, None, out)
        return replace(state, step=Step.PREVOTE)
    if event.step is TimeoutStep.PREVOTE and state.step is Step.PREVOTE:  # L61
        state = _cast(config, state, VoteType.PRECOMMIT, None, out)
        return replace(state, step=Step.PRECOMMIT)
    if event.step is TimeoutStep.PRECOMMIT and state.step in (
        Step.PROPOSE,
        Step.PREVOTE,
        Step.PRECOMMIT,
    ):  # L65
        return _start_round(config, logic, state, state.round + 1, out)
    return state


def _on_commit(
    config: ConsensusConfig, state: ConsensusState, event: CommitReceived, out: list[Output]
) -> ConsensusState:
    block, commit = event.block, event.commit
    if block.height != state.height or state.step in (Step.NEW, Step.COMMITTED):
        out.append(
            MessageRejected(
                event, f"commit for height {block.height} at {state.height} "
                       f"in step {state.step.name.lower()}"
            )
        )
        return state
    result = verify_commit(
        config.chain_id, block.hash, block.height, commit, state.validators, config.check
    )
    if not result.ok:
        out.append(MessageRejected(event, f"commit does not verify: {result.reason}"))
        return state
    decision = Decided(block.height, commit.round, block, commit)
    out.append(decision)
    return replace(state, step=Step.COMMITTED, decision=decision)


# ---------------------------------------------------------------- actions


def _cast(
    config: ConsensusConfig,
    state: ConsensusState,
    vote_type: VoteType,
    block_hash: bytes | None,
    out: list[Output],
) -> ConsensusState:
    """Sign, count and broadcast our vote (observers and non-members do nothing)."""
    if config.key is None or config.key.address not in state.validators:
        return state
    step = SignStep.PREVOTE if vote_type is VoteType.PREVOTE else SignStep.PRECOMMIT
    unsigned = Vote(vote_type, state.height, state.round, block_hash, config.key.address, b"")
    sign_bytes = unsigned.sign_bytes(config.chain_id)
    try:
        signer, signature = state.signer.sign(
            config.key, state.height, state.round, step, sign_bytes
        )
    except DoubleSignError:
        return state  # the protection held; staying silent is always safe
    vote = replace(unsigned, signature=signature)
    state = _add_vote(replace(state, signer=signer), vote, out)
    out.append(Broadcast(vote))
    return state


def _start_round(
    config: ConsensusConfig,
    logic: BlockLogic,
    state: ConsensusState,
    round: int,
    out: list[Output],
) -> ConsensusState:  # L11
    state = replace(state, round=round, step=Step.PROPOSE, votes=state.votes.at_round(round))
    me = config.address
    if me is not None and proposer_of(state, round) == me:
        block = state.valid_block or logic.propose(state.height, round)
        unsigned = Proposal(state.height, round, state.valid_round, block, me, b"")
        assert config.key is not None
        try:
            signer, signature = state.signer.sign(
                config.key,
                state.height,
                round,
                SignStep.PROPOSAL,
                unsigned.sign_bytes(config.chain_id),
            )
        except DoubleSignError:
            return state
        proposal = replace(unsigned, signature=signature)
        out.append(Broadcast(proposal))
        return _store_proposal(replace(state, signer=signer), proposal)
    out.append(
        ScheduleTimeout(
            state.height, round, TimeoutStep.PROPOSE,
            config.timeouts.duration(TimeoutStep.PROPOSE, round),
        )
    )
    return state


def _validity(
    logic: BlockLogic, state: ConsensusState, block: Block
) -> tuple[ConsensusState, bool]:
    if block.hash in state.validity:
        return state, state.validity[block.hash] is None
    reason = logic.validate(block)
    validity = dict(state.validity)
    validity[block.hash] = reason
    return replace(state, validity=validity), reason is None


def _decide(
    state: ConsensusState, round: int, block: Block, out: list[Output]
) -> ConsensusState:
    precommits = state.votes.get(round, VoteType.PRECOMMIT)
    records = []
    for validator in state.validators.validators:
        for_block = precommits.vote_for(validator.address, block.hash)
        for_nil = precommits.vote_for(validator.address, None)
        if for_block is not None:
            records.append(CommitSig(CommitFlag.COMMIT, validator.address, for_block.signature))
        elif for_nil is not None:
            records.append(CommitSig(CommitFlag.NIL, validator.address, for_nil.signature))
        else:
            records.append(CommitSig(CommitFlag.ABSENT, validator.address, b""))
    commit = CommitCertificate(state.height, round, block.hash, tuple(records))
    decision = Decided(state.height, round, block, commit)
    out.append(decision)
    return replace(state, step=Step.COMMITTED, decision=decision)


# ---------------------------------------------------------------- the upon-rules


def _run_rules(
    config: ConsensusConfig, logic: BlockLogic, state: ConsensusState, out: list[Output]
) -> ConsensusState:
    """Fire enabled rules until none is; each firing changes step, round or a guard, so this
    terminates (rounds only grow, and at most one round skip per distinct round seen)."""
    while state.step not in (Step.NEW, Step.COMMITTED):
        changed = (
            _rule_decide(state, out)
            or _rule_round_skip(config, logic, state, out)
            or _rule_proposal(config, logic, state, out)
            or _rule_prevote_quorum(config, logic, state, out)
            or _rule_timeouts(config, state, out)
        )
        if changed is None:
            break
        state = changed
    return state


def _rule_decide(state: ConsensusState, out: list[Output]) -> ConsensusState | None:  # L49
    for round in state.votes.rounds():
        value = state.votes.get(round, VoteType.PRECOMMIT).quorum_value()
        if value is not None and value != NIL_KEY and value in state.blocks:
            return _decide(state, round, state.blocks[value], out)
    return None


def _rule_round_skip(
    config: ConsensusConfig, logic: BlockLogic, state: ConsensusState, out: list[Output]
) -> ConsensusState | None:  # L55
    for round in reversed(state.votes.rounds()):
        if round <= state.round:
            break
        senders = set(state.votes.signers_in_round(round))
        if round in state.proposals:
            senders.add(state.proposals[round].proposer_address)
        power = sum(state.validators.power_of(address) for address in senders)
        if state.validators.exceeds_one_third(power):
            return _start_round(config, logic, state, round, out)
    return None


def _rule_proposal(
    config: ConsensusConfig, logic: BlockLogic, state: ConsensusState, out: list[Output]
) -> ConsensusState | None:  # L22 and L28
    if state.step is not Step.PROPOSE:
        return None
    proposal = state.proposals.get(state.round)
    if proposal is None:
        return None
    vr = proposal.pol_round
    if vr >= 0 and not state.votes.get(vr, VoteType.PREVOTE).has_quorum_for(
        proposal.block_hash
    ):
        return None  # L28 waits for the proof of lock
    state, valid = _validity(logic, state, proposal.block)
    locked_hash = None if state.locked_block is None else state.locked_block.hash
    if vr < 0:
        acceptable = state.locked_round == -1 or locked_hash == proposal.block_hash
    else:
        acceptable = state.locked_round <= vr or locked_hash == proposal.block_hash
    choice = proposal.block_hash if valid and acceptable else None
    if not valid:  # said once per proposal: the shell dead-letters it with the reason
        out.append(MessageRejected(ProposalReceived(proposal),
                                   f"invalid block {proposal.block_hash.hex()[:16]}: "
                                   f"{state.validity[proposal.block_hash]}",
                                   RejectionKind.INVALID_BLOCK))
    state = _cast(config, state, VoteType.PREVOTE, choice, out)
    return replace(state, step=Step.PREVOTE)


def _rule_prevote_quorum(
    config: ConsensusConfig, logic: BlockLogic, state: ConsensusState, out: list[Output]
) -> ConsensusState | None:  # L36 and L44
    prevotes = state.votes.get(state.round, VoteType.PREVOTE)
    value = prevotes.quorum_value()
    if value is None:
        return None
    if value == NIL_KEY:
        if state.step is not Step.PREVOTE:
            return None
        state = _cast(config, state, VoteType.PRECOMMIT, None, out)
        return replace(state, step=Step.PRECOMMIT)
    guard = ("lock", state.round)
    if state.step is Step.PROPOSE or guard in state.done or value not in state.blocks:
        return None
    block = state.blocks[value]
    state, valid = _validity(logic, state, block)
    if not valid:
        return replace(state, done=state.done | {guard})
    if state.step is Step.PREVOTE:
        state = replace(state, locked_block=block, locked_round=state.round)
        state = _cast(config, state, VoteType.PRECOMMIT, value, out)
        state = replace(state, step=Step.PRECOMMIT)
    return replace(state, valid_block=block, valid_round=state.round, done=state.done | {guard})


def _rule_timeouts(
    config: ConsensusConfig, state: ConsensusState, out: list[Output]
) -> ConsensusState | None:  # L34 and L47
    round = state.round
    prevote_guard = ("timeout_prevote", round)
    if (
        state.step is Step.PREVOTE
        and prevote_guard not in state.done
        and state.votes.get(round, VoteType.PREVOTE).has_quorum_any()
    ):
        out.append(
            ScheduleTimeout(
                state.height, round, TimeoutStep.PREVOTE,
                config.timeouts.duration(TimeoutStep.PREVOTE, round),
            )
        )
        return replace(state, done=state.done | {prevote_guard})
    precommit_guard = ("timeout_precommit", round)
    if precommit_guard not in state.done and state.votes.get(
        round, VoteType.PRECOMMIT
    ).has_quorum_any():
        out.append(
            ScheduleTimeout(
                state.height, round, TimeoutStep.PRECOMMIT,
                config.timeouts.duration(TimeoutStep.PRECOMMIT, round),
            )
        )
        return replace(state, done=state.done | {precommit_guard})
    return None
