"""The block store's pure core (``services.block_store.core``) and the gateway's checked reads of
it (``services.gateway.store_archive``) over a store held in memory: rows as the projector
makes them, and nothing the store holds is served unless it checks out against the validator
sets verified from the genesis. The Cassandra side runs in tests/integration/test_block_store.py.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import pytest
from fastapi.testclient import TestClient

from protocol.block import Block, Body
from protocol.finalized import FinalizedRecord
from protocol.validators import ValidatorSet
from sdk.subscriber import parse_sse
from sdk.testing import LocalChain, make_local_chain, resign, tamper
from services.block_store.core import (
    HEIGHTS_PER_PARTITION,
    SetHistory,
    StoredBlock,
    certified,
    chain_key,
    first_at_or_after,
    height_buckets,
    linked,
    stored_block,
)
from services.block_store.queries import RawBlock
from services.block_store.store import BlockStoreError
from services.gateway.api import Gateway, create_app
from services.gateway.auth import ApiKeyStore
from services.gateway.chain import ChainView
from services.gateway.pulses import GatewayPulses
from services.gateway.store_archive import CassandraBlockArchive
from services.ledger.core import Delegate, encode_signed_tx, sign_tx
from services.ledger.core.chain_spec import ChainSpec
from services.ledger.core.queries import next_nonce
from streams.chain_wire import decode_finalized, encode_finalized

HEIGHTS = 12


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> LocalChain:
    return make_local_chain(tmp_path_factory.mktemp("store"), HEIGHTS,
                            sources_at=lambda h: 0 if h == 7 else 2)


@pytest.fixture(scope="module")
def changed(tmp_path_factory: pytest.TempPathFactory) -> LocalChain:
    """A delegation at height 3 changes the validator set a few heights later."""
    def delegate(height: int, state: Any, accounts: tuple[Any, ...]) -> tuple[bytes, ...]:
        if height != 3:
            return ()
        app = state.app_state
        validator = next(iter(sorted(app.validators)))
        return (encode_signed_tx(sign_tx(accounts[0], app.chain_id,
                                         next_nonce(app, accounts[0].address), 10_000,
                                         Delegate(validator, 5_000 * 1_000_000))),)

    return make_local_chain(tmp_path_factory.mktemp("changed"), HEIGHTS, txs=delegate)


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> LocalChain:
    """Same chain id, other validators: what a forger without the keys can make."""
    return make_local_chain(tmp_path_factory.mktemp("other"), HEIGHTS)


def fold(chain: LocalChain) -> tuple[list[StoredBlock], list[ValidatorSet]]:
    """What the projector writes for every block of ``chain``, and the set of each height."""
    follower = ChainSpec.load(chain.genesis).follower()
    blocks, sets = [], []
    for offset, raw in enumerate(chain.records):
        record = decode_finalized(raw)
        follower.accept(record)
        previous = follower.sets.get(record.height - 1)
        blocks.append(stored_block(raw, record, 10 + offset, 1000 + offset,
                                   follower.sets[record.height],
                                   previous.hash() if previous is not None else None))
        sets.append(follower.sets[record.height])
    return blocks, sets


def records(chain: LocalChain) -> list[FinalizedRecord]:
    return [decode_finalized(raw) for raw in chain.records]


class MemoryStore:
    """``BlockQueries`` over the projector's writes held in memory; rows can be changed."""

    def __init__(self, blocks: Sequence[StoredBlock]) -> None:
        self.rows = {b.row.height: RawBlock(b.row.height, b.row.record, b.row.kafka_offset,
                                            b.row.written_at_ms) for b in blocks}
        self.times = {b.row.time_ms: b.row.height for b in blocks}
        self.sets = {b.change.validators.hash(): b.change.validators
                     for b in blocks if b.change is not None}
        self.changes = {b.change.first_height: b.change.validators.hash()
                        for b in blocks if b.change is not None}
        self.height = max(self.rows, default=0)

    def position(self) -> tuple[int, int] | None:
        return (self.height, self.height + 10) if self.height else None

    def blocks(self, first: int, last: int) -> list[RawBlock]:
        return [self.rows[h] for h in sorted(self.rows) if first <= h <= last]

    def block(self, height: int) -> RawBlock | None:
        return self.rows.get(height)

    def first_height_at_or_after(self, time_ms: int) -> int | None:
        return next((self.times[t] for t in sorted(self.times) if t >= time_ms), None)

    def validator_set(self, set_hash: bytes) -> ValidatorSet | None:
        return self.sets.get(set_hash)

    def set_changes(self, after: int, through: int) -> list[tuple[int, bytes]]:
        return [(h, self.changes[h]) for h in sorted(self.changes) if after < h <= through]

    def replace(self, height: int, raw: bytes) -> None:
        self.rows[height] = dataclasses.replace(self.rows[height], record=raw)


