"""Where a restarted validator reads its inputs from (issue 17 item 2): log times derived from
the chain state it starts at, never the beginning of a long history."""

from __future__ import annotations

from pathlib import Path

from protocol.follow import BlockFollower
from sdk.testing import make_local_chain
from services.consensus.mempool import FUTURE_TTL_HEIGHTS
from services.consensus.validator import CLOCK_SKEW_MS, NodeOptions, input_start_times
from services.ledger.core.chain_spec import ChainSpec
from streams.chain_wire import decode_finalized


def test_inputs_start_at_times_the_chain_gives(tmp_path: Path) -> None:
    heights = FUTURE_TTL_HEIGHTS + 30
    chain = make_local_chain(tmp_path, heights)
    spec = ChainSpec.load(chain.genesis)
    assert input_start_times(spec.initial, NodeOptions()) == {}  # at genesis: everything
    follower: BlockFollower = spec.follower()  # type: ignore[type-arg]
    times = {}
    for raw in chain.records:
        record = decode_finalized(raw)
        follower.accept(record)
        times[record.height] = record.block.header.time_ms
    starts = input_start_times(follower.chain, NodeOptions(entropy_lookback_ms=120_000))
    window = follower.chain.history
    assert starts["chain.evidence"] == window[0].time_ms - CLOCK_SKEW_MS
    assert starts["ledger.tx"] == times[heights - FUTURE_TTL_HEIGHTS] - CLOCK_SKEW_MS
    assert starts["entropy.raw"] == times[heights] - 120_000 - CLOCK_SKEW_MS
    assert "entropy.raw" not in input_start_times(follower.chain,
                                                  NodeOptions(entropy_lookback_ms=0))
