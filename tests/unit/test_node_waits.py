"""How long a validator's run loop may wait for input while its commit window is open (the
window itself: ``services/consensus/node.py``). ``tests.support.peers`` plays the others; no
Kafka."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protocol.keys import Algorithm
from protocol.messages import VoteType
from services.consensus.node import MAX_STARTS_PER_INPUT, STALL_REPORT_S
from streams.kafka import Position, Record
from tests.support.peers import network_spec, node_at_height_1, node_under_test, validator_keys


def _logged_ago(record: Record, ms: int) -> Record:
    return dataclasses.replace(record, timestamp_ms=record.timestamp_ms - ms)


@contextlib.contextmanager
def _node_at_height_1(tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    with node_at_height_1(tmp_path) as (node, _, height):
        yield node, height


def test_a_passed_absent_window_does_not_spin_the_loop(tmp_path: Path) -> None:
    """Decided on a precommit logged 500 ms ago, with one precommit still missing: the short
    window (300 ms) is over, the full one (1 s) is not, so nothing but that precommit or the
    full window's end can start the next height; the loop waits for input meanwhile instead of
    polling with no wait."""
    with _node_at_height_1(tmp_path) as (node, height):
        node.handle_batch([_logged_ago(r, 500) for r in height.first])
        node.handle_batch([_logged_ago(r, 500) for r in height.second[:-1]])
        assert node.follower.next_height == 2 and node.height == 1  # decided, window open
        assert node.tick() > 0.01
        assert node.height == 1
        node.handle_batch(height.second[-1:])  # the last precommit closes the window
        node.tick()
        assert node.height == 2


def test_an_undecided_height_is_reported_with_what_the_node_counted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A height that does not decide is not silent: after ``STALL_REPORT_S`` the node logs its
    round, step and counts, once per period, and a decision ends the reports."""
    with _node_at_height_1(tmp_path) as (node, height):
        node.handle_batch(height.first[:2])  # the proposal (or a prevote) and a prevote
        caplog.set_level(logging.WARNING, logger="services.consensus.node")
        node.tick()
        assert not caplog.records  # not stalled yet
        node._progress_at -= STALL_REPORT_S + 1  # as if the height had started that long ago
        node.tick()
        node.tick()
        reports = [r.getMessage() for r in caplog.records]
        assert len(reports) == 1, reports
        counted = node.state.votes.get(0, VoteType.PREVOTE).votes
        assert "height 1 undecided" in reports[0]
        assert f"prevotes {len(counted)}/4" in reports[0]
        assert "last consensus input" in reports[0]
        node.handle_batch(height.first[2:])
        node.handle_batch(height.second)
        node.tick()
        assert node.follower.next_height == 2
        node._stall_reported_at = 0.0
        node.tick()
        assert len(caplog.records) == 1  # decided: no report until the next height stalls


class _StuckFetcher:
    """The two calls ``_refetch_if_stuck`` makes of a consumer whose fetcher went quiet while
    ``chain.consensus`` ends at ``end``."""

    name = "stuck"

    def __init__(self, end: int) -> None:
        self.end = end
        self.seeks: list[Position] = []

    def watermarks(self, topic: str, partition: int = 0, timeout_s: float = 60.0
                   ) -> tuple[int, int]:
        return 0, self.end

    def seek(self, position: Position) -> None:
        self.seeks.append(position)


def test_a_stalled_node_that_reads_nothing_though_the_log_grew_fetches_again(
        tmp_path: Path) -> None:
    """A height stalled and nothing read from chain.consensus for the report period: if the
    topic holds records past the node's position the node seeks there (its fetcher is stuck);
    if it read to the end (the others are silent) it leaves the consumer alone."""
    with _node_at_height_1(tmp_path) as (node, height):
        node.handle_batch(height.first[:1])
        read_to = height.first[0].offset + 1
        for end, expected in ((read_to, []), (read_to + 5, [read_to])):
            fetcher = _StuckFetcher(end)
            node._consumer, node._consensus_topic = fetcher, "t"  # type: ignore[assignment]
            node._progress_at -= STALL_REPORT_S + 1
            node._consensus_read_at -= STALL_REPORT_S + 1
            node._stall_reported_at = 0.0
            node.tick()
            assert [p.offset for p in fetcher.seeks] == expected
            assert all((p.topic, p.partition) == ("t", 0) for p in fetcher.seeks)


def test_a_lone_validator_without_interval_starts_heights_in_a_loop_and_yields(
        tmp_path: Path) -> None:
    """One validator decides its own proposal at once: each decision used to start the next
    height from inside the last one's start (a recursion per height, RecursionError near
    height 250, within the first tick). Heights now start in a loop, ``MAX_STARTS_PER_INPUT``
    per tick, so the run loop polls in between."""
    keys = validator_keys(1, Algorithm.ED25519)
    node, recorder = node_under_test(network_spec(keys), keys[0], tmp_path / "guard")
    try:
        for ticks in range(1, 11):
            node.tick()
            assert node.follower.next_height == 1 + ticks * MAX_STARTS_PER_INPUT
    finally:
        node.close()
    decided = 10 * MAX_STARTS_PER_INPUT
    assert sum(topic.endswith("chain.consensus") for topic, _ in recorder.sent) >= 3 * decided
