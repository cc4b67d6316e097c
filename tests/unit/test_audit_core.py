"""The audit's pure cores on locally signed chains: a clean chain holds; each tampering is named
with its height, offset and check."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sdk.testing import LocalChain, make_local_chain, tamper
from services.audit.core.chain import ChainAuditor
from services.audit.core.findings import AuditReport, Finding, Severity
from services.audit.core.rows import diff_tables
from services.audit.export import ExportError, ExportSource, write_export
from services.audit.replay import decode_block_record
from services.audit.sources import LogRecord
from services.ledger.core.chain_spec import ChainSpec


@pytest.fixture(scope="module")
def local_chain(tmp_path_factory: pytest.TempPathFactory) -> LocalChain:
    return make_local_chain(tmp_path_factory.mktemp("chain"), 12)


def _audit(chain: LocalChain, records: list[bytes] | tuple[bytes, ...]) -> ChainAuditor:
    spec = ChainSpec.load(chain.genesis)
    auditor = ChainAuditor(spec.initial, spec.app)
    for offset, raw in enumerate(records):
        auditor.feed(decode_block_record(LogRecord("chain.blocks", 0, offset, 0, None, raw)))
    return auditor


def test_clean_chain_holds_and_duplicates_are_harmless(local_chain: LocalChain) -> None:
    records = list(local_chain.records)
    auditor = _audit(local_chain, [*records[:5], records[4], *records[5:]])
    assert auditor.findings == []
    assert auditor.applied_height == 12
    assert auditor.counts["duplicates"] == 1
    assert auditor.chain.tip.app_hash == local_chain.final_state.tip.app_hash


def test_altered_randomness_is_named_before_the_certificate(local_chain: LocalChain) -> None:
    records = list(local_chain.records)
    records[6] = tamper(records[6], header=lambda h: dataclasses.replace(
        h, randomness=bytes(64)))
    auditor = _audit(local_chain, records)
    assert auditor.halted_at == 7
    assert auditor.findings[0].check == "randomness"
    assert (auditor.findings[0].height, auditor.findings[0].offset) == (7, 6)
    assert auditor.unverified == 5


def test_an_altered_history_root_is_named_before_the_certificate(
        local_chain: LocalChain) -> None:
    records = list(local_chain.records)
    records[8] = tamper(records[8], header=lambda h: dataclasses.replace(
        h, history_root=bytes(32)))
    auditor = _audit(local_chain, records)
    assert auditor.halted_at == 9
    assert [f.check for f in auditor.findings][:1] == ["history_root"]
    assert "commit" in [f.check for f in auditor.findings]


def test_gap_and_undecodable_record(local_chain: LocalChain) -> None:
    records = list(local_chain.records)
    auditor = _audit(local_chain, [*records[:3], *records[4:]])
    assert [(f.check, f.height) for f in auditor.findings] == [("gap", 4)]
    auditor = _audit(local_chain, [*records[:3], b"garbage"])
    assert [(f.check, f.offset) for f in auditor.findings] == [("record", 3)]


def test_to_height_stops_early(local_chain: LocalChain) -> None:
    spec = ChainSpec.load(local_chain.genesis)
    auditor = ChainAuditor(spec.initial, spec.app, to_height=4)
    for offset, raw in enumerate(local_chain.records):
        auditor.feed(decode_block_record(LogRecord("chain.blocks", 0, offset, 0, None, raw)))
    assert auditor.applied_height == 4 and auditor.findings == []


def test_row_diff_names_missing_extra_and_different() -> None:
    rebuilt = {"records": {("u1", "r1"): {"user_id": "u1", "record_id": "r1", "size": 3},
                           ("u2", "r1"): {"user_id": "u2", "record_id": "r1", "size": 4}}}
    live = {"records": {("u1", "r1"): {"user_id": "u1", "record_id": "r1", "size": 9},
                        ("u3", "r1"): {"user_id": "u3", "record_id": "r1", "size": 1}}}
    findings, compared = diff_tables(rebuilt, live, {"u1": (2, 17)})
    reasons = [f.reason for f in findings]
    assert compared == {"records": 3}
    assert any("(u1, r1): different: size live=9 rebuilt=3" in r for r in reasons)
    assert any("(u2, r1): missing" in r for r in reasons)
    assert any("(u3, r1): extra" in r for r in reasons)
    first = next(f for f in findings if "u1" in f.reason)
    assert (first.partition, first.offset) == (2, 17)


def test_report_first_divergence_is_lowest_height() -> None:
    report = AuditReport()
    report.add(Finding("users", "row", "users.events", 5))
    report.add(Finding("entropy", "late", "chain.blocks", 9, 0, 9))
    report.add(Finding("randomness", "early", "chain.blocks", 3, 0, 3))
    report.add(Finding("x", "noise", "ledger.tx", severity=Severity.WARNING))
    assert not report.ok
    first = report.first_divergence()
    assert first is not None and first.height == 3
    assert report.to_json()["failures"] == 3


class _Memory:
    def __init__(self, records: list[LogRecord]) -> None:
        self.records = records

    def describe(self) -> str:
        return "memory"

    def size(self, topic: str) -> int:
        return len(self.records) if topic == "chain.blocks" else 0

    def read(self, topic: str):  # type: ignore[no-untyped-def]
        return iter(self.records if topic == "chain.blocks" else [])


def test_export_round_trip_and_tamper_detection(local_chain: LocalChain, tmp_path: Path) -> None:
    records = [LogRecord("chain.blocks", 0, 10 + i, 1000 + i, None, raw)
               for i, raw in enumerate(local_chain.records)]
    target = tmp_path / "export"
    write_export(_Memory(records), target, local_chain.genesis,
                 {"users": [{"user_id": "u", "encryption_key": b"\x01\x02", "version": 1}]})
    source = ExportSource(target)
    assert list(source.read("chain.blocks")) == records
    assert source.projection_rows() == {
        "users": [{"user_id": "u", "encryption_key": b"\x01\x02", "version": 1}]}
    assert source.genesis is not None and source.genesis.read_bytes() == \
        local_chain.genesis.read_bytes()
    with pytest.raises(ExportError):
        ExportSource(target, manifest_sha256="00" * 32)
    log = target / "topics" / "chain.blocks" / "0.log"
    data = bytearray(log.read_bytes())
    data[-1] ^= 1
    log.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="differs from the manifest"):
        ExportSource(target)


def test_projection_fold_semantics() -> None:
    """Last write wins per cell by timestamp; a deletion wins a tie and shadows what is older."""
    from services.audit.core.projection import OPERATIONS, ProjectionError, fold

    put = OPERATIONS["insert_record"]
    rows = fold([
        (put, ("u", "r1", 1, 2, b"new", 3, 20, 2)),
        (put, ("u", "r1", 1, 1, b"old", 3, 10, 1)),  # older, applied later: loses
        (put, ("u", "r2", 1, 3, b"x", 1, 30, 3)),
        (OPERATIONS["delete_record"], (3, "u", "r2")),  # same timestamp: the deletion wins
        (put, ("v", "r1", 1, 1, b"y", 1, 10, 1)),
        (OPERATIONS["delete_records"], (5, "v")),
        (put, ("v", "r9", 1, 6, b"z", 1, 60, 6)),  # newer than the partition deletion
    ])
    assert sorted((r["user_id"], r["record_id"], r["ciphertext"]) for r in rows["records"]) == [
        ("u", "r1", b"new"), ("v", "r9", b"z")]
    with pytest.raises(ProjectionError, match="takes 3 parameters"):
        fold([(OPERATIONS["delete_record"], (5, "u"))])
