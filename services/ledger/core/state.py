"""The ledger state: frozen records in persistent maps, and its deterministic hash.

Every function in the ledger takes a ``LedgerState`` and returns a new one; nothing is mutated.
Money lives in exactly one of these places (the conservation test sums them):

- account balances;
- validator ``tokens`` (bonded stake, shared by its delegators through ``shares``);
- unbonding entries (stake on its way back, still slashable);
- per-validator ``outstanding`` rewards (commission + unpaid delegator rewards + carry);
- the community pool; the fee pool (this block's fees, distributed next block);
- the deposits of proposals still in their voting period.

Their sum always equals ``supply.expected`` = genesis + issued - slashed - burned.

State hash: a root over per-module digests (``module_roots``); each digest is the SHA-256 of the
canonical encoding of that module's records in sorted key order. Unchanged modules reuse their
cached digest, and an auditor can tell which module diverged.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from protocol.canonical import CanonicalEncodingError, CanonicalWriter
from protocol.keys import PublicKey
from protocol.validators import ValidatorSet
from services.ledger.core.codec import big_uint_field, write_big_uint
from services.ledger.core.errors import InsufficientFundsError
from services.ledger.core.fmap import FrozenMap
from services.ledger.core.params import Params
from services.ledger.core.tx import ProposalContent, QrngSource, VoteOption, encode_content

JAILED_FOREVER = 2**64 - 1


@dataclass(frozen=True, slots=True)
class Account:
    balance: int = 0
    nonce: int = 0  # the nonce the next transaction from this account must carry


@dataclass(frozen=True, slots=True)
class ValidatorRecord:
    """A validator. Its address is its operator account and its consensus-key address."""

    address: bytes
    public_key: PublicKey
    tokens: int  # bonded stake (self-bond + delegations), reduced by slashes
    shares: int  # total delegation shares; a delegation is worth shares * tokens // self.shares
    commission_rate: int
    max_commission_rate: int
    max_commission_change_rate: int
    commission_changed_height: int
    jailed: bool = False
    jailed_until: int = 0  # first height at which Unjail is accepted
    tombstoned: bool = False  # double-signed: jailed forever


@dataclass(frozen=True, slots=True)
class Delegation:
    shares: int
    reward_ratio_start: int  # the validator's cumulative reward ratio when last settled


@dataclass(frozen=True, slots=True)
class UnbondingEntry:
    creation_height: int
    completion_height: int
    initial_balance: int
    balance: int  # initial_balance minus slashes


@dataclass(frozen=True, slots=True)
class ValidatorRewards:
    """F1 accounting of one validator (see ``distribution``)."""

    ratio: int = 0  # cumulative delegator reward per share, scaled by REWARD_RATIO_SCALE
    carry: int = 0  # scaled remainder not yet turned into ratio (< shares)
    outstanding: int = 0  # micro-units held for this validator's commission and delegators
    commission: int = 0  # part of ``outstanding`` owed to the operator as commission


@dataclass(frozen=True, slots=True)
class SigningInfo:
    """Liveness over a sliding window of ``window`` blocks (bit i = position i missed)."""

    window: int
    start_height: int
    index_offset: int = 0
    missed_bitmap: int = 0
    missed_count: int = 0


class ProposalStatus(IntEnum):
    VOTING = 1
    PASSED = 2
    REJECTED = 3  # deposit refunded
    VETOED = 4  # deposit burned
    FAILED_QUORUM = 5  # deposit burned
    FAILED_EXECUTION = 6  # passed, but the content no longer applies; deposit refunded


@dataclass(frozen=True, slots=True)
class TallyResult:
    """Stake (micro-units of bonded tokens) behind each option, and the bonded total."""

    yes: int
    abstain: int
    no: int
    no_with_veto: int
    bonded: int

    @property
    def voted(self) -> int:
        return self.yes + self.abstain + self.no + self.no_with_veto


@dataclass(frozen=True, slots=True)
class Proposal:
    proposal_id: int
    proposer: bytes
    content: ProposalContent
    deposit: int
    submit_height: int
    voting_end_height: int
    status: ProposalStatus = ProposalStatus.VOTING
    tally: TallyResult | None = None


@dataclass(frozen=True, slots=True)
class Supply:
    genesis: int
    issued: int = 0
    slashed: int = 0
    burned: int = 0

    @property
    def expected(self) -> int:
        return self.genesis + self.issued - self.slashed - self.burned


@dataclass(frozen=True, slots=True)
class LedgerState:
    chain_id: str
    height: int  # last finalized height; 0 = genesis
    time_ms: int  # block time of ``height`` (genesis time at 0)
    params: Params
    supply: Supply
    # Validator sets governing heights ``height + 1`` and ``height + 2``.
    validator_sets: tuple[ValidatorSet, ValidatorSet]
    accounts: FrozenMap[bytes, Account] = dataclasses.field(default_factory=FrozenMap)
    validators: FrozenMap[bytes, ValidatorRecord] = dataclasses.field(default_factory=FrozenMap)
    delegations: FrozenMap[tuple[bytes, bytes], Delegation] = dataclasses.field(
        default_factory=FrozenMap
    )  # (delegator, validator)
    unbondings: FrozenMap[tuple[bytes, bytes], tuple[UnbondingEntry, ...]] = dataclasses.field(
        default_factory=FrozenMap
    )  # (delegator, validator) -> entries in creation order
    unbonding_queue: FrozenMap[int, tuple[tuple[bytes, bytes], ...]] = dataclasses.field(
        default_factory=FrozenMap
    )  # completion height -> sorted (delegator, validator) pairs
    rewards: FrozenMap[bytes, ValidatorRewards] = dataclasses.field(default_factory=FrozenMap)
    signing_infos: FrozenMap[bytes, SigningInfo] = dataclasses.field(default_factory=FrozenMap)
    proposals: FrozenMap[int, Proposal] = dataclasses.field(default_factory=FrozenMap)
    votes: FrozenMap[tuple[int, bytes], VoteOption] = dataclasses.field(
        default_factory=FrozenMap
    )  # (proposal id, voter); pruned when the proposal is tallied
    active_proposals: tuple[int, ...] = ()
    next_proposal_id: int = 1
    qrng_sources: FrozenMap[str, QrngSource] = dataclasses.field(default_factory=FrozenMap)
    fee_pool: int = 0
    community_pool: int = 0


# --- small helpers shared by the modules -------------------------------------------------


_STATE_FIELDS = tuple(field.name for field in dataclasses.fields(LedgerState))
_STATE_FIELD_SET = frozenset(_STATE_FIELDS)


def evolve(state: LedgerState, **changes: Any) -> LedgerState:
    """``evolve(state, **changes)``, about twice as fast.

    The ledger derives a new state several times per transaction and per validator; a replay
    of a day of blocks spends a noticeable share of its time in ``dataclasses.replace``, whose
    generic path re-reads the field list and runs the generated ``__init__``. ``LedgerState``
    has no ``__post_init__``, so copying the slots is the same thing."""
    if not changes.keys() <= _STATE_FIELD_SET:
        raise TypeError(f"LedgerState has no field {sorted(changes.keys() - _STATE_FIELD_SET)}")
    new = object.__new__(LedgerState)
    for name in _STATE_FIELDS:
        object.__setattr__(new, name, changes[name] if name in changes else getattr(state, name))
    return new


def get_account(state: LedgerState, address: bytes) -> Account:
    account = state.accounts.get(address)
    return Account() if account is None else account


def credit(state: LedgerState, address: bytes, amount: int) -> LedgerState:
    """Add ``amount`` to ``address``'s balance (creating the account)."""
    if amount == 0:
        return state
    account = get_account(state, address)
    updated = dataclasses.replace(account, balance=account.balance + amount)
    return evolve(state, accounts=state.accounts.set(address, updated))


