"""The audit checks every snapshot on ``chain.snapshots`` against the state it recomputes from
genesis: honest ones verify, ones every reader rejects are warnings, and ones readers would
accept but that differ from the chain are failures (``services.audit.core.snapshots``)."""

from __future__ import annotations

import dataclasses

import pytest

from protocol.follow import BlockFollower
from protocol.snapshot import Snapshot, restore, take_snapshot
from sdk.testing import LocalChain, make_local_chain
from services.audit.core.findings import Severity
from services.audit.replay import AuditOptions, run_audit
from services.audit.sources import LogRecord, MemorySource
from services.ledger.core.chain_spec import ChainSpec
from services.ledger.core.state import state_hash
from streams import chain_wire
from streams.chain_wire import encode_snapshot_chunks


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> LocalChain:
    return make_local_chain(tmp_path_factory.mktemp("audit-snap"), 40, snapshot_every=10)


def _audit(chain: LocalChain, snapshots: list[Snapshot], *, drop_chunk: bool = False,  # type: ignore[no-untyped-def]
           blocks: int | None = None):
    records = [LogRecord("chain.blocks", 0, i, 1000 + i, None, raw)
               for i, raw in enumerate(chain.records[:blocks])]
    chunks = [LogRecord("chain.snapshots", 0, i, 0, key, value) for i, (key, value) in
              enumerate(kv for s in snapshots for kv in encode_snapshot_chunks(s, "test"))]
    if drop_chunk:
        chunks = chunks[1:]
    source = MemorySource({"chain.blocks": records, "chain.snapshots": chunks})
    return run_audit(source, AuditOptions(chain.genesis, users=False))


def _changed(chain: LocalChain, snapshot: Snapshot, **tip_or_chain: object) -> Snapshot:
    spec = ChainSpec.load(chain.genesis)
    follower = restore(snapshot, spec.app, spec.app)
    tip_changes = {k: v for k, v in tip_or_chain.items() if hasattr(follower.chain.tip, k)}
    rest = {k: v for k, v in tip_or_chain.items() if k not in tip_changes}
    state = follower.chain
    state = dataclasses.replace(state, tip=dataclasses.replace(state.tip, **tip_changes), **rest)
    return take_snapshot(BlockFollower(spec.app, state, follower.priorities), spec.app)


def test_the_tallys_snapshots_verify(chain: LocalChain) -> None:
    report = _audit(chain, list(chain.snapshots))
    assert report.ok, report.failures
    assert report.checked["snapshots_verified"] == 4
    assert not [f for f in report.findings if f.check == "snapshot"]


def test_a_changed_balance_is_a_warning_no_reader_accepts_it(chain: LocalChain) -> None:
    spec = ChainSpec.load(chain.genesis)
    honest = chain.snapshots[1]
    state = restore(honest, spec.app, spec.app).chain.app_state
    address, account = state.accounts.items()[0]
    richer = dataclasses.replace(state, accounts=state.accounts.set(
        address, dataclasses.replace(account, balance=account.balance + 1)))
    forged = _changed(chain, honest, app_state=richer, app_hash=state_hash(richer))
    report = _audit(chain, [chain.snapshots[0], forged])
    found = [f for f in report.findings if f.check == "snapshot"]
    assert report.ok and len(found) == 1 and found[0].severity is Severity.WARNING
    assert "state hash" in found[0].reason and found[0].height == 20
    assert report.checked["snapshots_verified"] == 1


def test_forged_history_peaks_are_a_warning_no_reader_accepts_them(chain: LocalChain) -> None:
    spec = ChainSpec.load(chain.genesis)
    honest = chain.snapshots[1]
    accumulator = restore(honest, spec.app, spec.app).chain.tip.accumulator
    assert accumulator is not None
    forged = _changed(chain, honest, accumulator=dataclasses.replace(
        accumulator, peaks=(bytes(32), *accumulator.peaks[1:])))
    report = _audit(chain, [forged])
    found = [f for f in report.findings if f.check == "snapshot"]
    assert report.ok and len(found) == 1 and found[0].severity is Severity.WARNING
    assert "history accumulator" in found[0].reason


def test_a_lie_readers_cannot_see_at_once_is_a_failure(chain: LocalChain) -> None:
    honest = chain.snapshots[2]
    forged = _changed(chain, honest, committed_evidence=frozenset({(25, b"\x01" * 32)}))
    report = _audit(chain, [forged])
    failures = [f for f in report.failures if f.check == "snapshot"]
    assert len(failures) == 1 and "committed evidence" in failures[0].reason


def test_incomplete_and_unreached_snapshots_are_noted_not_checked(
        chain: LocalChain, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chain_wire, "SNAPSHOT_CHUNK_BYTES", 500)
    report = _audit(chain, list(chain.snapshots), drop_chunk=True, blocks=35)
    assert report.ok
    assert report.checked["snapshots_verified"] == 2  # 20 and 30; 10 lost a chunk, 40 is beyond
    assert any("1 snapshots on chain.snapshots are incomplete" in n for n in report.notes)
    assert any("beyond the audited head 35" in n for n in report.notes), report.notes
