"""Pacing's view of the chain: the newest public seq of one source that a finalized block on
``chain.blocks`` includes (the rule itself is ``core.pacing``; ``ChunkPublisher.pace`` asks).

Start-up (``ChainWatch.open``) must not grow with the chain: the topic is read back from its end
(the last stable offset) in windows of ``WINDOW`` records, newest first, until a block that
includes the source is found, ``look_back`` records were read, or the topic's start; then the
watch follows the topic from that end, so no block is missed between the two. When no block in
the look-back includes the source, ``core.pacing.settled_at_start`` says why it reveals one
chunk and then waits as usual.

Records are not verified here, on purpose. The check only protects this source's own secrecy,
so a forged ``BlockFinalized`` (written by anyone who can write the topic) can at worst claim an
inclusion that did not happen and make the source reveal its next public chunk early, which is
what an unpaced source does with every chunk; it cannot make the source publish anything else,
skip or reuse a sequence number, or touch the private pool. Verifying would need the genesis
(no ingest setting today) and either the full follower, re-executing the ledger from a
snapshot, or a light client's trusted validator set kept fresh within a trusting period
(``protocol.light``): a consensus reader inside every QRNG server, for a claim whose forgery
costs one chunk's head start. Whoever can forge records can also delay or drop them, which
stalls a paced source (heartbeats continue; Kafka is trusted for liveness, DESIGN.md
section 2).

Thin shell: one consumer, assigned (no group membership), polled by the ingest service's main
thread between chunks (``poll``), so nothing here needs a lock.
"""

from __future__ import annotations

import os

from protocol.codec import WireError
from protocol.errors import OperationError
from services.qrng_ingest.core.pacing import newest_included, settled_at_start
from streams.chain_reader import ChainTopic
from streams.chain_wire import decode_finalized
from streams.errors import KafkaOperationError
from streams.kafka import KafkaConsumer, Position, Record, make_consumer
from streams.settings import Settings

WINDOW = 64  # records read at once going back
# About half an hour of one-second blocks. A source the chain left out for longer is new,
# unregistered or unjoinable (``core.pacing.settled_at_start``); reading further back would
# only make start-up slower.
LOOK_BACK = 2048


class PacingError(OperationError):
    """``chain.blocks`` cannot be read, so a paced source cannot learn where its chain stands."""


def _included(record: Record, source_id: str) -> int | None:
    """The last seq of ``source_id`` the block in ``record`` includes; None when it includes
    none, or the record is not a readable ``BlockFinalized`` (a reader skips those: the topic
    is not trusted, see the module doc)."""
    try:
        block = decode_finalized(record.value).block
    except WireError:
        return None
    return newest_included(block.header.entropy_ranges, (source_id,)).get(source_id)


def newest_inclusion(chain: ChainTopic, source_id: str, look_back: int) -> int | None:
    """The newest seq of ``source_id`` in a block within the last ``look_back`` records of
    ``chain`` (read back ``WINDOW`` at a time; blocks are in height order and a source's seqs
    grow with height, so the first window with a hit has the answer)."""
    low, end = chain.bounds()
    stop = max(low, end - look_back)
    top = end
    while top > stop:
        first = max(stop, top - WINDOW)
        seqs = [seq for record in chain.read(first, top - first)
                if (seq := _included(record, source_id)) is not None]
        if seqs:
            return max(seqs)
        top = first
    return None


class ChainWatch:
    """Implements ``publisher.RevealGate`` for one source id (one lane: one process)."""

    def __init__(self, consumer: KafkaConsumer, source_id: str, settled_seq: int) -> None:
        self._consumer = consumer
        self.source_id = source_id
        self._settled = settled_seq

    @classmethod
    def open(cls, settings: Settings, source_id: str, last_published_seq: int, *,
             look_back: int = LOOK_BACK) -> ChainWatch:
        """Learn where the chain stands (module doc) and start following it.
        ``last_published_seq``: the public chain's resumed head (-1: empty)."""
        try:
            with ChainTopic(settings) as chain:
                found = newest_inclusion(chain, source_id, look_back)
                _, end = chain.bounds()
            consumer = make_consumer(settings, f"qrng-pace-{source_id}-{os.getpid()}")
            consumer.assign([Position(chain.topic, 0, end)])
        except KafkaOperationError as exc:
            raise PacingError(f"cannot read {settings.topic('chain.blocks')} to pace "
                              f"{source_id}: {exc}") from exc
        return cls(consumer, source_id, settled_at_start(found, last_published_seq))

    def settled_seq(self) -> int | None:
        return self._settled

    def poll(self, timeout_s: float) -> bool:
        """Read the blocks that arrived, waiting up to ``timeout_s`` for the first (the ingest
        loop's wait while the public chain is paced); True when the settled seq moved."""
        try:
            records = self._consumer.poll_batch(timeout_s)
        except KafkaOperationError as exc:
            raise PacingError(f"cannot follow the chain to pace {self.source_id}: {exc}") from exc
        before = self._settled
        for record in records:
            seq = _included(record, self.source_id)
            if seq is not None and seq > self._settled:
                self._settled = seq
        return self._settled != before

    def close(self) -> None:
        self._consumer.close()
