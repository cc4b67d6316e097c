"""SP 800-90B health tests: cutoff vectors, a per-sample reference model, detection, alarms."""

from __future__ import annotations

import math
import os
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.qrng_ingest.core.health import (
    BlockShapeError,
    HealthParameterError,
    HealthParameters,
    RctCarry,
    apt_cutoff,
    check_block,
    rct_cutoff,
)

# (H, alpha exponent, binary) -> (RCT cutoff, APT cutoff), from the issue; the grid test below
# checks the rest against a Fraction-based model of the definition.
VECTORS = [
    (1, 30, True, 31, 609),
    (8, 30, False, 5, 16),
]


def _reference_apt_cutoff(window: int, h: int, alpha_exponent: int) -> int:
    """Straight from the definition with Fractions: smallest c, P[B(W, 2^-H) >= c] <= alpha."""
    p = Fraction(1, 2**h)
    alpha = Fraction(1, 2**alpha_exponent)
    pmf = [math.comb(window, k) * p**k * (1 - p) ** (window - k) for k in range(window + 1)]
    tail = Fraction(0)
    for c in range(window, -1, -1):
        tail += pmf[c]
        if tail > alpha:
            return c + 1
    return 0


@pytest.mark.parametrize(("h", "alpha", "binary", "rct", "apt"), VECTORS)
def test_issue_vectors(h: int, alpha: int, binary: bool, rct: int, apt: int) -> None:
    params = HealthParameters.derive(h, alpha, binary=binary)
    assert (params.rct_cutoff, params.apt_cutoff) == (rct, apt)
    assert params.apt_window == (1024 if binary else 512)


@pytest.mark.parametrize("alpha", [20, 25, 30, 35, 40])
@pytest.mark.parametrize("h", [1, 2, 4, 6, 8])
def test_cutoffs_match_the_formulas_over_a_grid(h: int, alpha: int) -> None:
    params = HealthParameters.derive(h, alpha, binary=False)
    assert params.rct_cutoff == 1 + math.ceil(alpha / h)
    assert params.apt_cutoff == _reference_apt_cutoff(512, h, alpha)
    if h == 1:
        binary = HealthParameters.derive(1, alpha, binary=True)
        assert binary.apt_cutoff == _reference_apt_cutoff(1024, 1, alpha)


def test_fractional_min_entropy() -> None:
    assert rct_cutoff("0.5", 30) == 61
    assert rct_cutoff(Fraction(15, 2), 40) == 1 + math.ceil(Fraction(80, 15))
    # Monotone in H: more claimed entropy, lower cutoff; between the integral neighbours.
    assert apt_cutoff(512, 8, 30) <= apt_cutoff(512, "7.5", 30) <= apt_cutoff(512, 7, 30)


@pytest.mark.parametrize(("h", "alpha", "binary"), [
    (0, 30, False), (9, 30, False), (2, 30, True), (8, 19, False), (8, 41, False)])
def test_bad_parameters_are_rejected(h: int, alpha: int, binary: bool) -> None:
    with pytest.raises(HealthParameterError):
        HealthParameters.derive(h, alpha, binary=binary)


