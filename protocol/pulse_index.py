"""Pulses by time and height: the lookups every reader shares, over a small block-source interface.

A ``BlockSource`` answers four questions about one chain's finalized blocks: the head, the block
of a height, a run of heights, and the first block whose header time is at or after a time. The
gateway implements it with its in-memory window plus Kafka for older heights
(``services.gateway.pulses``); a block store (Cassandra) can implement the same four methods.
Sources hold only blocks their owner already verified.

The lookups here (NIST Randomness Beacon 2.0's "pulse at or after T", "next", "previous", "last")
turn a source's ``None`` into typed errors that say what a client can do:

- ``PulseNotYetError``: the height or time is beyond the head; ``expected_at_ms`` estimates when
  the pulse will exist, from the head's time and the recent block interval;
- ``BeforeGenesisError``: the time is before the chain's genesis (or there is no pulse before
  it, for ``previous``);
- ``PulseNotRetainedError``: the source no longer holds that height (raised by sources).

Times are milliseconds since the Unix epoch, compared with the header's ``time_ms`` (the
proposer's time, strictly increasing along the chain). Nothing here reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

from protocol.errors import InputError, QuStreamError
from protocol.finalized import FinalizedRecord

RECENT_BLOCKS = 16  # how many recent blocks the interval estimate averages over


class PulseNotYetError(QuStreamError):
    """The pulse asked for does not exist yet. ``height`` or ``time_ms`` names what was asked;
    ``expected_at_ms`` is when it should exist (an estimate); ``head_height`` the current head."""

    def __init__(self, what: str, *, head_height: int, expected_at_ms: int,
                 height: int | None = None, time_ms: int | None = None) -> None:
        super().__init__(f"{what} is not finalized yet (head is {head_height}); expected at "
                         f"about {expected_at_ms} ms since the epoch")
        self.head_height = head_height
        self.expected_at_ms = expected_at_ms
        self.height = height
        self.time_ms = time_ms


class BeforeGenesisError(InputError):
    """A time before the chain's genesis, or (for ``previous``) before its first pulse."""

    def __init__(self, time_ms: int, genesis_time_ms: int, detail: str) -> None:
        super().__init__(detail)
        self.time_ms = time_ms
        self.genesis_time_ms = genesis_time_ms


class PulseNotRetainedError(QuStreamError):
    """The source no longer holds ``height`` (retention); ``first_height`` is its oldest."""

    def __init__(self, height: int, first_height: int) -> None:
        super().__init__(f"height {height} is older than this source keeps (from {first_height})")
        self.height = height
        self.first_height = first_height


class InvalidTimeError(InputError):
    """A time that is neither milliseconds since the epoch nor ISO 8601."""


def parse_time_ms(text: str) -> int:
    """Milliseconds since the epoch from ``text``: an integer, or ISO 8601 (``Z`` or an offset;
    a time without one is UTC)."""
    text = text.strip()
    digits = text.lstrip("-")
    if digits.isascii() and digits.isdigit():  # str.isdigit also takes "²", which int refuses
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidTimeError(f"time {text!r} is neither milliseconds since the epoch nor "
                               "ISO 8601") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return math.floor(moment.timestamp() * 1000)


class BlockSource(Protocol):
    """Finalized, verified blocks of one chain (module doc). Implementations: the gateway's
    window + Kafka (``services.gateway.pulses.GatewayPulses``), a block store later."""

    @property
    def genesis_time_ms(self) -> int: ...

    @property
    def default_interval_ms(self) -> int:
        """The chain's nominal block interval (used while too few blocks exist to measure)."""
        ...

    def head(self) -> FinalizedRecord | None:
        """The highest finalized block; None for an empty chain."""
        ...

    def block(self, height: int) -> FinalizedRecord | None:
        """The block of ``height`` (>= 1); None beyond the head. ``PulseNotRetainedError`` when
        it is too old for this source."""
        ...

    def range(self, first: int, last: int) -> Sequence[FinalizedRecord]:
        """Blocks ``first..last`` (inclusive) in height order, stopping at the head."""
        ...

    def at_or_after(self, time_ms: int) -> FinalizedRecord | None:
        """The first block whose header time is >= ``time_ms``; None when no block is."""
        ...


