"""Pulses by time and height (``protocol.pulse_index``) over the gateway's window and archive."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import InputError
from protocol.finalized import FinalizedRecord
from protocol.pulse_index import (
    BeforeGenesisError,
    InvalidTimeError,
    PulseNotRetainedError,
    PulseNotYetError,
    parse_time_ms,
    pulse_after,
    pulse_at_height,
    pulse_at_or_after,
    pulse_before,
    pulse_next,
    pulse_previous,
)
from sdk.testing import make_local_chain
from services.gateway.chain import ChainView
from services.gateway.pulses import GatewayPulses
from services.ledger.core.chain_spec import ChainSpec
from streams.chain_wire import decode_finalized

HEIGHTS = 12
INTERVAL = 1000


class MemoryArchive:
    """Older blocks from a list (what ``KafkaBlockArchive`` reads back from chain.blocks)."""

    def __init__(self, records: list[FinalizedRecord]) -> None:
        self.records = records

    def block(self, height: int) -> FinalizedRecord | None:
        return self.records[height - 1] if 1 <= height <= len(self.records) else None

    def at_or_after(self, time_ms: int) -> FinalizedRecord | None:
        return next((r for r in self.records if r.block.header.time_ms >= time_ms), None)

    def range(self, first: int, last: int) -> list[FinalizedRecord]:
        return self.records[first - 1:last]

    def stored(self, height: int) -> None:
        return None


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, list[FinalizedRecord]]:
    local = make_local_chain(tmp_path_factory.mktemp("pulses"), HEIGHTS,
                             genesis_time_ms=1_000_000)
    spec = ChainSpec.load(local.genesis)
    return spec.initial.tip.previous_time_ms, [decode_finalized(raw) for raw in local.records]


def source(chain: tuple[int, list[FinalizedRecord]], *, retain: int = 5000,
           archive: bool = True, upto: int = HEIGHTS) -> GatewayPulses:
    genesis_time, records = chain
    view = ChainView("qustream-test", bytes(64), retain=retain)
    for offset, record in enumerate(records[:upto]):
        view.add(b"", record, None, offset, 0)  # type: ignore[arg-type]
    return GatewayPulses(view, genesis_time, INTERVAL,
                         MemoryArchive(records[:upto]) if archive else None)


def times(chain: tuple[int, list[FinalizedRecord]]) -> list[int]:
    return [r.block.header.time_ms for r in chain[1]]


def test_exactly_on_between_and_before_the_first_block(chain: tuple[int, list[Any]]) -> None:
    pulses = source(chain)
    block_times = times(chain)
    assert pulse_at_or_after(pulses, block_times[4]).height == 5  # exactly on a block time
    assert pulse_at_or_after(pulses, block_times[4] - 1).height == 5  # between blocks
    assert pulse_at_or_after(pulses, block_times[4] + 1).height == 6
    assert pulse_after(pulses, block_times[4]).height == 6
    assert pulse_before(pulses, block_times[4]).height == 4
    assert pulse_before(pulses, block_times[4] + 1).height == 5
    assert pulse_at_or_after(pulses, chain[0]).height == 1  # genesis time itself
    assert pulse_after(pulses, chain[0] - 10**6).height == 1  # next of any earlier time
    assert pulse_next(pulses, 3).height == 4 and pulse_previous(pulses, 3).height == 2


def test_a_time_before_genesis_is_a_typed_error(chain: tuple[int, list[Any]]) -> None:
    pulses = source(chain)
    with pytest.raises(BeforeGenesisError) as caught:
        pulse_at_or_after(pulses, chain[0] - 1)
    assert caught.value.genesis_time_ms == chain[0]
    with pytest.raises(BeforeGenesisError):
        pulse_before(pulses, times(chain)[0])  # nothing before the first pulse
    with pytest.raises(InputError):
        pulse_previous(pulses, 1)


def test_after_the_head_says_when_it_is_expected(chain: tuple[int, list[Any]]) -> None:
    pulses = source(chain)
    head_time = times(chain)[-1]
    with pytest.raises(PulseNotYetError) as caught:
        pulse_at_height(pulses, HEIGHTS + 3)
    assert caught.value.head_height == HEIGHTS
    assert caught.value.expected_at_ms == head_time + 3 * INTERVAL
    with pytest.raises(PulseNotYetError) as late:
        pulse_at_or_after(pulses, head_time + 2500)
    assert late.value.expected_at_ms == head_time + 3 * INTERVAL  # the first block after it
    with pytest.raises(PulseNotYetError):
        pulse_next(pulses, HEIGHTS)
    assert pulse_before(pulses, head_time + 10**9).height == HEIGHTS  # previous: the head


def test_an_empty_chain(chain: tuple[int, list[Any]]) -> None:
    pulses = source(chain, upto=0)
    assert pulses.head() is None
    with pytest.raises(PulseNotYetError) as caught:
        pulse_at_or_after(pulses, chain[0])
    assert caught.value.head_height == 0
    assert caught.value.expected_at_ms == chain[0] + INTERVAL
    with pytest.raises(PulseNotYetError):
        pulse_at_height(pulses, 1)
    with pytest.raises(BeforeGenesisError):
        pulse_before(pulses, chain[0] + 5)


def test_heights_older_than_the_window_come_from_the_archive(
        chain: tuple[int, list[Any]]) -> None:
    pulses = source(chain, retain=3)
    assert pulses.view.first_height == HEIGHTS - 2
    assert pulse_at_height(pulses, 2).height == 2
    assert pulse_at_or_after(pulses, times(chain)[1]).height == 2
    assert [r.height for r in pulses.range(1, HEIGHTS)] == list(range(1, HEIGHTS + 1))
    without = source(chain, retain=3, archive=False)
    with pytest.raises(PulseNotRetainedError) as caught:
        pulse_at_height(without, 2)
    assert caught.value.first_height == HEIGHTS - 2


@settings(max_examples=150, deadline=None)
@given(offset=st.integers(-3000, HEIGHTS * INTERVAL + 3000), retain=st.integers(1, HEIGHTS + 2))
def test_lookups_agree_with_a_scan_of_every_block(
        chain: tuple[int, list[Any]], offset: int, retain: int) -> None:
    pulses = source(chain, retain=retain)
    moment = chain[0] + offset
    block_times = times(chain)
    expected = next((i + 1 for i, t in enumerate(block_times) if t >= moment), None)
    if moment < chain[0]:
        with pytest.raises(BeforeGenesisError):
            pulse_at_or_after(pulses, moment)
    elif expected is None:
        with pytest.raises(PulseNotYetError):
            pulse_at_or_after(pulses, moment)
    else:
        assert pulse_at_or_after(pulses, moment).height == expected
    before = [i + 1 for i, t in enumerate(block_times) if t < moment]
    if before and moment >= chain[0]:
        assert pulse_before(pulses, moment).height == before[-1]
    elif moment >= chain[0]:
        with pytest.raises(BeforeGenesisError):
            pulse_before(pulses, moment)


def test_a_time_of_digits_other_than_ascii_is_a_typed_error() -> None:
    # str.isdigit() is true for "²" and "٣", which int() refuses: a 500 the fuzzer found
    for text in ("²", "-²", "٣", "1²"):
        with pytest.raises(InvalidTimeError):
            parse_time_ms(text)
    assert parse_time_ms(" -12 ") == -12
