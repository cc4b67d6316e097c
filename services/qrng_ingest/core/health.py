"""NIST SP 800-90B continuous health tests (section 4.4), vectorized with numpy.

Two tests run on every raw sample of a source:

- Repetition Count Test (RCT, 4.4.1): fails when one value repeats ``C`` times in a row,
  ``C = 1 + ceil(-log2(alpha) / H)``.
- Adaptive Proportion Test (APT, 4.4.2): in each window of ``W`` samples (1024 for binary, 512
  for 8-bit samples) the first sample is the reference; the test fails when the count of that
  value in the window (the first sample included) reaches the cutoff, the smallest ``c`` with
  ``P[Binomial(W, 2^-H) >= c] <= alpha``.

``H`` is the claimed min-entropy per sample, ``alpha = 2^-alpha_exponent`` the false-positive
probability (per sample for the RCT, per window for the APT). Cutoffs are computed exactly: with
integers for integral ``H`` (then ``2^-H`` is a dyadic rational) and with 80-digit decimals for a
fractional ``H`` (``2^-H`` is then irrational; 80 digits put any rounding far below alpha).

``check_block`` is a pure function of (parameters, carry, block) returning a summary and the new
carry: RCT runs continue across block boundaries through the carry, and APT windows are aligned to
blocks (a block is a whole number of windows). No Python loop runs per sample.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from math import comb
from typing import Any

import numpy as np
import numpy.typing as npt

from protocol.entropy.chain import HealthSummary
from protocol.errors import InputError

MIN_ALPHA_EXPONENT = 20
MAX_ALPHA_EXPONENT = 40
STARTUP_SAMPLES = 1024
BINARY_WINDOW = 1024
NON_BINARY_WINDOW = 512


class HealthParameterError(InputError):
    """A min-entropy, alpha or sample width outside what SP 800-90B and QuStream allow."""


class BlockShapeError(InputError):
    """A block handed to the health tests is not a whole number of APT windows."""


def _as_fraction(value: Fraction | float | int | str) -> Fraction:
    if isinstance(value, Fraction):
        return value
    if isinstance(value, float):
        return Fraction(repr(value))  # 0.1 means one tenth, not the nearest binary float
    return Fraction(value)


def rct_cutoff(min_entropy: Fraction | float | int | str, alpha_exponent: int) -> int:
    """``1 + ceil(alpha_exponent / H)``, exact."""
    h = _as_fraction(min_entropy)
    if h <= 0:
        raise HealthParameterError(f"min-entropy must be positive, got {h}")
    ratio = Fraction(alpha_exponent) / h
    return 1 + -(-ratio.numerator // ratio.denominator)


@lru_cache(maxsize=256)
def _apt_cutoff_exact(window: int, min_entropy: Fraction, alpha_exponent: int) -> int:
    if min_entropy.denominator == 1:
        # p = 1/2^H: P[X >= c] = sum_{k>=c} C(W,k) (2^H - 1)^(W-k) / 2^(H W), all integers.
        h = min_entropy.numerator
        q = (1 << h) - 1
        total = 1 << (h * window)
        tail = 0
        for c in range(window, 0, -1):
            tail += comb(window, c) * q ** (window - c)
            if tail << alpha_exponent > total:
                return c + 1
        return 1
    context = decimal.Context(prec=80)
    h_dec = context.divide(decimal.Decimal(min_entropy.numerator),
                           decimal.Decimal(min_entropy.denominator))
    p = context.power(decimal.Decimal(2), -h_dec)
    q_dec = context.subtract(decimal.Decimal(1), p)
    alpha = context.power(decimal.Decimal(2), -alpha_exponent)
    tail_dec = decimal.Decimal(0)
    for c in range(window, 0, -1):
        term = context.multiply(
            decimal.Decimal(comb(window, c)),
            context.multiply(context.power(p, c), context.power(q_dec, window - c)),
        )
        tail_dec = context.add(tail_dec, term)
        if tail_dec > alpha:
            return c + 1
    return 1


def apt_cutoff(window: int, min_entropy: Fraction | float | int | str, alpha_exponent: int) -> int:
    """Smallest ``c`` with ``P[Binomial(window, 2^-H) >= c] <= 2^-alpha_exponent``.

    Equal to ``1 + CRITBINOM(W, 2^-H, 1 - alpha)``. Binary, H=1, alpha=2^-30: 609; 8-bit, H=8,
    alpha=2^-30: 16.
    """
    return _apt_cutoff_exact(window, _as_fraction(min_entropy), alpha_exponent)


@dataclass(frozen=True, slots=True)
class HealthParameters:
    """The configured claim of a source and the cutoffs derived from it.

    ``binary`` means one sample per bit (bits read most significant first); otherwise a sample
    is one byte. Build with ``HealthParameters.derive``.
    """

    min_entropy: Fraction
    alpha_exponent: int
    binary: bool
    rct_cutoff: int
    apt_window: int
    apt_cutoff: int

    @classmethod
    def derive(
        cls, min_entropy: Fraction | float | int | str, alpha_exponent: int, *, binary: bool
    ) -> HealthParameters:
        h = _as_fraction(min_entropy)
        width = 1 if binary else 8
        if not 0 < h <= width:
            raise HealthParameterError(
                f"min-entropy {h} per {'bit' if binary else 'byte'} sample must be in "
                f"(0, {width}]"
            )
        if not MIN_ALPHA_EXPONENT <= alpha_exponent <= MAX_ALPHA_EXPONENT:
            raise HealthParameterError(
                f"alpha = 2^-{alpha_exponent} is outside 2^-{MIN_ALPHA_EXPONENT} .. "
                f"2^-{MAX_ALPHA_EXPONENT}"
            )
        window = BINARY_WINDOW if binary else NON_BINARY_WINDOW
        return cls(h, alpha_exponent, binary, rct_cutoff(h, alpha_exponent), window,
                   apt_cutoff(window, h, alpha_exponent))

    @property
    def window_bytes(self) -> int:
        """Bytes of raw data per APT window (the unit of pass/fail and of publication)."""
        return self.apt_window // 8 if self.binary else self.apt_window

    @property
    def startup_windows(self) -> int:
        """Windows covering the SP 800-90B startup test's first 1024 samples."""
        return -(-STARTUP_SAMPLES // self.apt_window)

    def to_json_dict(self) -> dict[str, Any]:
        return {"rct_cutoff": self.rct_cutoff, "apt_cutoff": self.apt_cutoff,
                "apt_window": self.apt_window}


@dataclass(frozen=True, slots=True)
class RctCarry:
    """The run in progress at the end of the previous block (``length`` 0: no previous block)."""

    value: int = 0
    length: int = 0


@dataclass(frozen=True, slots=True)
class BlockHealth:
    """Result of the health tests over one block.

    ``failed`` has one entry per APT window, True when the RCT or the APT failed inside it.
    """

    windows: int
    rct_failed: npt.NDArray[np.bool_]
    apt_failed: npt.NDArray[np.bool_]
    rct_max_run: int
    apt_max_count: int

    @property
    def failed(self) -> npt.NDArray[np.bool_]:
        return self.rct_failed | self.apt_failed

    @property
    def rct_failures(self) -> int:
        return int(np.count_nonzero(self.rct_failed))

    @property
    def apt_failures(self) -> int:
        return int(np.count_nonzero(self.apt_failed))

    @property
    def passed(self) -> bool:
        return not (self.rct_failed.any() or self.apt_failed.any())

    def summary(self, params: HealthParameters) -> HealthSummary:
        """What a chunk of this block carries (``protocol.entropy.chain.HealthSummary``): the
        samples and windows tested, the cutoffs they were tested with and what was seen."""
        return HealthSummary(
            rct_max_run=self.rct_max_run, apt_max_count=self.apt_max_count,
            windows=self.windows, samples=self.windows * params.apt_window,
            rct_cutoff=params.rct_cutoff, apt_cutoff=params.apt_cutoff,
            apt_window=params.apt_window, failures=int(np.count_nonzero(self.failed)))


def _byte_tables() -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64],
                            npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """For every byte value: leading/trailing bits equal to 0 and to 1, popcount, and the
    longest run inside the 16 bits of a byte pair (indexed by ``hi << 8 | lo``)."""
    values = np.arange(256, dtype=np.uint8)
    bits = np.unpackbits(values[:, None], axis=1)  # most significant bit first
    lead = np.zeros((2, 256), dtype=np.int64)
    trail = np.zeros((2, 256), dtype=np.int64)
    for bit in (0, 1):
        same = bits == bit
        lead[bit] = np.where(same.all(axis=1), 8, np.argmin(same, axis=1))
        trail[bit] = np.where(same.all(axis=1), 8, np.argmin(same[:, ::-1], axis=1))
    pairs = np.arange(65536, dtype=np.uint32)
    pair_bits = ((pairs[:, None] >> np.arange(15, -1, -1, dtype=np.uint32)) & 1).astype(np.int8)
    run = np.ones(65536, dtype=np.int64)
    best = np.ones(65536, dtype=np.int64)
    for i in range(1, 16):
        run = np.where(pair_bits[:, i] == pair_bits[:, i - 1], run + 1, 1)
        best = np.maximum(best, run)
    return lead, trail, bits.sum(axis=1).astype(np.uint8), best.astype(np.uint8)


