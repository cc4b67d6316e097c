"""The monitor's shell without Kafka: decoding records, storing state, Alertmanager JSON,
settings, the documentation of every rule."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.monitor import alert_log, store
from services.monitor.alertmanager import batch, firing_alert, resolved_alert
from services.monitor.core.alerts import AlertRaised, AlertResolved
from services.monitor.core.facts import (
    ChunkSeen,
    DeadLettered,
    HeartbeatSeen,
    Position,
    PrecommitSeen,
    QrngAlertSeen,
    TxSubmitted,
)
from services.monitor.core.rules import RULES
from services.monitor.core.state import MonitorState, apply_record
from services.monitor.decode import INPUTS, Record, RecordDecoder
from services.monitor.metrics import METRICS, PREFIX
from services.monitor.settings import MonitorSettings
from streams.codec import default_codec
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = Settings(topic_prefix="x.")
T = 1_800_000_000_000


def _record(topic: str, schema: str, fields: dict[str, object], offset: int = 0) -> Record:
    return Record(SETTINGS.topic(topic), 0, offset, T, default_codec().encode(schema, fields))


def test_records_become_facts_and_bad_ones_are_counted() -> None:
    decoder = RecordDecoder(SETTINGS)
    beat = _record("qrng.status", "QrngHeartbeatEmitted", {
        "source_id": "q", "at_ms": T, "bytes_per_s": 5.0, "chunks_published": 3, "last_seq": 2,
        "health_state": "HEALTHY", "simulated": True, "rct_failures": 1, "apt_failures": 2})
    assert decoder.facts(beat) == (HeartbeatSeen("q", T, 5.0, "HEALTHY", 1, 2, 2),)
    alert = _record("qrng.status", "QrngAlertRaised", {
        "source_id": "q", "at_ms": T, "kind": "HEALTH_FAILURE", "test": "RCT", "detail": ""})
    assert decoder.facts(alert) == (QrngAlertSeen("q", T, "HEALTH_FAILURE", "RCT"),)
    chunk = {"source_id": "q", "seq": 4, "prev_digest": bytes(32), "payload_digest": bytes(32),
             "chunk_digest": bytes(32), "payload": b"\x01" * 100, "produced_at_ms": T,
             "simulated": True, "next_digest": bytes(32)}
    assert decoder.facts(_record("entropy.raw", "EntropyChunkPublished", chunk)) == (
        ChunkSeen("q", 4, 100, T),)
    private = _record("entropy.raw", "EntropyChunkPublished", {**chunk, "private": True})
    assert decoder.facts(private) == ()
    vote = _record("chain.consensus", "VoteCast", {
        "chain_id": "c", "height": 7, "round": 1, "vote_type": "PRECOMMIT", "block_hash": None,
        "validator": b"\xab" * 20, "signature": b""})
    assert decoder.facts(vote) == (PrecommitSeen(7, 1, "ab" * 20, False, T),)
    tx = _record("ledger.tx", "TransactionSubmitted", {
        "tx": b"t", "sender": b"s", "nonce": 1, "submitted_at_ms": T})
    assert decoder.facts(tx) == (TxSubmitted(
        "e3b98a4da31a127d4bde6e43033f66ba274cab0eb7eb1c70ec41402bf6273dd8", T),)
    dead = _record("dlq.chain", "MessageDeadLettered", {
        "source_topic": "x", "partition": 0, "offset": 1, "reason": "bad", "error_type": "sig",
        "consumer": "tally", "dead_lettered_at_ms": T})
    assert decoder.facts(dead) == (DeadLettered("dlq.chain", "sig", T),)
    garbage = Record(SETTINGS.topic("qrng.status"), 0, 9, T, b"\xc3\x01garbage")
    assert decoder.facts(garbage) == ()
    bad_block = Record(SETTINGS.topic("chain.blocks"), 0, 3, T, b"nonsense")
    assert [type(f).__name__ for f in decoder.facts(bad_block)] == ["BlockRejected"]
    assert decoder.undecodable == {"qrng.status": 1, "chain.blocks": 1}
    assert set(decoder.names().values()) == set(INPUTS)


def test_state_pieces_round_trip_through_the_table() -> None:
    policy = MonitorSettings().policy()
    state = MonitorState()
    for offset, fact in enumerate((HeartbeatSeen("q", T, 1.0, "HEALTHY", 1, 0, 0),
                                   ChunkSeen("q", 0, 10, T), TxSubmitted("d", T),
                                   DeadLettered("dlq.users", "schema", T))):
        state, _ = apply_record(policy, state, Position("t", 0, offset), (fact,))
    restored = MonitorState()
    for key in ("source/q", "network", "mempool", "dead-letters"):
        restored = store.with_piece(restored, key, store.piece_bytes(state, key))
    assert restored == state
    with pytest.raises(store.StateFormatError):
        store.loads(MonitorState, b'{"format": 99, "value": {}}')
    with pytest.raises(store.StateFormatError):
        store.with_piece(MonitorState(), "network", b"not json")


def test_alert_events_round_trip_on_the_topic() -> None:
    raised = AlertRaised("id1", "QrngQuarantined", "critical", "q", 1.0, 1.0, T, T + 5, "s",
                         (("source", "q"),))
    resolved = AlertResolved("id1", "QrngQuarantined", "critical", "q", 0.0, T, T + 9, "s")
    assert alert_log.decode(alert_log.encode(raised)) == raised
    assert alert_log.decode(alert_log.encode(resolved)) == resolved
    assert alert_log.key(raised) == alert_log.key(resolved) == b"QrngQuarantined|q"


def test_alertmanager_v2_json() -> None:
    raised = AlertRaised("id1", "ValidatorJailed", "critical", "ab" * 20, 1.0, 1.0, T, T + 5,
                         "validator abab is jailed", (("validator", "ab" * 20),))
    firing = firing_alert(raised, T + 10_000, 60_000, "http://grafana")
    assert firing == {
        "labels": {"alertname": "ValidatorJailed", "severity": "critical",
                   "service": "qustream", "validator": "ab" * 20},
        "annotations": {"summary": "validator abab is jailed", "alert_id": "id1",
                        "description": firing["annotations"]["description"],
                        "runbook": "docs/operations.md#validatorjailed"},
        "startsAt": "2027-01-15T08:00:00.000Z", "endsAt": "2027-01-15T08:04:10.000Z",
        "generatorURL": "http://grafana"}
    resolved = AlertResolved("id1", "ValidatorJailed", "critical", "ab" * 20, 0.0, T, T + 20_000,
                             "validator abab is not jailed")
    done = resolved_alert(resolved, raised)
    assert done["labels"] == firing["labels"] and done["endsAt"] == "2027-01-15T08:00:20.000Z"
    chain = AlertRaised("id2", "ChainStalled", "critical", "chain", 9.0, 3.0, T, T, "stalled")
    assert batch([chain], [(resolved, raised)], T, 1000)[0]["labels"] == {
        "alertname": "ChainStalled", "severity": "critical", "service": "qustream"}
    json.dumps(batch([raised, chain], [(resolved, raised)], T, 1000))  # serialisable


def test_settings_build_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUSTREAM_MONITOR_QRNG_WINDOW_S", "20")
    monkeypatch.setenv("QUSTREAM_MONITOR_QRNG_HOP_S", "5")
    monkeypatch.setenv("QUSTREAM_MONITOR_MISSED_PRECOMMITS", "7")
    policy = MonitorSettings().policy()
    assert (policy.qrng_window.size_ms, policy.qrng_window.hop_ms) == (20_000, 5_000)
    assert policy.missed_precommits == 7
    assert MonitorSettings.model_fields["alertmanager_url"].default is None


def test_every_rule_and_metric_is_documented() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    for rule in RULES:
        assert f"#### {rule.name}\n" in text, rule.name
    for metric in METRICS:
        assert f"`{PREFIX}{metric.name}" in text, metric.name
    for name in MonitorSettings.model_fields:
        assert f"QUSTREAM_MONITOR_{name.upper()}" in text, name


def test_a_restart_counts_what_the_restored_pieces_hold_as_read() -> None:
    """After kill -9 the group resumes past everything the pieces hold, so those records never
    come again: a partition that gets nothing new (a dead-letter topic) must still look caught
    up, or the monitor would not judge until its catch-up timeout (300 s)."""
    from services.monitor.runtime import MonitorRuntime

    policy = MonitorSettings().policy()
    state = MonitorState()
    dlq = SETTINGS.topic("dlq.chain")
    blocks = SETTINGS.topic("chain.blocks")
    state, _ = apply_record(policy, state, Position(dlq, 0, 4),
                            (DeadLettered("dlq.chain", "invalid_block", T),))
    state, _ = apply_record(policy, state, Position("q", 1, 9), (ChunkSeen("q", 0, 10, T),))
    runtime = MonitorRuntime(SETTINGS, MonitorSettings())
    runtime.restore([(key.encode(), store.piece_bytes(state, key))
                     for key in ("source/q", "network", "mempool", "dead-letters")])
    runtime.ends_measured({(dlq, 0): 5, ("q", 1): 10, (blocks, 0): 3}, time.monotonic())
    assert not runtime.check_caught_up(), "chain.blocks has not been read up to its end yet"
    runtime.apply([Record(blocks, 0, 0, T, None), Record(blocks, 0, 2, T, None)])  # 1: a marker
    assert runtime.check_caught_up()


def test_a_catch_up_that_reached_its_ends_late_reads_what_came_meanwhile_before_judging(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Guarantee 6 of services/monitor/runtime.py: reaching the ends measured at start is not
    a fresh view when it took long (blocks finalized meanwhile are unread, and the chain would
    look stalled). The monitor measures again until one round is quick, and judges then."""
    from services.monitor import runtime as module

    clock = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: clock[0])
    options = MonitorSettings(fresh_s=1.0, catch_up_timeout_s=60.0)
    runtime = module.MonitorRuntime(SETTINGS, options)
    runtime.restore([])
    runtime.alerts_loaded = True
    blocks = SETTINGS.topic("chain.blocks")
    # the chain's view at start: a block every second, the last one folded 0.5 s before
    runtime.apply([Record(blocks, 0, offset, T, None) for offset in range(3)])
    runtime.ends_measured({(blocks, 0): 10}, clock[0])
    clock[0] += 6.0  # reading up to offset 10 took 6 s
    runtime.apply([Record(blocks, 0, offset, T, None) for offset in range(3, 10)])
    assert runtime.evaluate(T) == () and not runtime.caught_up
    assert runtime.needs_ends, "the records written in those 6 s are not folded yet"
    assert not runtime.check_caught_up()  # still: no ends until they are measured again

    runtime.ends_measured({(blocks, 0): 16}, clock[0])  # 6 more blocks came meanwhile
    clock[0] += 0.4
    runtime.apply([Record(blocks, 0, offset, T, None) for offset in range(10, 15)])
    assert not runtime.check_caught_up(), "offset 15 is not read yet"
    runtime.apply([Record(blocks, 0, 15, T, None)])
    assert runtime.check_caught_up() and not runtime.needs_ends

    # a catch-up whose every round is late still ends: judged after catch_up_timeout_s
    runtime._stale()  # as after a read-back
    began, end = clock[0], 16
    while not runtime.check_caught_up():
        assert runtime.needs_ends or end == 16
        end += 3
        runtime.ends_measured({(blocks, 0): end}, clock[0])
        clock[0] += 2.5
        runtime.apply([Record(blocks, 0, offset, T, None) for offset in range(end - 3, end)])
    assert 60.0 <= clock[0] - began <= 62.5