def _reference(params: HealthParameters, blocks: list[bytes]) -> list[tuple]:
    """The tests written per sample, as SP 800-90B states them (slow, obviously right)."""
    value, run, out = None, 0, []
    for block in blocks:
        raw = np.frombuffer(block, dtype=np.uint8)
        samples = np.unpackbits(raw) if params.binary else raw
        window = params.apt_window
        windows = samples.size // window
        rct = np.zeros(windows, dtype=bool)
        apt = np.zeros(windows, dtype=bool)
        max_run = max_count = 0
        for i, sample in enumerate(samples.tolist()):
            if sample == value:
                run += 1
            else:
                value, run = sample, 1
            max_run = max(max_run, run)
            if run >= params.rct_cutoff:
                rct[i // window] = True
        for w in range(windows):
            part = samples[w * window:(w + 1) * window]
            count = int((part == part[0]).sum())
            max_count = max(max_count, count)
            apt[w] = count >= params.apt_cutoff
        out.append((rct, apt, max_run, max_count))
    return out


@st.composite
def _blocks(draw: st.DrawFn) -> tuple[HealthParameters, list[bytes]]:
    binary = draw(st.booleans())
    h = draw(st.sampled_from([1, "0.5", "0.25"] if binary else [1, 2, 4, 8]))
    params = HealthParameters.derive(h, draw(st.integers(20, 40)), binary=binary)
    seed = draw(st.integers(0, 2**32))
    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(draw(st.integers(1, 3))):
        size = params.window_bytes * draw(st.integers(1, 3))
        style = draw(st.sampled_from(["random", "runs", "constant", "low-entropy"]))
        if style == "constant":
            data = np.full(size, draw(st.sampled_from([0, 255, 7])), dtype=np.uint8)
        elif style == "low-entropy":
            data = rng.integers(0, draw(st.sampled_from([2, 3, 16])), size, dtype=np.uint8)
        else:
            data = rng.integers(0, 256, size, dtype=np.uint8)
            if style == "runs":
                for _ in range(draw(st.integers(1, 4))):
                    at = draw(st.integers(0, size - 1))
                    data[at:at + draw(st.integers(1, 48))] = draw(st.sampled_from([0, 255, 9]))
        blocks.append(data.tobytes())
    return params, blocks


@settings(max_examples=150, deadline=None)
@given(_blocks())
def test_vectorized_tests_equal_the_per_sample_reference(
    case: tuple[HealthParameters, list[bytes]],
) -> None:
    params, blocks = case
    carry = RctCarry()
    for block, (rct, apt, max_run, max_count) in zip(
            blocks, _reference(params, blocks), strict=True):
        health, carry = check_block(params, carry, block)
        assert health.rct_failed.tolist() == rct.tolist()
        assert health.apt_failed.tolist() == apt.tolist()
        assert (health.rct_max_run, health.apt_max_count) == (max_run, max_count)


def test_rct_run_carries_across_block_boundaries() -> None:
    params = HealthParameters.derive(8, 30, binary=False)  # C = 5
    first = bytearray(os.urandom(512))
    second = bytearray(os.urandom(512))
    first[-3:] = b"\x09\x09\x09"
    first[-4] = 0x0A
    second[:2] = b"\x09\x09"
    second[2] = 0x0A
    health1, carry = check_block(params, RctCarry(), bytes(first))
    assert carry == RctCarry(9, 3) and health1.passed
    health2, _ = check_block(params, carry, bytes(second))
    assert health2.rct_failed.tolist() == [True]


@pytest.mark.parametrize(("h", "alpha", "binary"), [(8, 30, False), (4, 40, False),
                                                     (1, 30, True), ("0.5", 20, True)])
def test_stuck_source_caught_by_rct_within_c_samples(h: object, alpha: int,
                                                     binary: bool) -> None:
    params = HealthParameters.derive(h, alpha, binary=binary)  # type: ignore[arg-type]
    data = np.frombuffer(os.urandom(params.window_bytes * 8), dtype=np.uint8).copy()
    samples_per_byte = 8 if binary else 1
    start_byte = params.window_bytes * 3 + 5
    stuck_bytes = -(-params.rct_cutoff // samples_per_byte) + 1
    data[start_byte:start_byte + stuck_bytes] = 0  # stuck at 0 for C samples (and a bit more)
    health, _ = check_block(params, RctCarry(), data.tobytes())
    assert health.rct_failed[3] or health.rct_failed[4]
    assert health.rct_max_run >= params.rct_cutoff
    # exactly C-1 repeats is not a failure
    clean = np.frombuffer(os.urandom(params.window_bytes * 2), dtype=np.uint8).copy()
    if not binary:
        clean[100:100 + params.rct_cutoff - 1] = 0x42
        clean[99], clean[100 + params.rct_cutoff - 1] = 0x41, 0x43
        health, _ = check_block(params, RctCarry(), clean.tobytes())
        assert not health.rct_failed.any()


def test_biased_source_caught_by_apt() -> None:
    params = HealthParameters.derive(8, 30, binary=False)
    rng = np.random.default_rng(7)
    data = rng.integers(0, 256, 512 * 64, dtype=np.uint8)
    biased = rng.random(data.size) < 0.05  # one value with p ~ 0.05 >> 2^-8
    data[biased] = 0x5A
    data[::512] = 0x5A  # the reference sample of each window is the biased value
    health, _ = check_block(params, RctCarry(), data.tobytes())
    assert health.apt_failed.mean() > 0.9
    bits = HealthParameters.derive(1, 30, binary=True)
    ones = (rng.random(1024 * 64) < 0.7).astype(np.uint8)  # P[1] = 0.7 vs the claimed 0.5
    ones[::1024] = 1  # windows whose reference bit is 0 count zeros, which are not biased
    health, _ = check_block(bits, RctCarry(), np.packbits(ones).tobytes())
    assert health.apt_failed.mean() > 0.9


def test_csprng_false_alarm_rate_is_consistent_with_alpha() -> None:
    """Weakest allowed alpha (2^-20) over 32 MiB: expected failures are a handful at most."""
    params = HealthParameters.derive(8, 20, binary=False)  # C = 4, per-sample ~2^-24
    carry = RctCarry()
    rct = apt = windows = 0
    samples = 0
    for _ in range(32):
        health, carry = check_block(params, carry, os.urandom(1 << 20))
        rct += health.rct_failures
        apt += health.apt_failures
        windows += health.windows
        samples += 1 << 20
    # RCT: P[run >= 4 ending at a sample] ~ 2^-24 -> ~2 expected in 2^25 samples; APT per window
    # <= 2^-20 -> ~0.06 expected. Bounds far in the Poisson tail (p < 1e-6) of those means.
    assert rct <= 14, rct
    assert apt <= 3, apt
    binary = HealthParameters.derive(1, 40, binary=True)
    health, _ = check_block(binary, RctCarry(), os.urandom(1 << 20))
    assert health.passed


def test_block_must_be_whole_windows() -> None:
    params = HealthParameters.derive(8, 30, binary=False)
    with pytest.raises(BlockShapeError):
        check_block(params, RctCarry(), b"\x00" * 100)
    with pytest.raises(BlockShapeError):
        check_block(params, RctCarry(), b"")


def test_health_params_json() -> None:
    assert HealthParameters.derive(1, 30, binary=True).to_json_dict() == {
        "rct_cutoff": 31, "apt_cutoff": 609, "apt_window": 1024}
