"""Delivery that skips records (guarantee 4 of services/monitor/runtime.py): the gap is found by
the pure ``core.delivery.skipped``, read back through the runtime's reader, and folded in order;
on topics written in transactions a commit marker's offset is not read back, a longer jump is.

The property over kills, restarts and skips together is in test_monitor_restart.py."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from sdk.testing import make_local_chain
from services.monitor.core.delivery import Skipped, skipped
from services.monitor.core.facts import Position
from services.monitor.decode import Record
from services.monitor.ledger import LedgerView
from services.monitor.metrics import MonitorCollector
from services.monitor.runtime import MonitorRuntime
from services.monitor.settings import MonitorSettings
from streams.codec import default_codec
from streams.settings import Settings

SETTINGS = Settings(topic_prefix="x.")
RAW, BLOCKS = SETTINGS.topic("entropy.raw"), SETTINGS.topic("chain.blocks")
T = 1_800_000_000_000


def _chunk(offset: int) -> Record:
    return Record(RAW, 0, offset, T, default_codec().encode("EntropyChunkPublished", {
        "source_id": "q", "seq": offset, "prev_digest": bytes(32), "payload_digest": bytes(32),
        "chunk_digest": bytes(32), "payload": b"\x01" * 4096, "produced_at_ms": T + offset,
        "simulated": True, "next_digest": bytes(32)}))


LOG = [_chunk(offset) for offset in range(8)]


# (description, expected before, delivered (topic, partition, offset), skipped, expected after)
CASES = [
    ("a partition nothing is known of starts at offset 0", {}, [(RAW, 0, 0), (RAW, 0, 1)],
     [None, None], {f"{RAW}:0": 2}),
    ("its first record past 0 reveals the offsets before it", {}, [(RAW, 0, 3)],
     [Skipped(RAW, 0, 0, 3)], {f"{RAW}:0": 4}),
    ("a jump in the middle", {f"{RAW}:0": 5}, [(RAW, 0, 5), (RAW, 0, 8), (RAW, 0, 9)],
     [None, Skipped(RAW, 0, 6, 8), None], {f"{RAW}:0": 10}),
    ("a redelivery moves nothing back", {f"{RAW}:0": 5}, [(RAW, 0, 2), (RAW, 0, 5)],
     [None, None], {f"{RAW}:0": 6}),
    ("partitions are apart", {f"{RAW}:0": 2, f"{RAW}:1": 7}, [(RAW, 1, 7), (RAW, 0, 4)],
     [None, Skipped(RAW, 0, 2, 4)], {f"{RAW}:0": 5, f"{RAW}:1": 8}),
    ("a transactional topic jumps over commit markers", {f"{BLOCKS}:0": 1},
     [(BLOCKS, 0, 2), (BLOCKS, 0, 4)], [None, None], {f"{BLOCKS}:0": 5}),
    ("there a jump past more than a marker is a skip", {f"{BLOCKS}:0": 1},
     [(BLOCKS, 0, 2), (BLOCKS, 0, 8)], [None, Skipped(BLOCKS, 0, 3, 8)], {f"{BLOCKS}:0": 9}),
]


@pytest.mark.parametrize(("before", "delivered", "found", "after"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_skipped_offsets(before: dict[str, int], delivered: list[tuple[str, int, int]],
                         found: list[Skipped | None], after: dict[str, int]) -> None:
    positions = [Position(*where) for where in delivered]
    assert skipped(before, positions, {BLOCKS}) == (tuple(found), after)


def test_a_skipped_record_is_read_back_folded_first_logged_and_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    reads: list[tuple[str, int, int, int]] = []

    def read(topic: str, partition: int, start: int, end: int) -> list[Record]:
        reads.append((topic, partition, start, end))
        return LOG[start:end]

    runtime = MonitorRuntime(SETTINGS, MonitorSettings(), read=read)
    runtime.restore([])
    whole = MonitorRuntime(SETTINGS, MonitorSettings())
    whole.restore([])
    whole.apply(LOG)
    with caplog.at_level(logging.WARNING, logger="services.monitor.runtime"):
        runtime.apply(LOG[:2])
        assert runtime.apply([LOG[4], LOG[5]]) == ["source/q"]
        runtime.apply(LOG[5:])  # a redelivery, then the rest: nothing more to read
    assert reads == [(RAW, 0, 2, 4)]
    assert runtime.state == whole.state
    assert [r.getMessage() for r in caplog.records] == [
        f"{RAW}[0]: offsets 2..4 were not delivered: 2 records read back from Kafka and folded"]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector(runtime.snapshot))
    assert ('qustream_monitor_delivery_gaps_total{topic="entropy.raw"} 1.0'
            in generate_latest(registry).decode())


def test_a_read_back_that_finds_only_markers_is_not_repeated() -> None:
    reads: list[tuple[int, int]] = []

    def read(topic: str, partition: int, start: int, end: int) -> list[Record]:
        reads.append((start, end))
        return []  # an aborted transaction, or a writer missing from WRITTEN_IN_TRANSACTIONS

    runtime = MonitorRuntime(SETTINGS, MonitorSettings(), read=read)
    runtime.restore([])
    runtime.apply([LOG[0], LOG[3]])
    runtime.apply([LOG[3], LOG[4]])
    assert reads == [(1, 3)]


def test_commit_markers_on_transactional_topics_are_not_read_back() -> None:
    """The tally writes chain.blocks in transactions: a commit marker follows every block, so
    offsets go 0, 2, 4...; reading each jump back would cost a broker round trip per block."""

    def read(topic: str, partition: int, start: int, end: int) -> list[Record]:
        raise AssertionError(f"read back {topic}[{partition}] {start}..{end}")

    runtime = MonitorRuntime(SETTINGS, MonitorSettings(), read=read)
    runtime.restore([])
    for name in ("chain.blocks", "dlq.chain", "dlq.users"):
        runtime.apply([Record(SETTINGS.topic(name), 0, offset, T, b"")
                       for offset in (1, 3, 4, 6)])
    assert not runtime.read_back


def test_an_aborted_transaction_s_offsets_are_read_once_and_are_no_gap(
        caplog: pytest.LogCaptureFixture) -> None:
    reads: list[tuple[int, int]] = []

    def read(topic: str, partition: int, start: int, end: int) -> list[Record]:
        reads.append((start, end))
        return []  # read_committed never returns an aborted transaction's records

    runtime = MonitorRuntime(SETTINGS, MonitorSettings(), read=read)
    runtime.restore([])
    with caplog.at_level(logging.WARNING, logger="services.monitor.runtime"):
        runtime.apply([Record(SETTINGS.topic("dlq.chain"), 0, offset, T, b"")
                       for offset in (0, 5, 7)])  # 1..3 aborted, 4 their marker, 6 a marker
    assert reads == [(1, 5)]
    assert not runtime.read_back and not caplog.records


def test_blocks_delivery_skipped_are_read_back_and_followed(tmp_path: Path) -> None:
    """Faust skipped blocks of chain.blocks after a restart (CI, a monitor killed with -9): the
    ledger view then refused every later block as not following and the monitor raised
    ChainStalled on a chain that went on. The skip is a jump past more than one marker."""
    chain = make_local_chain(tmp_path, 8)
    log = {2 * index: Record(BLOCKS, 0, 2 * index, T, value)  # block, marker, block, ...
           for index, value in enumerate(chain.records)}
    reads: list[tuple[int, int]] = []

    def read(topic: str, partition: int, start: int, end: int) -> list[Record]:
        reads.append((start, end))
        return [log[offset] for offset in range(start, end) if offset in log]

    runtime = MonitorRuntime(SETTINGS, MonitorSettings(), LedgerView(chain.genesis), read=read)
    runtime.restore([])
    runtime.apply([log[0], log[2], log[4]])  # heights 1-3
    runtime.apply([log[12], log[14]])  # 4-6 (offsets 6, 8, 10) never delivered
    assert reads == [(5, 12)]
    assert runtime.state.network.height == 8
    assert runtime.state.network.rejected is None
    assert runtime.read_back == {"chain.blocks": 1}


def test_after_a_read_back_nothing_is_judged_until_the_ends_are_read_up_to_again() -> None:
    """The read-back paused folding while the inputs went on: a stall judged on that view
    would be a stale one (guarantee 6), so the runtime asks for the ends to be measured anew
    and judges nothing until it has read up to them."""
    runtime = MonitorRuntime(SETTINGS, MonitorSettings(),
                             read=lambda topic, partition, start, end: LOG[start:end])
    runtime.restore([])
    runtime.alerts_loaded = True
    runtime.caught_up = True
    runtime.apply(LOG[:2])
    assert not runtime.needs_ends
    runtime.apply([LOG[4]])  # 2..3 read back
    assert runtime.needs_ends and not runtime.caught_up
    assert not runtime.check_caught_up()
    assert runtime.evaluate(T + 10**9) == ()  # however long since the last record
    runtime.ends_measured({(RAW, 0): 7}, time.monotonic())  # what measure_ends finds in Kafka
    assert not runtime.check_caught_up()
    runtime.apply(LOG[5:7])
    assert runtime.check_caught_up()