def test_a_batch_is_done_only_when_its_changelog_writes_are_acknowledged() -> None:
    """Faust may commit a batch's offsets once the agent is done with it, so the agent waits for
    the changelog to acknowledge every piece it wrote (a failed write fails the batch)."""
    import asyncio

    import faust

    from services.monitor.app import _StateTable

    async def scenario() -> None:
        app = faust.App("unit-monitor", broker="kafka://127.0.0.1:1", store="memory://",
                        autodiscover=False, web_enabled=False)
        changelog = app.topic("unit.monitor.state", partitions=1, key_type=bytes,
                              value_type=bytes)
        table = _StateTable(app, name="state", default=None, partitions=1,
                            changelog_topic=changelog, key_type=bytes, value_type=bytes)
        sent = [table.send_changelog(0, b"source:q", b"1"),
                table.send_changelog(0, b"network", b"2")]
        waiting = asyncio.ensure_future(table.written())
        await asyncio.sleep(0.05)
        assert not waiting.done(), "done before the broker acknowledged anything"
        sent[0].set_result(None)  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        assert not waiting.done(), "done with one write still in flight"
        sent[1].set_result(None)  # type: ignore[arg-type]
        await asyncio.wait_for(waiting, 1)
        await asyncio.wait_for(table.written(), 1)  # nothing pending: returns at once

        failed = table.send_changelog(0, b"network", b"3")
        failed.set_exception(RuntimeError("broker refused"))
        with pytest.raises(RuntimeError, match="broker refused"):
            await table.written()

    asyncio.run(scenario())