def forge(other: LocalChain, height: int, validators: ValidatorSet) -> bytes:
    """Block ``height`` of ``other``, naming ``validators`` and signed by ``other``'s keys: what
    someone who can write the store but holds no validator key of this chain can make."""
    return resign(tamper(other.records[height - 1], header=lambda h: dataclasses.replace(
        h, validators_hash=validators.hash())), other.validator_keys)


def view_from(chain: LocalChain, first: int) -> ChainView:
    """A gateway view that verified heights ``first..`` only (it never saw the ones below)."""
    spec = ChainSpec.load(chain.genesis)
    view = ChainView(spec.chain_id, spec.initial.tip.previous_randomness, retain=HEIGHTS)
    follower = spec.follower()
    for offset, raw in enumerate(chain.records):
        record = decode_finalized(raw)
        validators = follower.chain.validators
        follower.accept(record)
        if record.height >= first:
            view.add(raw, record, validators, 10 + offset, 0)
    view.caught_up = True
    return view


def archive(chain: LocalChain, store: MemoryStore, view: ChainView,
            fallback: Any = None) -> CassandraBlockArchive:
    spec = ChainSpec.load(chain.genesis)
    return CassandraBlockArchive(lambda: store, spec.chain_id,  # type: ignore[arg-type,return-value]
                                 spec.initial.validators, view, fallback)


# ------------------------------------------------------------------------------ core


def test_what_is_stored_for_a_verified_block(chain: LocalChain, changed: LocalChain) -> None:
    blocks, _ = fold(chain)
    first, unmarked = blocks[0].row, blocks[6].row
    assert first.record == chain.records[0] and first.kafka_offset == 10
    assert first.block_hash == decode_finalized(chain.records[0]).block.hash
    # the chain's start: its chunks were committed to by nothing, so no fresh entropy
    assert (first.status, first.random) == (257, False)
    assert (unmarked.status, unmarked.random, unmarked.fresh_sources) == (256, False, 0)
    # the genesis set is recorded at height 1; this chain never changes it
    assert [b.row.height for b in blocks if b.change is not None] == [1]
    changes = [b.change for b in fold(changed)[0] if b.change is not None]
    assert changes[0].first_height == 1 and len(changes) == 2
    header = decode_finalized(changed.records[changes[1].first_height - 1]).block.header
    assert header.validators_hash == changes[1].validators.hash()
    spec = ChainSpec.load(chain.genesis)
    assert chain_key(spec.chain_id, spec.initial.tip.previous_block_hash).startswith(
        "qustream-test/")


def test_height_buckets_cover_a_range_in_order() -> None:
    per = HEIGHTS_PER_PARTITION
    assert height_buckets(5, 9) == [(0, 5, 9)]
    assert height_buckets(per - 2, 2 * per + 1) == [(0, per - 2, per - 1), (1, per, 2 * per - 1),
                                                    (2, 2 * per, 2 * per + 1)]
    assert height_buckets(9, 5) == []


def test_a_block_is_certified_only_by_the_set_of_its_height(chain: LocalChain,
                                                            other: LocalChain) -> None:
    spec = ChainSpec.load(chain.genesis)
    genesis_set, chain_id = spec.initial.validators, spec.chain_id
    record = decode_finalized(chain.records[4])
    assert certified(record, 5, chain_id, genesis_set) is None
    assert "not 6" in (certified(record, 6, chain_id, genesis_set) or "")
    changed_time = decode_finalized(tamper(chain.records[4], header=lambda h: dataclasses.replace(
        h, time_ms=h.time_ms + 1)))
    assert certified(changed_time, 5, chain_id, genesis_set) is not None
    forged = decode_finalized(forge(other, 5, genesis_set))
    assert certified(forged, 5, chain_id, genesis_set) is not None
    theirs = ChainSpec.load(other.genesis).initial.validators
    assert "another validator set" in (certified(record, 5, chain_id, theirs) or "")
    # the signed header with another body (the hash covers the header; roots cover the body)
    swapped = dataclasses.replace(record, block=Block(record.block.header, Body(
        entropy=(), last_commit=record.block.body.last_commit)))
    assert certified(swapped, 5, chain_id, genesis_set) is not None


