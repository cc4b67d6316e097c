"""State snapshots (``protocol.snapshot``): a follower restored from the state after H and
verified against block H+1 applies the rest of the chain exactly like the fold from genesis,
and a snapshot that lies about anything is rejected with the reason."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from protocol.follow import BlockFollower
from protocol.proposer import ProposerPriorities, proposer
from protocol.snapshot import Snapshot, SnapshotError, restore, take_snapshot, verify_against
from sdk.testing import make_local_chain
from services.ledger.core.chain_spec import ChainSpec
from services.ledger.core.state import LedgerState, state_hash
from streams import chain_wire
from streams.chain_wire import assemble_snapshots, decode_finalized, decode_snapshot_chunk

HEIGHTS = 24


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    local = make_local_chain(tmp_path_factory.mktemp("snap"), HEIGHTS)
    records = [decode_finalized(raw) for raw in local.records]
    return ChainSpec.load(local.genesis), records


def _fold(spec: ChainSpec, records, upto: int) -> BlockFollower[LedgerState]:  # type: ignore[no-untyped-def]
    follower = spec.follower()
    for record in records[:upto]:
        follower.accept(record)
    return follower


@pytest.mark.parametrize("height", [1, 7, HEIGHTS - 1])
def test_a_restored_follower_applies_the_rest_like_the_fold_from_genesis(chain, height) -> None:  # type: ignore[no-untyped-def]
    spec, records = chain
    snapshot = take_snapshot(_fold(spec, records, height), spec.app)
    assert snapshot.height == height
    restored = restore(Snapshot(snapshot.chain_id, snapshot.height, snapshot.data), spec.app,
                       spec.app)
    verify_against(restored, records[height])
    for record in records[height:]:
        # the restored peaks give each next header's history root (the block check refuses
        # any other), and the accumulator reaches the tip's size
        assert restored.chain.tip.history_root == record.block.header.history_root
        restored.accept(record)
    assert restored.chain.tip.accumulator is not None
    assert restored.chain.tip.accumulator.size == HEIGHTS
    full = _fold(spec, records, HEIGHTS)
    assert restored.chain.tip == full.chain.tip
    assert restored.priorities == full.priorities
    assert state_hash(restored.chain.app_state) == state_hash(full.chain.app_state)
    # the snapshot of the restored follower is byte-identical to the fold's at the same height
    assert take_snapshot(restored, spec.app).data == take_snapshot(full, spec.app).data


def _with_state(follower: BlockFollower[LedgerState], state: LedgerState
                ) -> BlockFollower[LedgerState]:
    """``follower`` with another state, its tip's app hash recomputed: a self-consistent lie."""
    chain = follower.chain
    tip = dataclasses.replace(chain.tip, app_hash=state_hash(state))
    return BlockFollower(follower.app, dataclasses.replace(chain, tip=tip, app_state=state),
                         follower.priorities)


def test_a_changed_balance_with_its_hash_recomputed_is_rejected_against_the_next_block(  # type: ignore[no-untyped-def]
        chain) -> None:
    spec, records = chain
    honest = _fold(spec, records, 10)
    state = honest.chain.app_state
    address, account = state.accounts.items()[0]
    richer = dataclasses.replace(state, accounts=state.accounts.set(
        address, dataclasses.replace(account, balance=account.balance + 1)))
    forged = take_snapshot(_with_state(honest, richer), spec.app)
    restored = restore(forged, spec.app, spec.app)  # consistent in itself...
    with pytest.raises(SnapshotError, match="app hash"):
        verify_against(restored, records[10])  # ...but not what the validators signed


def test_priorities_naming_another_proposer_are_rejected(chain) -> None:  # type: ignore[no-untyped-def]
    spec, records = chain
    honest = _fold(spec, records, 10)
    entries = honest.priorities.entries
    validators, block = honest.chain.validators, records[10]
    for shift in range(1, len(entries)):
        moved = ProposerPriorities(tuple(
            (address, priority) for (address, _), (_, priority)
            in zip(entries, entries[shift:] + entries[:shift], strict=True)))
        if proposer(moved, validators, block.commit.round) != block.block.header.proposer_address:
            break
    else:
        pytest.fail("no rotation of the priorities names another proposer")
    liar = BlockFollower(honest.app, honest.chain, moved)
    restored = restore(take_snapshot(liar, spec.app), spec.app, spec.app)
    with pytest.raises(SnapshotError, match="priorities"):
        verify_against(restored, block)


def test_forged_history_peaks_are_rejected_against_the_next_block(chain) -> None:  # type: ignore[no-untyped-def]
    spec, records = chain
    honest = _fold(spec, records, 10)
    tip = honest.chain.tip
    assert tip.accumulator is not None
    peaks = (bytes(32), *tip.accumulator.peaks[1:])
    forged_tip = dataclasses.replace(tip, accumulator=dataclasses.replace(tip.accumulator,
                                                                          peaks=peaks))
    liar = BlockFollower(honest.app, dataclasses.replace(honest.chain, tip=forged_tip),
                         honest.priorities)
    restored = restore(take_snapshot(liar, spec.app), spec.app, spec.app)
    with pytest.raises(SnapshotError, match="history root"):
        verify_against(restored, records[10])


@pytest.mark.parametrize("cut", ["truncated", "flipped", "trailing", "other chain"])
def test_malformed_snapshots_are_rejected_with_a_reason(chain, cut) -> None:  # type: ignore[no-untyped-def]
    spec, records = chain
    snapshot = take_snapshot(_fold(spec, records, 5), spec.app)
    data = snapshot.data
    broken = {"truncated": Snapshot(snapshot.chain_id, 5, data[:-7]),
              "flipped": Snapshot(snapshot.chain_id, 5,
                                  data[:300] + bytes([data[300] ^ 1]) + data[301:]),
              "trailing": Snapshot(snapshot.chain_id, 5, data + b"\x00"),
              "other chain": Snapshot("another-chain", 5, data)}[cut]
    with pytest.raises(SnapshotError) as raised:
        restore(broken, spec.app, spec.app)
    assert raised.value.reason


def test_chunks_assemble_in_any_order_and_an_incomplete_snapshot_is_left_out(
        chain, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    spec, records = chain
    monkeypatch.setattr(chain_wire, "SNAPSHOT_CHUNK_BYTES", 1000)
    older = take_snapshot(_fold(spec, records, 4), spec.app)
    newer = take_snapshot(_fold(spec, records, 8), spec.app)
    chunks = [decode_snapshot_chunk(value) for snapshot in (older, newer)
              for _, value in chain_wire.encode_snapshot_chunks(snapshot, "test")]
    assert len(chunks) > 4
    random.Random(7).shuffle(chunks)
    found = assemble_snapshots(chunks, older.chain_id)
    assert [s.data for s in found] == [newer.data, older.data]
    missing = [c for c in chunks if not (c.height == 8 and c.chunk == 1)]
    assert [s.height for s in assemble_snapshots(missing, older.chain_id)] == [4]
    assert assemble_snapshots(chunks, "another-chain") == []


def test_the_ledger_state_bytes_do_not_depend_on_where_the_tests_run(tmp_path: Path) -> None:
    local = make_local_chain(tmp_path, 3)
    spec = ChainSpec.load(local.genesis)
    follower = spec.follower()
    for raw in local.records:
        follower.accept(decode_finalized(raw))
    again = restore(take_snapshot(follower, spec.app), spec.app, spec.app)
    assert again.chain.tip == follower.chain.tip