_LEAD, _TRAIL, _POPCOUNT, _PAIR_MAX_RUN = _byte_tables()


def _popcount_rows(rows: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
    """Number of one bits in each row (rows are a multiple of 8 bytes long)."""
    bitwise_count = getattr(np, "bitwise_count", None)  # numpy >= 2.0
    if bitwise_count is not None:
        words = rows.view(np.uint64)
        return np.asarray(bitwise_count(words).sum(axis=1, dtype=np.int64))
    return np.take(_POPCOUNT, rows).sum(axis=1, dtype=np.int64)


def _fail_windows(
    starts: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64], cutoff: int,
    window: int, windows: int,
) -> npt.NDArray[np.bool_]:
    """Windows touched by a run from the sample where it reaches the cutoff to its end.

    The test fails at the sample where the count reaches C; every later sample of the same
    run is just as bad, so every window the rest of the run touches fails too.
    """
    bad = lengths >= cutoff
    if not bad.any():
        return np.zeros(windows, dtype=np.bool_)
    fail_from = np.maximum(starts[bad] + cutoff - 1, 0) // window
    fail_to = (starts[bad] + lengths[bad] - 1) // window
    delta = np.zeros(windows + 1, dtype=np.int64)
    np.add.at(delta, fail_from, 1)
    np.add.at(delta, fail_to + 1, -1)
    return np.cumsum(delta[:-1]) > 0


