"""What bench.finality reads from a CometBFT node's log and from a validator's, and how it turns
blocks into figures."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import pytest

from bench.cometbft import parse_log
from bench.finality import WARMUP, latency, parse_decisions, throughput
from protocol.keys import Algorithm
from tests.support.peers import Peers, network_spec, node_under_test, validator_keys

# Node 0's log lines as CometBFT v1.0.1 writes them (log_level info), shortened hashes.
LOG = """\
I[2026-11-28|23:49:59.588] Received proposal                            module=consensus \
proposal="Proposal{1/0 (33E7:1:7F58, -1) D518 @ 2026-11-28T23:49:58.427626147Z}" proposer=202F
I[2026-11-28|23:49:59.600] Finalizing commit of block                   module=consensus \
height=1 hash=AD17 root=0000000000000000 num_txs=0
I[2026-11-28|23:49:59.666] Received proposal                            module=consensus \
proposal="Proposal{2/1 (9A71:1:8213, -1) A5BF @ 2026-11-28T23:49:59.630036319Z}" proposer=8190
I[2026-11-28|23:49:59.747] Finalizing commit of block                   module=consensus \
height=2 hash=BBBA root=0000000000000000 num_txs=0
I[2026-11-28|23:49:59.800] Finalizing commit of block                   module=consensus \
height=3 hash=73CE root=0000000000000000 num_txs=0
E[2026-11-28|23:49:59.810] something unrelated                          module=p2p
"""


def test_every_commit_counts_and_a_missing_proposal_is_nan() -> None:
    records = parse_log(iter(LOG.splitlines()))
    assert [height for height, _, _ in records] == [1, 2, 3]
    (_, p1, c1), (_, p2, c2), (_, p3, c3) = records
    assert (c1 - p1, c2 - p2) == (12.0, 81.0)  # ms, from the log's millisecond stamps
    assert math.isnan(p3) and c3 - c2 == 53.0


def test_latency_skips_unknown_proposals_and_throughput_uses_commit_times() -> None:
    blocks = [(h, math.nan if h % 5 == 0 else 1000.0 * h, 1000.0 * h + 40) for h in range(1, 54)]
    p50, p99 = latency(blocks)
    assert p50 == p99 == 40.0
    steady = blocks[WARMUP:]
    assert throughput(blocks) == (len(steady) - 1) * 1000 / (steady[-1][2] - steady[0][2])


def test_a_validator_logs_each_decision_with_the_time_since_its_proposal_arrived(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The node-side span bench.finality sets beside CometBFT's: for a peer's proposal, from the
    poll that carried it to the decision (here the precommits come ``pause`` after it); for the
    node's own, from making it (right after the previous decision)."""
    pause = 0.08
    keys = validator_keys(4, Algorithm.ED25519)
    spec = network_spec(keys)
    node, recorder = node_under_test(spec, keys[0], tmp_path / "guard")
    peers = Peers(spec, keys, keys[0], node.settings)
    spans: dict[int, tuple[float, bool]] = {}  # height -> (upper bound ms, peer's proposal)
    caplog.set_level(logging.INFO, logger="services.consensus.validator")
    try:
        made = time.monotonic()  # the node's own proposal of the next height is made after this
        node.tick()
        peers.read(recorder)
        for _ in range(8):
            height = peers.prepare()
            from_peer = height.proposal.proposer_address != keys[0].address
            started = time.monotonic() if from_peer else made
            node.handle_batch(height.first)
            node.tick()
            time.sleep(pause)
            made = time.monotonic()  # the decision, and the next height's start, follow
            node.handle_batch(height.second)
            node.tick()
            node.settle()
            spans[height.proposal.height] = ((time.monotonic() - started) * 1000, from_peer)
            peers.read(recorder)
            peers.decided(height)
    finally:
        node.close()
    decided = {h: ms for h, _, ms in parse_decisions(r.getMessage() for r in caplog.records)}
    assert sorted(decided) == sorted(spans)
    kinds = {from_peer for _, from_peer in spans.values()}
    assert kinds == {True, False}  # the proposer rotates: both sources of the start are seen
    for h, (bound, _) in spans.items():
        assert pause * 1000 <= decided[h] <= bound + 0.1  # the log's one decimal


def test_decisions_are_read_from_a_validator_log_line_by_line() -> None:
    lines = ["2026-11-30 18:40:01,002 INFO validator-4f1c decided height 7 round 1, 12.5 ms "
             "after its proposal reached this node",
             "2026-11-30 18:40:01,003 INFO validator-4f1c decided height 8 round 0",
             "2026-11-30 18:40:01,004 WARNING something else"]
    assert parse_decisions(lines) == [(7, 0.0, 12.5)]