@settings(max_examples=30, deadline=None)
@given(held=st.integers(min_value=0, max_value=12), committed=st.integers(min_value=0,
                                                                           max_value=12))
def test_a_restart_folds_what_the_group_committed_past_the_restored_pieces(
        held: int, committed: int) -> None:
    """Guarantee 3 rests on the state, not on when Faust commits: records the group committed
    past what the restored pieces hold are read back and folded before anything else, so the
    pieces equal a fold of every record, whatever the restored piece and the commit were."""
    from services.monitor.runtime import MonitorRuntime

    policy = MonitorSettings().policy()
    raw = SETTINGS.topic("entropy.raw")
    chunk = {"source_id": "q", "prev_digest": bytes(32), "payload_digest": bytes(32),
             "chunk_digest": bytes(32), "payload": b"\x01" * 100, "simulated": True,
             "next_digest": bytes(32)}
    records = [Record(raw, 0, offset, T + offset, default_codec().encode(
        "EntropyChunkPublished", {**chunk, "seq": offset, "produced_at_ms": T + offset * 1000}))
        for offset in range(16)]
    decoder = RecordDecoder(SETTINGS)

    def fold(upto: int, state: MonitorState = MonitorState()) -> MonitorState:
        for record in records[:upto]:
            state, _ = apply_record(policy, state, Position(raw, 0, record.offset),
                                    decoder.facts(record))
        return state

    restored = fold(held)  # what the changelog held at the crash
    reads: list[tuple[int, int]] = []

    def read(topic: str, partition: int, start: int, end: int) -> list[Record]:
        reads.append((start, end))
        return records[start:end]

    runtime = MonitorRuntime(SETTINGS, MonitorSettings(), read=read)
    runtime.restore([(key.encode(), store.piece_bytes(restored, key))
                     for key in ("source/q",) if restored.sources])
    runtime._committed = {(raw, 0): committed}  # where Faust resumes
    changed = runtime.fill_gaps()
    runtime.apply(records[max(committed, 0):])  # what Faust then delivers
    assert runtime.state.sources == fold(len(records)).sources
    if committed > held:
        assert reads == [(held, committed)] and changed == ["source/q"]
    else:
        assert reads == [] and changed == []