def _rct_binary(
    params: HealthParameters, raw: npt.NDArray[np.uint8], carry: RctCarry, windows: int
) -> tuple[npt.NDArray[np.bool_], int, RctCarry]:
    # Without unpacking bits: the cutoff is at least 21 (H <= 1, alpha <= 2^-20), and a run of
    # 15 or more bits always contains a whole 0x00 or 0xFF byte. So the only runs that can fail
    # are the groups of equal whole bytes, extended by the equal bits of their neighbours;
    # shorter runs fit in a byte pair and are only needed for the max-run summary.
    n = raw.size
    full_index = np.flatnonzero((raw == 0) | (raw == 0xFF))
    if full_index.size:
        full_values = raw[full_index]
        breaks = np.flatnonzero((np.diff(full_index) != 1) | (np.diff(full_values) != 0))
        first = full_index[np.concatenate(([0], breaks + 1))].astype(np.int64)
        last = full_index[np.concatenate((breaks, [full_index.size - 1]))].astype(np.int64)
        bit = (raw[first] & 1).astype(np.int64)
        before = np.where(first > 0, _TRAIL[bit, raw[np.maximum(first - 1, 0)]], 0)
        after = np.where(last < n - 1, _LEAD[bit, raw[np.minimum(last + 1, n - 1)]], 0)
        starts = 8 * first - before
        lengths = 8 * (last - first + 1) + before + after
    else:
        bit = starts = lengths = np.zeros(0, dtype=np.int64)
    first_bit = int(raw[0] >> 7)
    if carry.length and first_bit == carry.value:
        if starts.size and starts[0] == 0:
            starts, lengths = starts.copy(), lengths.copy()
            starts[0] -= carry.length
            lengths[0] += carry.length
        else:
            starts = np.concatenate(([-carry.length], starts))
            lengths = np.concatenate(([carry.length + _LEAD[first_bit, raw[0]]], lengths))
            bit = np.concatenate(([first_bit], bit))
    last_bit = int(raw[-1] & 1)
    if lengths.size and starts[-1] + lengths[-1] == 8 * n:
        new_carry = RctCarry(last_bit, int(lengths[-1]))
    else:
        new_carry = RctCarry(last_bit, int(_TRAIL[last_bit, raw[-1]]))
    pairs = (raw[:-1].astype(np.uint16) << 8) | raw[1:]
    short_max = int(np.take(_PAIR_MAX_RUN, pairs).max()) if pairs.size else int(
        _PAIR_MAX_RUN[int(raw[0]) << 8 | int(raw[0])])
    max_run = max(short_max, int(lengths.max()) if lengths.size else 0)
    failed = _fail_windows(starts, lengths, params.rct_cutoff, params.apt_window, windows)
    return failed, max_run, new_carry


