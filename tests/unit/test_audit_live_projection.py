"""The audit compares the live user projection while the shard_writer keeps applying events.

The live rows are read after the projection's positions, so they hold every event before the
positions and, racing the reader, any number of later ones. Whatever that race left in the
rows, the audit must not call a divergence (users with events past the positions are left out
and counted); and any change to the rows of a user the projection had fully applied, or a row
of a user the log never had, is still a failure."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.audit.core.findings import AuditReport
from services.audit.core.rows import LiveProjection, unsettled_users
from services.audit.replay import audit_users, rebuild_in_memory
from services.audit.sources import LogRecord, MemorySource
from services.shard_writer.consistency import LoggedEvent
from services.shard_writer.core import Event, RecordPut, UserRegistered, event_to_record
from streams.codec import default_codec

PARTITIONS = 3


def _log(lengths: list[int], order: list[int]) -> list[LoggedEvent]:
    """Users ``u`` with ``lengths[u]`` events each, interleaved by ``order`` (user indexes,
    taken while that user has events left), each user on partition ``u % PARTITIONS``."""
    pending = {u: [Event(f"{u:040x}", 1, f"reg-{u}", 1,
                         UserRegistered("ed25519:AA==", os.urandom(32)))]
               + [Event(f"{u:040x}", v, f"c-{u}-{v}", v, RecordPut(f"r{v % 3}", v // 3 + 1,
                                                                  os.urandom(8)))
                  for v in range(2, n + 1)]
               for u, n in enumerate(lengths)}
    sequence = [u for u in order if u in pending] + sorted(pending)
    offsets = [0] * PARTITIONS
    logged: list[LoggedEvent] = []
    for user in sequence:
        while pending.get(user):
            event = pending[user].pop(0)
            partition = user % PARTITIONS
            logged.append(LoggedEvent(partition, offsets[partition], event))
            offsets[partition] += 1
            if user in order:
                break
    return logged


def _source(logged: list[LoggedEvent]) -> MemorySource:
    codec = default_codec()
    return MemorySource({"users.events": [
        LogRecord("users.events", item.partition, item.offset, 0, item.event.user_id.encode(),
                  codec.encode("UserEventRecorded", event_to_record(item.event)))
        for item in sorted(logged, key=lambda i: (i.partition, i.offset))]})


def _audit(logged: list[LoggedEvent], live: LiveProjection) -> AuditReport:
    report = AuditReport()
    audit_users(_source(logged), None, lambda: live, report, rebuild="memory")
    return report


histories = st.lists(st.integers(1, 6), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(lengths=histories, data=st.data())
def test_rows_racing_ahead_of_the_positions_are_never_a_divergence(
        lengths: list[int], data: st.DataObject) -> None:
    order = data.draw(st.lists(st.integers(0, len(lengths) - 1), max_size=40))
    logged = _log(lengths, order)
    ends = [sum(1 for i in logged if i.partition == p) for p in range(PARTITIONS)]
    positions = {p: data.draw(st.integers(0, ends[p])) for p in range(PARTITIONS)}
    raced = {p: data.draw(st.integers(positions[p], ends[p])) for p in range(PARTITIONS)}
    live_rows = rebuild_in_memory([i for i in logged if i.offset < raced[i.partition]])

    report = _audit(logged, LiveProjection(live_rows, positions))

    assert report.ok, [f.reason for f in report.failures[:3]]
    unsettled = unsettled_users(((i.partition, i.offset, i.event.user_id) for i in logged),
                                positions)
    settled = {i.event.user_id for i in logged} - unsettled
    assert report.checked["users_not_settled"] == len(unsettled)
    assert report.checked.get("user_rows_users", 0) == len(settled)
    lagging = any(positions[p] < ends[p] for p in range(PARTITIONS))
    assert any(w.check == "users_lag" for w in report.warnings) == lagging


@settings(max_examples=40, deadline=None)
@given(lengths=histories, data=st.data())
def test_a_changed_row_of_a_settled_user_is_still_found(
        lengths: list[int], data: st.DataObject) -> None:
    logged = _log(lengths, data.draw(st.lists(st.integers(0, len(lengths) - 1), max_size=40)))
    ends = {p: sum(1 for i in logged if i.partition == p) for p in range(PARTITIONS)}
    # Caught up except on one partition, whose users are left out.
    behind = data.draw(st.integers(0, PARTITIONS - 1))
    positions = {**ends, behind: data.draw(st.integers(0, ends[behind]))}
    live_rows: dict[str, list[dict[str, Any]]] = rebuild_in_memory(logged)
    unsettled = unsettled_users(((i.partition, i.offset, i.event.user_id) for i in logged),
                                positions)
    candidates = [r for r in live_rows["users"] if r["user_id"] not in unsettled]
    if candidates:
        victim = data.draw(st.sampled_from(candidates))
        live_rows["users"] = [dict(r, version=r["version"] + 7) if r is victim else r
                              for r in live_rows["users"]]
        report = _audit(logged, LiveProjection(live_rows, positions))
        assert not report.ok
        assert victim["user_id"] in report.first_divergence().reason  # type: ignore[union-attr]
    forged = {"user_id": "f" * 40, **{k: v for k, v in live_rows["users"][0].items()
                                      if k != "user_id"}}
    report = _audit(logged, LiveProjection({**live_rows, "users": [*live_rows["users"], forged]},
                                           positions))
    assert any("f" * 40 in f.reason and "extra" in f.reason for f in report.failures)


def test_without_positions_every_row_is_compared() -> None:
    logged = _log([3, 2, 4], [0, 1, 2, 0])
    behind = rebuild_in_memory([i for i in logged if i.event.version < 2])
    report = _audit(logged, LiveProjection(behind, None))
    assert not report.ok and any("positions are not known" in n for n in report.notes)
    assert _audit(logged, LiveProjection(rebuild_in_memory(logged), None)).ok