def test_runs_are_checked_by_hash_links_and_times_by_the_block_below(
        chain: LocalChain, other: LocalChain) -> None:
    run = records(chain)
    assert linked(run) is None and linked(run[:1]) is None
    assert "follows" in (linked([run[0], run[2]]) or "")
    assert "does not link" in (linked([run[0], records(other)[1]]) or "")
    five, four = run[4], run[3]
    time = five.block.header.time_ms
    assert first_at_or_after(five, four, time) is None
    assert first_at_or_after(five, four, four.block.header.time_ms + 1) is None
    assert "skipped" in (first_at_or_after(five, four, four.block.header.time_ms) or "")
    assert "earlier" in (first_at_or_after(four, run[2], time) or "")
    assert "not stored" in (first_at_or_after(five, None, time) or "")
    assert first_at_or_after(run[0], None, 0) is None


def test_set_changes_are_verified_from_the_genesis_set(changed: LocalChain,
                                                       other: LocalChain) -> None:
    spec = ChainSpec.load(changed.genesis)
    blocks, sets = fold(changed)
    history = SetHistory.of_genesis(spec.initial.validators)
    change = next(b.change for b in blocks[1:] if b.change is not None)
    before = decode_finalized(changed.records[change.first_height - 2])
    grown = history.extended(spec.chain_id, change.first_height, change.validators, before)
    assert isinstance(grown, SetHistory)
    known = grown.through_height(HEIGHTS)
    assert [known.set_at(h) for h in range(1, HEIGHTS + 1)] == sets
    assert known.set_at(HEIGHTS + 1) is None and history.set_at(2) is None
    theirs = ChainSpec.load(other.genesis).initial.validators
    assert "another next validator set" in str(
        history.extended(spec.chain_id, change.first_height, theirs, before))
    assert "missing" in str(history.extended(spec.chain_id, change.first_height,
                                             change.validators, None))
    assert "not above" in str(grown.extended(spec.chain_id, 2, theirs, before))


# ------------------------------------------------------------------------------ the archive


def test_heights_never_verified_here_are_served_from_the_store_once_checked(
        chain: LocalChain, other: LocalChain) -> None:
    store = MemoryStore(fold(chain)[0])
    view = view_from(chain, 9)
    reads = archive(chain, store, view)
    genesis_set = ChainSpec.load(chain.genesis).initial.validators
    run = records(chain)
    found = reads.stored(1)
    assert found is not None and found.raw == chain.records[0] and found.offset == 10
    assert found.validators == genesis_set
    assert reads.block(3) == run[2]
    assert reads.at_or_after(run[4].block.header.time_ms) == run[4]
    assert reads.at_or_after(run[4].block.header.time_ms - 1) == run[4]
    assert [r.height for r in reads.range(1, 8)] == list(range(1, 9))
    assert reads.refused == 0

    # a row changed in Cassandra is refused: a forged block, garbage, a wrong time index
    store.replace(4, forge(other, 4, genesis_set))
    store.replace(6, b"garbage")
    assert reads.stored(4) is None and reads.block(6) is None
    assert [r.height for r in reads.range(1, 8)] == [] and reads.refused >= 3
    store.times[run[1].block.header.time_ms] = 3  # the index skips block 2
    assert reads.at_or_after(run[1].block.header.time_ms) is None

    # with a fallback (Kafka: heights verified here), what the store lacks comes from there
    class Fallback:
        def block(self, height: int) -> FinalizedRecord | None:
            return run[height - 1]

        def at_or_after(self, time_ms: int) -> FinalizedRecord | None:
            return run[1]

    backed = archive(chain, store, view, Fallback())
    assert backed.block(4) == run[3] and backed.at_or_after(run[1].block.header.time_ms) == run[1]


