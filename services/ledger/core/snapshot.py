"""The ledger state in canonical bytes, and back: what a state snapshot carries (see
``protocol.snapshot``).

Every record is written by the same writer the state hash uses (``state.module_roots``), one
module after the other, so the bytes describe exactly what the hash covers; the reader mirrors
them field by field and is strict (keys in increasing order, nothing trailing, integers in
range). A decoded state is still not trusted: the snapshot's reader recomputes its hash and
compares it with a header it verified. Hand-written because the writers already define the
layout: a generic serializer would be a second encoding of the same records to keep in step.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any, TypeVar

from protocol.canonical import CanonicalDecodeError, CanonicalReader, CanonicalWriter
from protocol.codec import decode_validator_set, read_public_key
from services.ledger.core.fmap import FrozenMap
from services.ledger.core.params import ADDED_LATER, Params
from services.ledger.core.state import (
    Account,
    Delegation,
    LedgerState,
    Proposal,
    ProposalStatus,
    SigningInfo,
    Supply,
    TallyResult,
    UnbondingEntry,
    ValidatorRecord,
    ValidatorRewards,
    _write_account,
    _write_delegation,
    _write_proposal,
    _write_queue,
    _write_rewards,
    _write_signing_info,
    _write_source,
    _write_unbondings,
    _write_validator,
    _write_vote,
)
from services.ledger.core.tx import QrngSource, VoteOption, decode_content

V = TypeVar("V")
TAG = "LedgerStateSnapshot"
MAX_RECORDS = 50_000_000  # per module; a bound on what a length prefix may claim


def encode_ledger_state(state: LedgerState) -> bytes:
    """``state`` in canonical bytes (module doc)."""
    w = CanonicalWriter(TAG).text(state.chain_id).u64(state.height).u64(state.time_ms)
    w.nested(state.params.encode(CanonicalWriter("LedgerParams")).finish())
    supply = state.supply
    w.u64(supply.genesis).u64(supply.issued).u64(supply.slashed).u64(supply.burned)
    w.u64(state.fee_pool).u64(state.community_pool).u64(state.next_proposal_id)
    w.sequence(state.active_proposals, lambda w2, i: w2.u64(i))
    w.nested(state.validator_sets[0].canonical()).nested(state.validator_sets[1].canonical())
    for fmap, write in _modules(state):
        _write_items(w, fmap, write)
    return w.finish()


def _write_items(w: CanonicalWriter, fmap: FrozenMap[Any, Any],
                 write: Callable[..., object]) -> None:
    w.sequence(fmap.items(), lambda w2, item: write(w2, item[0], item[1]))


def _modules(state: LedgerState) -> tuple[tuple[FrozenMap[Any, Any], Callable[..., object]], ...]:
    return (
        (state.accounts, _write_account),
        (state.validators, _write_validator),
        (state.delegations, _write_delegation),
        (state.unbondings, _write_unbondings),
        (state.unbonding_queue, _write_queue),
        (state.rewards, _write_rewards),
        (state.signing_infos, _write_signing_info),
        (state.proposals, _write_proposal),
        (state.votes, _write_vote),
        (state.qrng_sources, _write_source),
    )


def decode_ledger_state(data: bytes) -> LedgerState:
    """The state of ``encode_ledger_state`` bytes; ``CanonicalDecodeError`` on anything else."""
    r = CanonicalReader(data, TAG)
    chain_id, height, time_ms = r.text(), r.u64(), r.u64()
    params = _params(r.nested())
    supply = Supply(r.u64(), r.u64(), r.u64(), r.u64())
    fee_pool, community_pool, next_proposal_id = r.u64(), r.u64(), r.u64()
    active = r.sequence(lambda x: x.u64(), MAX_RECORDS)
    sets = (_set(r.nested()), _set(r.nested()))
    state = LedgerState(
        chain_id=chain_id, height=height, time_ms=time_ms, params=params, supply=supply,
        validator_sets=sets,
        accounts=_map(r, lambda x: (x.raw(20), Account(x.u64(), x.u64()))),
        validators=_map(r, _validator),
        delegations=_map(r, lambda x: ((x.raw(20), x.raw(20)),
                                       Delegation(x.u64(), _big(x)))),
        unbondings=_map(r, lambda x: ((x.raw(20), x.raw(20)), x.sequence(
            lambda y: UnbondingEntry(y.u64(), y.u64(), y.u64(), y.u64()), MAX_RECORDS))),
        unbonding_queue=_map(r, lambda x: (x.u64(), x.sequence(
            lambda y: (y.raw(20), y.raw(20)), MAX_RECORDS))),
        rewards=_map(r, lambda x: (x.raw(20), ValidatorRewards(_big(x), _big(x), x.u64(),
                                                                x.u64()))),
        signing_infos=_map(r, lambda x: (x.raw(20), SigningInfo(x.u64(), x.u64(), x.u64(),
                                                                 _big(x), x.u64()))),
        proposals=_map(r, _proposal),
        votes=_map(r, lambda x: ((x.u64(), x.raw(20)), _enum(VoteOption, x.u8()))),
        active_proposals=active,
        next_proposal_id=next_proposal_id,
        qrng_sources=_map(r, _source),
        fee_pool=fee_pool,
        community_pool=community_pool,
    )
    r.done()
    return state


def _map(r: CanonicalReader, read: Callable[[CanonicalReader], tuple[Any, V]]
         ) -> FrozenMap[Any, V]:
    items = r.sequence(read, MAX_RECORDS)
    for before, after in itertools.pairwise(items):
        if not before[0] < after[0]:
            raise CanonicalDecodeError("state records are not in increasing key order")
    return FrozenMap(items)


def _big(r: CanonicalReader) -> int:
    raw = r.bytes()
    if raw[:1] == b"\x00":
        raise CanonicalDecodeError("big integer with a leading zero byte")
    return int.from_bytes(raw, "big")


def _enum(kind: Any, value: int) -> Any:
    try:
        return kind(value)
    except ValueError as exc:
        raise CanonicalDecodeError(f"{value} is not a {kind.__name__}") from exc


def _set(data: bytes) -> Any:
    try:
        return decode_validator_set(data)
    except ValueError as exc:
        raise CanonicalDecodeError(str(exc)) from exc


def _params(data: bytes) -> Params:
    r = CanonicalReader(data, "LedgerParams")
    values: dict[str, Any] = {}
    name: str | None = None
    for field in dataclasses.fields(Params):
        if name is None:
            name = r.text()
        if name != field.name:
            if field.name in ADDED_LATER:
                continue  # at its default: not written (``Params.encode``)
            raise CanonicalDecodeError(f"parameter {name!r} where {field.name!r} belongs")
        values[name] = r.bytes() if isinstance(field.default, bytes) else r.u64()
        if field.name in ADDED_LATER and values[name] == field.default:
            raise CanonicalDecodeError(f"{name} at its default is not written")
        name = None
    if name is not None:
        raise CanonicalDecodeError(f"unknown parameter {name!r}")
    r.done()
    return Params(**values)


def _validator(r: CanonicalReader) -> tuple[bytes, ValidatorRecord]:
    address = r.raw(20)
    record = ValidatorRecord(address, read_public_key(r), r.u64(), r.u64(), r.u64(), r.u64(),
                             r.u64(), r.u64(), r.boolean(), r.u64(), r.boolean())
    return address, record


def _proposal(r: CanonicalReader) -> tuple[int, Proposal]:
    proposal_id, proposer, content = r.u64(), r.raw(20), decode_content(r.nested())
    deposit, submit_height, voting_end = r.u64(), r.u64(), r.u64()
    status = _enum(ProposalStatus, r.u8())
    tally = r.optional(lambda x: TallyResult(x.u64(), x.u64(), x.u64(), x.u64(), x.u64()))
    return proposal_id, Proposal(proposal_id, proposer, content, deposit, submit_height,
                                 voting_end, status, tally)


def _source(r: CanonicalReader) -> tuple[str, QrngSource]:
    source = QrngSource.decode(r.nested())
    return source.source_id, source

