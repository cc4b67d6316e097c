"""What bench.finality reads from a CometBFT node's log and how it turns blocks into figures."""

from __future__ import annotations

import math

from bench.cometbft import parse_log
from bench.finality import WARMUP, latency, throughput

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