def block_interval_ms(source: BlockSource, head: FinalizedRecord | None) -> int:
    """The mean interval of the last ``RECENT_BLOCKS`` blocks (the default while fewer than two
    exist or they are not retained)."""
    if head is None or head.height < 2:
        return max(1, source.default_interval_ms)
    first = max(1, head.height - RECENT_BLOCKS)
    try:
        oldest = source.block(first)
    except PulseNotRetainedError:
        oldest = None
    if oldest is None or oldest.height == head.height:
        return max(1, source.default_interval_ms)
    elapsed = head.block.header.time_ms - oldest.block.header.time_ms
    return max(1, elapsed // (head.height - oldest.height))


def _head_time(source: BlockSource, head: FinalizedRecord | None) -> tuple[int, int]:
    if head is None:
        return 0, source.genesis_time_ms
    return head.height, head.block.header.time_ms


def expected_height_at_ms(source: BlockSource, height: int) -> int:
    """When ``height`` should be finalized: the head's time plus the missing blocks at the
    recent interval."""
    head = source.head()
    head_height, head_time = _head_time(source, head)
    return head_time + max(0, height - head_height) * block_interval_ms(source, head)


def pulse_at_height(source: BlockSource, height: int) -> FinalizedRecord:
    """The pulse of ``height`` or ``PulseNotYetError`` (with when it is expected)."""
    record = source.block(height)
    if record is not None:
        return record
    head = source.head()
    raise PulseNotYetError(f"height {height}", head_height=_head_time(source, head)[0],
                           expected_at_ms=expected_height_at_ms(source, height), height=height)


def _not_before_genesis(source: BlockSource, time_ms: int) -> None:
    if time_ms < source.genesis_time_ms:
        raise BeforeGenesisError(time_ms, source.genesis_time_ms,
                                 f"time {time_ms} is before the chain's genesis "
                                 f"({source.genesis_time_ms})")


def pulse_at_or_after(source: BlockSource, time_ms: int) -> FinalizedRecord:
    """The first pulse whose time is at or after ``time_ms`` (NIST: the pulse of a time)."""
    _not_before_genesis(source, time_ms)
    record = source.at_or_after(time_ms)
    if record is not None:
        return record
    head = source.head()
    head_height, head_time = _head_time(source, head)
    interval = block_interval_ms(source, head)
    # the next block comes one interval after the head, and blocks keep coming until T
    missing = max(1, -(-(time_ms - head_time) // interval))
    raise PulseNotYetError(f"the pulse at or after time {time_ms}", head_height=head_height,
                           expected_at_ms=max(time_ms, head_time + missing * interval),
                           time_ms=time_ms)


def pulse_after(source: BlockSource, time_ms: int) -> FinalizedRecord:
    """The first pulse strictly after ``time_ms`` (NIST: next)."""
    return pulse_at_or_after(source, max(time_ms + 1, source.genesis_time_ms))


def pulse_before(source: BlockSource, time_ms: int) -> FinalizedRecord:
    """The last pulse strictly before ``time_ms`` (NIST: previous); ``BeforeGenesisError``
    when there is none (the time is at or before the first pulse)."""
    _not_before_genesis(source, time_ms)
    following = source.at_or_after(time_ms)
    if following is None:
        record = source.head()
    else:
        record = source.block(following.height - 1) if following.height > 1 else None
    if record is None:
        raise BeforeGenesisError(time_ms, source.genesis_time_ms,
                                 f"no pulse before time {time_ms}: it is at or before the "
                                 "chain's first pulse")
    return record


def pulse_next(source: BlockSource, height: int) -> FinalizedRecord:
    """The pulse after ``height`` (``PulseNotYetError`` beyond the head)."""
    return pulse_at_height(source, height + 1)


def pulse_previous(source: BlockSource, height: int) -> FinalizedRecord:
    """The pulse before ``height``; ``InputError`` at height 1 (nothing precedes it)."""
    if height <= 1:
        raise InputError("height 1 is the chain's first pulse: nothing precedes it")
    return pulse_at_height(source, height - 1)


def first_at_or_after(records: Sequence[FinalizedRecord], time_ms: int) -> int:
    """Index of the first of ``records`` (in height order, so in time order) whose time is
    >= ``time_ms``; ``len(records)`` when none is: a binary search."""
    low, high = 0, len(records)
    while low < high:
        middle = (low + high) // 2
        if records[middle].block.header.time_ms < time_ms:
            low = middle + 1
        else:
            high = middle
    return low