def debit(state: LedgerState, address: bytes, amount: int) -> LedgerState:
    """Subtract ``amount`` from ``address``'s balance; ``InsufficientFundsError`` if short."""
    account = get_account(state, address)
    if account.balance < amount:
        raise InsufficientFundsError(
            f"account {address.hex()} has {account.balance}, needs {amount}"
        )
    if amount == 0:
        return state
    updated = dataclasses.replace(account, balance=account.balance - amount)
    return evolve(state, accounts=state.accounts.set(address, updated))


# --- canonical encoding and hash ---------------------------------------------------------


def _write_account(w: CanonicalWriter, address: bytes, account: Account) -> None:
    w.raw(address, 20).u64(account.balance).u64(account.nonce)


def _write_validator(w: CanonicalWriter, address: bytes, v: ValidatorRecord) -> None:
    w.raw(address, 20).nested(v.public_key.canonical()).u64(v.tokens).u64(v.shares)
    w.u64(v.commission_rate).u64(v.max_commission_rate).u64(v.max_commission_change_rate)
    w.u64(v.commission_changed_height).boolean(v.jailed).u64(v.jailed_until)
    w.boolean(v.tombstoned)


def _write_delegation(w: CanonicalWriter, key: tuple[bytes, bytes], d: Delegation) -> None:
    w.raw(key[0], 20).raw(key[1], 20).u64(d.shares)
    write_big_uint(w, d.reward_ratio_start)


def _write_unbondings(
    w: CanonicalWriter, key: tuple[bytes, bytes], entries: tuple[UnbondingEntry, ...]
) -> None:
    w.raw(key[0], 20).raw(key[1], 20)
    w.sequence(
        entries,
        lambda w2, e: (
            w2.u64(e.creation_height).u64(e.completion_height).u64(e.initial_balance).u64(e.balance)
        ),
    )