def test_a_store_without_tables_is_looked_for_again_later(chain: LocalChain) -> None:
    spec = ChainSpec.load(chain.genesis)
    opened: list[int] = []
    store = MemoryStore(fold(chain)[0])

    def open_store() -> Any:
        opened.append(1)
        if len(opened) == 1:
            raise BlockStoreError("no tables yet")
        return store

    reads = CassandraBlockArchive(open_store, spec.chain_id, spec.initial.validators,
                                  view_from(chain, 9), retry_s=0.0)
    assert reads.block(2) is None
    assert reads.block(2) == records(chain)[1] and len(opened) == 2


def test_the_set_of_a_height_never_verified_here_comes_from_verified_changes(
        changed: LocalChain, other: LocalChain) -> None:
    blocks, sets = fold(changed)
    store = MemoryStore(blocks)
    reads = archive(changed, store, view_from(changed, HEIGHTS))
    assert [reads.set_at(h) for h in range(1, HEIGHTS)] == sets[:-1]
    assert reads.stored(HEIGHTS - 1) is not None
    # a store that leaves the change out cannot pass off the newer blocks as the older set's
    store = MemoryStore(blocks)
    last_change = max(store.changes)
    del store.changes[last_change]
    reads = archive(changed, store, view_from(changed, HEIGHTS))
    assert reads.stored(last_change) is None and reads.stored(last_change - 1) is not None
    # nor list a set the chain never named
    store = MemoryStore(blocks)
    theirs = ChainSpec.load(other.genesis).initial.validators
    store.sets[store.changes[last_change]] = theirs
    reads = archive(changed, store, view_from(changed, HEIGHTS))
    assert reads.stored(last_change) is None and reads.refused >= 1


def test_the_gateway_answers_from_the_store_for_heights_it_never_verified(
        chain: LocalChain) -> None:
    store = MemoryStore(fold(chain)[0])
    view = view_from(chain, 9)
    genesis = ChainSpec.load(chain.genesis).initial.tip.previous_time_ms
    gateway = Gateway(view=view, keys=ApiKeyStore(),
                      pulses=GatewayPulses(view, genesis, 1000, archive(chain, store, view)))
    http = TestClient(create_app(gateway))
    run = records(chain)
    block = http.get("/v1/blocks/1")
    assert block.status_code == 200, block.text
    assert base64.b64decode(block.json()["record"]) == chain.records[0]
    assert block.json()["commit"]["signed_power"] == 40_000 and block.json()["kafka_offset"] == 10
    assert http.get("/v1/validators/2").json()["hash"] == \
        run[1].block.header.validators_hash.hex()
    at = http.get("/v1/beacon/at", params={"time": run[2].block.header.time_ms - 1})
    assert at.status_code == 200 and at.json()["height"] == 3
    assert at.json()["proof"]["previous_header"] is not None
    pulses = http.get("/v1/beacon", params={"from": 1, "to": HEIGHTS}).json()["pulses"]
    assert [p["height"] for p in pulses] == list(range(1, HEIGHTS + 1))
    page = http.get("/v1/blocks", params={"from": 7, "limit": 4}).json()
    assert [b["height"] for b in page["blocks"]] == [7, 8, 9, 10]
    stream = http.get("/v1/stream/blocks", params={"from": 1, "until": 10})
    events = list(parse_sse(stream.text.splitlines()))
    assert [base64.b64decode(json.loads(d)["record"]) for _, d in events] == \
        list(chain.records[:10])
    del store.rows[2]  # not held by the store, never verified here: gone
    gateway.pulses = GatewayPulses(view, genesis, 1000, archive(chain, store, view))
    http = TestClient(create_app(gateway))
    assert http.get("/v1/blocks/2").status_code == 410
    assert http.get("/v1/beacon/2").status_code == 410
    assert http.get("/v1/validators/2").status_code == 410
    store.replace(3, b"garbage")  # changed in Cassandra: refused, counted, not served
    assert http.get("/v1/blocks/3").status_code == 410
    assert "qustream_gateway_block_store_refused 1.0" in http.get("/metrics").text


def test_stored_records_round_trip(chain: LocalChain) -> None:
    for block in fold(chain)[0]:
        record = decode_finalized(block.row.record)
        assert encode_finalized(record) == block.row.record
        assert record.block.hash == block.row.block_hash