def _rct(
    params: HealthParameters, samples: npt.NDArray[np.uint8], carry: RctCarry, windows: int
) -> tuple[npt.NDArray[np.bool_], int, RctCarry]:
    n = samples.size
    equal = np.flatnonzero(samples[1:] == samples[:-1])  # equal[j]: sample j+1 repeats j
    if equal.size:
        breaks = np.flatnonzero(np.diff(equal) != 1)
        first = equal[np.concatenate(([0], breaks + 1))]
        last = equal[np.concatenate((breaks, [equal.size - 1]))]
        starts = first.astype(np.int64)
        lengths = (last - first + 2).astype(np.int64)
    else:
        starts = np.zeros(0, dtype=np.int64)
        lengths = np.zeros(0, dtype=np.int64)
    if carry.length and int(samples[0]) == carry.value:
        if starts.size and starts[0] == 0:
            lengths = lengths.copy()
            lengths[0] += carry.length
            starts = starts.copy()
            starts[0] = -carry.length
        else:
            starts = np.concatenate(([-carry.length], starts))
            lengths = np.concatenate(([carry.length + 1], lengths))
    max_run = int(lengths.max()) if lengths.size else 1
    ends = starts + lengths - 1
    if ends.size and ends[-1] == n - 1:
        new_carry = RctCarry(int(samples[-1]), int(lengths[-1]))
    else:
        new_carry = RctCarry(int(samples[-1]), 1)
    failed = _fail_windows(starts, lengths, params.rct_cutoff, params.apt_window, windows)
    return failed, max_run, new_carry


def _apt(
    params: HealthParameters, raw: npt.NDArray[np.uint8], windows: int
) -> tuple[npt.NDArray[np.bool_], int]:
    if params.binary:
        byte_rows = raw.reshape(windows, params.window_bytes)
        ones = _popcount_rows(byte_rows)
        reference_is_one = (byte_rows[:, 0] >> 7).astype(np.bool_)
        binary_counts = np.where(reference_is_one, ones, params.apt_window - ones)
        return binary_counts >= params.apt_cutoff, int(binary_counts.max())
    rows = raw.reshape(windows, params.apt_window)
    matches = rows == rows[:, :1]
    # Sum 8 byte lanes at a time: each lane counts at most W/8 = 64 matches, so no lane
    # overflows into its neighbour; then add the 8 lanes of each window.
    lanes = matches.view(np.uint64).sum(axis=1, dtype=np.uint64)
    counts = lanes.view(np.uint8).reshape(windows, 8).sum(axis=1, dtype=np.int64)
    return counts >= params.apt_cutoff, int(counts.max())


def check_block(
    params: HealthParameters, carry: RctCarry, block: bytes | bytearray | memoryview
) -> tuple[BlockHealth, RctCarry]:
    """Run the RCT and APT over one block of raw source bytes.

    The block must be a non-empty whole number of APT windows (``params.window_bytes``). Returns
    the per-window verdicts and the carry to pass with the next block of the same source.
    """
    size = len(block)
    if size == 0 or size % params.window_bytes:
        raise BlockShapeError(
            f"block of {size} bytes is not a positive multiple of the {params.window_bytes}-byte "
            "APT window"
        )
    raw = np.frombuffer(block, dtype=np.uint8)
    windows = size // params.window_bytes
    if params.binary:
        rct_failed, max_run, new_carry = _rct_binary(params, raw, carry, windows)
    else:
        rct_failed, max_run, new_carry = _rct(params, raw, carry, windows)
    apt_failed, max_count = _apt(params, raw, windows)
    return BlockHealth(windows, rct_failed, apt_failed, max_run, max_count), new_carry