def _write_queue(w: CanonicalWriter, height: int, pairs: tuple[tuple[bytes, bytes], ...]) -> None:
    w.u64(height).sequence(pairs, lambda w2, pair: w2.raw(pair[0], 20).raw(pair[1], 20))


# Rewards and signing infos change for every validator in every block, so the state hash
# re-encodes both maps whole each height: their items are packed in one go, byte for byte the
# field-by-field encoding (``raw(address, 20)``, ``u64``, ``write_big_uint``; a test compares).
_U64 = struct.Struct(">Q")
_TWO_U64 = struct.Struct(">QQ")
_THREE_U64 = struct.Struct(">QQQ")


def _address_field(address: bytes) -> bytes:
    if not isinstance(address, bytes) or len(address) != 20:
        raise CanonicalEncodingError("expected exactly 20 bytes")
    return address


def _u64_fields(layout: struct.Struct, *values: int) -> bytes:
    try:
        return layout.pack(*values)
    except struct.error as exc:  # negative or wider than 64 bits, as ``u64`` refuses it
        raise CanonicalEncodingError(f"{values} do not fit u64: {exc}") from exc


def _rewards_item(address: bytes, r: ValidatorRewards) -> bytes:
    return (_address_field(address) + big_uint_field(r.ratio) + big_uint_field(r.carry)
            + _u64_fields(_TWO_U64, r.outstanding, r.commission))


def _signing_info_item(address: bytes, info: SigningInfo) -> bytes:
    return (_address_field(address)
            + _u64_fields(_THREE_U64, info.window, info.start_height, info.index_offset)
            + big_uint_field(info.missed_bitmap) + _u64_fields(_U64, info.missed_count))


def _write_rewards(w: CanonicalWriter, address: bytes, r: ValidatorRewards) -> None:
    data = _rewards_item(address, r)
    w.raw(data, len(data))


def _write_signing_info(w: CanonicalWriter, address: bytes, info: SigningInfo) -> None:
    data = _signing_info_item(address, info)
    w.raw(data, len(data))


def _write_tally(w: CanonicalWriter, t: TallyResult) -> None:
    w.u64(t.yes).u64(t.abstain).u64(t.no).u64(t.no_with_veto).u64(t.bonded)


def _write_proposal(w: CanonicalWriter, proposal_id: int, p: Proposal) -> None:
    w.u64(proposal_id).raw(p.proposer, 20).nested(encode_content(p.content)).u64(p.deposit)
    w.u64(p.submit_height).u64(p.voting_end_height).u8(int(p.status))
    w.optional(p.tally, _write_tally)


def _write_vote(w: CanonicalWriter, key: tuple[int, bytes], option: VoteOption) -> None:
    w.u64(key[0]).raw(key[1], 20).u8(int(option))


def _write_source(w: CanonicalWriter, source_id: str, source: QrngSource) -> None:
    w.nested(source.canonical())


def _meta_digest(state: LedgerState) -> bytes:
    w = CanonicalWriter("LedgerMeta").text(state.chain_id).u64(state.height).u64(state.time_ms)
    w.u64(state.supply.genesis).u64(state.supply.issued).u64(state.supply.slashed)
    w.u64(state.supply.burned).u64(state.fee_pool).u64(state.community_pool)
    w.u64(state.next_proposal_id).sequence(state.active_proposals, lambda w2, i: w2.u64(i))
    w.raw(state.validator_sets[0].hash(), 32).raw(state.validator_sets[1].hash(), 32)
    return w.digest()


def module_roots(state: LedgerState) -> tuple[tuple[str, bytes], ...]:
    """Per-module digests, in a fixed order; ``state_hash`` is the root over them."""
    return (
        ("meta", _meta_digest(state)),
        ("params", state.params.digest()),
        ("accounts", state.accounts.digest("LedgerAccounts", _write_account)),
        ("validators", state.validators.digest("LedgerValidators", _write_validator)),
        ("delegations", state.delegations.digest("LedgerDelegations", _write_delegation)),
        ("unbondings", state.unbondings.digest("LedgerUnbondings", _write_unbondings)),
        ("unbonding_queue", state.unbonding_queue.digest("LedgerUnbondingQueue", _write_queue)),
        ("rewards", state.rewards.digest("LedgerRewards", _write_rewards, _rewards_item)),
        ("signing_infos", state.signing_infos.digest("LedgerSigningInfos", _write_signing_info,
                                                     _signing_info_item)),
        ("proposals", state.proposals.digest("LedgerProposals", _write_proposal)),
        ("votes", state.votes.digest("LedgerVotes", _write_vote)),
        ("qrng_sources", state.qrng_sources.digest("LedgerQrngSources", _write_source)),
    )


def state_hash(state: LedgerState) -> bytes:
    """The app hash: SHA-256 over the named module digests in ``module_roots`` order."""
    return (
        CanonicalWriter("LedgerStateRoot")
        .sequence(module_roots(state), lambda w, root: w.text(root[0]).raw(root[1], 32))
        .digest()
    )
