"""What bench.failover and the replicated fault tests count as lost, duplicated, a gap, a pause."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bench.failover import Finalized, integrity, longest_pause_ms, rate_and_p99


def _block(height: int, at_ms: int, block_hash: bytes | None = None) -> Finalized:
    return Finalized(height, block_hash or bytes([height % 256]) * 4, at_ms - 50, at_ms,
                     at_ms + 10)


def test_integrity_counts_lost_changed_duplicated_and_missing_heights() -> None:
    before = [_block(1, 1000), _block(2, 1100), _block(3, 1200)]
    assert integrity(before, [*before, _block(4, 1300)]) == {
        "lost": 0, "duplicated": 0, "gaps": 0}
    forked = [before[0], _block(2, 1100, b"fork"), before[2]]
    assert integrity(before, forked)["lost"] == 1
    assert integrity(before, before[:2])["lost"] == 1
    assert integrity(before, [*before, before[2]])["duplicated"] == 1
    assert integrity([], [before[0], before[2]])["gaps"] == 1


@given(st.lists(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=50))
def test_longest_pause_is_the_largest_gap(gaps: list[int]) -> None:
    times = [0]
    for gap in gaps:
        times.append(times[-1] + gap)
    blocks = [_block(i + 1, t) for i, t in enumerate(times)]
    assert longest_pause_ms(blocks) == max(gaps)
    assert longest_pause_ms(blocks, log_time=True) == max(gaps)
    assert longest_pause_ms(blocks[:1]) == 0


def test_rate_and_p99() -> None:
    blocks = [_block(i + 1, 1000 * i) for i in range(11)]
    rate, p99 = rate_and_p99(blocks)
    assert rate == 1.0 and p99 == 50.0
