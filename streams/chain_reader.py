"""Reading ``chain.blocks`` from Kafka into a ``protocol.follow.BlockFollower``.

``catch_up`` folds the topic from the follower's last offset to the current end (what validators
and the tally do on start); ``read_blocks`` yields every verified block (the CLI, the demo, the
gateway and tests); ``ChainTopic`` reads spans of offsets (the light reads). Nothing on the
topic is trusted: the follower verifies every record (see ``protocol.follow``). Undecodable or
unverifiable records are handed to the caller to dead-letter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from protocol.chain import ChainState
from protocol.codec import WireError
from protocol.finalized import FinalizedRecord
from protocol.follow import (
    BlockFollower,
    BlockOutcome,
    FollowError,
    ForkError,
)
from streams.chain_wire import decode_finalized
from streams.kafka import Position, Record, make_consumer, make_reader
from streams.settings import Settings


def catch_up(
    settings: Settings, follower: BlockFollower, *, timeout_s: float = 60.0,
    on_skip: Callable[[Record, Exception], object] | None = None,
) -> BlockFollower:
    """Read ``chain.blocks`` from after ``follower.last_offset`` to its current end.

    Undecodable or unverifiable records, and conflicting records whose certificate does not
    verify, are passed to ``on_skip(record, error)`` (the caller dead-letters them) and
    skipped; only a verified fork raises (see ``protocol.follow``)."""
    topic = settings.topic("chain.blocks")
    consumer = make_consumer(settings, f"catch-up-{time.time_ns()}", **{"fetch.wait.max.ms": 5})
    try:
        end = consumer.watermarks(topic)[1]
        position = follower.last_offset + 1
        if position >= end:
            return follower
        consumer.assign([Position(topic, 0, position)])
        deadline = time.monotonic() + timeout_s
        while position < end and time.monotonic() < deadline:
            record = consumer.poll(0.2)
            if record is None:
                # transaction markers occupy offsets; the consumer's position passes them
                if consumer.position(topic, 0) >= end:
                    break
                continue
            position = record.offset + 1
            follower.last_offset = record.offset
            try:
                follower.accept(decode_finalized(record.value))
            except ForkError:
                raise
            except (WireError, FollowError) as exc:
                if on_skip is not None:
                    on_skip(record, exc)
        return follower
    finally:
        consumer.close()


@dataclass(frozen=True, slots=True)
class VerifiedBlock:
    """One block of ``read_blocks``: the record and the chain state right after it."""

    record: FinalizedRecord
    offset: int
    chain: ChainState[Any]
    written_at_ms: int  # Kafka timestamp of the BlockFinalized record


def read_blocks(
    settings: Settings,
    follower: BlockFollower[Any],
    from_height: int = 1,
    *,
    follow: bool = False,
    idle_timeout_s: float = 5.0,
    on_skip: Callable[[Record, Exception], object] | None = None,
) -> Iterator[VerifiedBlock]:
    """Verified blocks of ``chain.blocks`` from ``from_height``, folded into ``follower`` from
    the offset after its ``last_offset`` (a fresh one from ``ChainSpec.follower()`` reads from
    the start: every earlier block is read and verified too, since verification needs the
    state; one started from a snapshot, ``services.consensus.snapshots``, from the block after
    it). Stops at the end of the topic unless ``follow``.
    Duplicates are skipped, and so is every record that does not decode or verify (garbage, a
    block nobody signed, a conflicting record whose certificate does not verify;
    ``on_skip(record, error)`` hears of each): only a verified fork (``ForkError``) raises.
    """
    topic = settings.topic("chain.blocks")
    consumer = make_consumer(settings, f"reader-{time.time_ns()}", **{"fetch.wait.max.ms": 20})
    try:
        consumer.assign([Position(topic, 0, follower.last_offset + 1)])
        end = consumer.watermarks(topic)[1]
        idle_since = time.monotonic()
        while True:
            message = consumer.poll(0.2)
            if message is None:
                current = consumer.position(topic, 0)
                caught_up = current >= end or end == 0
                if not follow and (caught_up or time.monotonic() - idle_since > idle_timeout_s):
                    end = consumer.watermarks(topic)[1]
                    if current >= end or time.monotonic() - idle_since > idle_timeout_s:
                        return
                continue
            idle_since = time.monotonic()
            follower.last_offset = message.offset
            try:
                record = decode_finalized(message.value)
                outcome = follower.accept(record)
            except ForkError:
                raise
            except (WireError, FollowError) as exc:
                # Anyone who can write the topic can append garbage or a block nobody signed;
                # the real block of that height still follows it. Skipped, never a halt.
                if on_skip is not None:
                    on_skip(message, exc)
                continue
            if outcome is BlockOutcome.DUPLICATE:
                continue
            if record.height >= from_height:
                yield VerifiedBlock(record, message.offset, follower.chain,
                                    message.timestamp_ms)
    finally:
        consumer.close()


class ChainTopic:
    """Random access to ``chain.blocks`` (or another one-partition chain topic, ``name``) by
    offset, for reads that must not grow with the chain (``services.consensus.light_reads``,
    ``services.consensus.snapshots``): its bounds, taken once (a growing topic is read up to
    that point), and the records of an offset span. Nothing read here is trusted; the caller
    verifies every record. Any consumer error raises."""

    def __init__(self, settings: Settings, *, timeout_s: float = 30.0,
                 name: str = "chain.blocks") -> None:
        self.topic = settings.topic(name)
        self.timeout_s = timeout_s
        self._consumer = make_reader(settings, f"chain-reads-{time.time_ns()}",
                                     **{"fetch.wait.max.ms": 10})
        self._bounds: tuple[int, int] | None = None

    def bounds(self) -> tuple[int, int]:
        """(first offset still held, end): the end is the last stable offset, where records of
        a transaction still open begin (they cannot be read yet)."""
        if self._bounds is None:
            low, _ = self._consumer.watermarks(self.topic, 0, self.timeout_s)
            self._bounds = low, self._consumer.end_offsets(self.topic, self.timeout_s).get(0, low)
        return self._bounds

    def read(self, first: int, count: int) -> list[Record]:
        """The records at offsets ``[first, first + count)`` within the bounds."""
        low, high = self.bounds()
        start, stop = max(first, low), min(first + count, high)
        if start >= stop:
            return []
        return self._consumer.read_span(self.topic, 0, start, stop, self.timeout_s)

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> ChainTopic:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
