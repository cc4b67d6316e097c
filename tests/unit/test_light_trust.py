"""The SDK light client's trusting period (issue 16, item 16).

From a checkpoint older than the trusting period, the validators it trusts may have unbonded
and could sign a fake block (far ahead, or the very next one) without being punishable: the
light client refuses to verify anything from such a checkpoint, as CometBFT's does. The chain
here is genuine and signed by the checkpoint's validators, which is exactly what makes the
refusal necessary: signatures alone cannot tell a stale set's forgery from the truth.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdk.errors import BlockRejectedError, TrustExpiredError
from sdk.subscriber import (
    DAY_MS,
    DEFAULT_TRUSTING_PERIOD_MS,
    BlockSubscriber,
    TrustedCheckpoint,
    trusting_period_for,
)
from sdk.testing import LocalChain, make_local_chain
from services.ledger.core.chain_spec import ChainSpec
from services.ledger.core.params import Params
from streams.chain_wire import decode_finalized
from tests.support.block_sources import ListSource


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> LocalChain:
    return make_local_chain(tmp_path_factory.mktemp("trust"), 12)


def light(chain: LocalChain, now_ms: int, period_ms: int) -> BlockSubscriber:
    return BlockSubscriber(ListSource(list(chain.records)),
                           checkpoint=TrustedCheckpoint.from_genesis(chain.genesis),
                           trusting_period_ms=period_ms, clock_ms=lambda: now_ms)


@settings(max_examples=60, deadline=None)
@given(age_ms=st.integers(0, 40 * DAY_MS), period_ms=st.integers(1, 30 * DAY_MS),
       skip=st.booleans())
def test_property_verification_from_a_checkpoint_is_refused_iff_it_is_older_than_the_period(
        chain: LocalChain, age_ms: int, period_ms: int, skip: bool) -> None:
    checkpoint = TrustedCheckpoint.from_genesis(chain.genesis)
    far = decode_finalized(chain.records[9])
    # the clock is at least the far block's time (never "the future")
    now = max(checkpoint.time_ms + age_ms, far.block.header.time_ms)
    subscriber = light(chain, now, period_ms)
    expired = now - checkpoint.time_ms >= period_ms

    def attempt() -> object:
        if skip:
            return subscriber.skip_to(chain.records[9], 9)
        return subscriber.verify(chain.records[0], 0)

    if expired:
        with pytest.raises(TrustExpiredError):
            attempt()
        assert subscriber.next_height == 1  # nothing was trusted
    else:
        assert attempt() is not None


def test_a_subscriber_that_keeps_up_renews_its_trust(chain: LocalChain) -> None:
    """Each verified block is the new trusted block: five seconds of trust suffice for twelve
    blocks a second apart, as long as each comes within five seconds of the one before."""
    clock = [0]
    subscriber = BlockSubscriber(ListSource(list(chain.records)),
                                 checkpoint=TrustedCheckpoint.from_genesis(chain.genesis),
                                 trusting_period_ms=5_000, clock_ms=lambda: clock[0])
    for position, raw in enumerate(chain.records):
        clock[0] = decode_finalized(raw).block.header.time_ms + 2_000
        assert subscriber.verify(raw, position) is not None
    stale = BlockSubscriber(ListSource(list(chain.records)),
                            checkpoint=TrustedCheckpoint.from_genesis(chain.genesis),
                            trusting_period_ms=5_000, clock_ms=lambda: clock[0])
    with pytest.raises(TrustExpiredError):
        list(stale)  # the same blocks, but from a checkpoint 14 s old


def test_a_block_from_the_future_is_refused(chain: LocalChain) -> None:
    first = decode_finalized(chain.records[0]).block.header.time_ms
    subscriber = light(chain, first - 60_000, DEFAULT_TRUSTING_PERIOD_MS)
    with pytest.raises(BlockRejectedError, match="ahead of this clock"):
        subscriber.verify(chain.records[0], 0)
    assert light(chain, first - 5_000, DEFAULT_TRUSTING_PERIOD_MS).verify(
        chain.records[0], 0) is not None  # within the allowed drift


def test_the_default_period_is_well_under_the_unbonding_period(chain: LocalChain) -> None:
    params = ChainSpec.load(chain.genesis).initial.app_state.params
    unbonding_ms = params.unbonding_period_blocks * DAY_MS // params.blocks_per_day
    assert 0 < trusting_period_for(params) <= unbonding_ms * 2 // 3
    assert trusting_period_for(Params()) == DEFAULT_TRUSTING_PERIOD_MS
    assert unbonding_ms > DEFAULT_TRUSTING_PERIOD_MS  # 14 days of 21
    # the real clock: a recent chain verifies with the defaults
    assert [b.height for b in BlockSubscriber(
        ListSource(list(chain.records)),
        checkpoint=TrustedCheckpoint.from_genesis(chain.genesis))] == list(range(1, 13))
