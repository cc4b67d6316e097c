"""The block projector: ``chain.blocks`` into the block store in Cassandra (``qustream blocks
project``), verifying every block first; safety never trusts Kafka.

One projector per chain and keyspace. It reads the one partition of chain.blocks by assignment
(no consumer group: its position lives in Cassandra, with the rows). Guarantee, as for the user
projection: at-least-once delivery + idempotent writes + a stored position = every verified
block stored once, at its height.

Start (and restart):

1. read the stored position: the last height stored ``P`` and the next offset ``O`` (none yet:
   0 and 0);
2. start a follower from the newest verified state snapshot at or below ``P``
   (``services.consensus.snapshots``; the genesis when there is none) and fold chain.blocks
   from the block after it, verifying every record but writing nothing below ``O``: the
   follower needs the chain state to verify block ``P + 1``. At ``O`` the follower must have
   reached height ``P``; if not, the keyspace holds the store of another topic
   (``BlockStoreError``).

Commit order of one batch (``BlockProjector.process``), for records from ``O`` on:

1. the run loop polls at most ``max_batch`` records;
2. each is decoded and verified (``protocol.follow``): the next height is stored; a duplicate
   of a stored height is skipped; a record that does not decode or verify (garbage, a block
   nobody signed, a conflicting record whose certificate does not verify) goes to
   ``dlq.chain`` with the reason; a verified fork (``ForkError``) stops the projector: it is a
   safety alarm for an operator, not input to skip;
3. the dead letters are flushed (before the position passes their offsets);
4. the rows of the verified blocks (``services.block_store.store``) are written, all
   concurrently, and waited for;
5. the position (last height, next offset) is written, after the rows it covers.

A crash anywhere (``kill -9``) leaves the position of the previous batch: the restart verifies
up to it again and writes the batch in flight again, which changes nothing (idempotent). Dead
letters of the batch in flight may be sent twice (each names its offset).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from cassandra.cluster import Session

from protocol.codec import WireError
from protocol.follow import BlockFollower, BlockOutcome, FollowError, ForkError
from services.block_store.core import StoredBlock, chain_key, stored_block
from services.block_store.queries import BlockQueries
from services.block_store.store import (
    BlockStatements,
    BlockStoreError,
    create_tables,
    save_position,
    write_blocks,
)
from services.consensus.snapshots import start_follower
from services.ledger.core.chain_spec import ChainSpec
from services.ledger.core.state import LedgerState
from streams import kafka
from streams.chain_wire import decode_finalized
from streams.dlq import DeadLetters, error_type
from streams.runloop import LoopService, RunLoop
from streams.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ProjectorStats:
    verified: int = 0  # blocks verified, the re-verified ones below the position included
    stored: int = 0  # blocks written by this run
    statements: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)


class BlockProjector(LoopService):
    """Build with ``BlockProjector.create`` and call ``run`` (module doc)."""

    def __init__(self, settings: Settings, spec: ChainSpec, session: Session,
                 consumer: kafka.KafkaConsumer, producer: kafka.KafkaProducer, *,
                 max_batch: int = 500, from_genesis: bool = False) -> None:
        self.topic = settings.topic("chain.blocks")
        self.chain = chain_key(spec.chain_id, spec.initial.tip.previous_block_hash)
        self.session = session
        keyspace = settings.cassandra.keyspace
        self.statements = BlockStatements.prepare(session, keyspace)
        self.consumer = consumer
        self._producer = producer
        self.dead_letters = DeadLetters(producer, settings.topic("dlq.chain"), "block_store")
        # step 1 of the start (module doc)
        self.stored_height, self.resume_offset = (
            BlockQueries(session, keyspace, self.chain).position() or (0, 0))
        end = consumer.watermarks(self.topic)[1]
        if end < self.resume_offset:
            raise BlockStoreError(
                f"the block store of {self.chain} in {keyspace} is at offset "
                f"{self.resume_offset} of {self.topic}, which ends at {end}: the keyspace "
                "holds the store of another topic")
        self._resumed = False
        self.stats = ProjectorStats()
        # step 2: from the newest snapshot at or below the stored height
        self.follower: BlockFollower[LedgerState]
        self.follower, self.start_report = start_follower(
            settings, spec, settings.state_dir / "block-store", catch_up_now=False,
            full=from_genesis, max_height=self.stored_height, on_skip=self.dead_letters.send)
        start = self.follower.last_offset + 1
        log.info("block store of %s: height %d stored up to offset %d; verifying %s from "
                 "offset %d (%s)", self.chain, self.stored_height, self.resume_offset,
                 self.topic, start, self.start_report.describe())
        consumer.assign([kafka.Position(self.topic, 0, start)])
        self.loop = RunLoop(consumer, self.process, producer=producer, max_records=max_batch,
                            poll_s=0.5, fill=True)

    @classmethod
    def create(cls, settings: Settings, spec: ChainSpec, session: Session, *,
               max_batch: int = 500) -> BlockProjector:
        create_tables(session, settings.cassandra.keyspace,
                      replication_factor=settings.cassandra.replication_factor,
                      datacenter=settings.cassandra.local_datacenter)
        # assigned, never committed; the prefix keeps it inside the role's group ACL anyway
        group = f"{settings.topic_prefix}block-store-{time.time_ns()}"
        consumer = kafka.make_consumer(settings, group, **{"enable.partition.eof": False})
        return cls(settings, spec, session, consumer, kafka.make_producer(settings),
                   max_batch=max_batch)

    @property
    def height(self) -> int:
        """The last height verified (stored, or below the stored position)."""
        return self.follower.next_height - 1

    def process(self, records: Sequence[kafka.Record]) -> int:
        """Steps 2-5 of the commit order for one polled batch; returns the blocks stored."""
        blocks: list[StoredBlock] = []
        dead = 0
        for message in records:  # step 2
            if message.offset < self.resume_offset:
                self._replay(message)
                continue
            self._check_resumed()
            try:
                block = self._verified(message)
            except ForkError:
                raise
            except (WireError, FollowError) as exc:
                self.dead_letters.send(message, exc)
                self.stats.dead_lettered[error_type(exc)] += 1
                dead += 1
                continue
            if block is not None:
                blocks.append(block)
        if dead:  # step 3
            self._producer.flush(30)
        if blocks:  # step 4
            self.stats.statements += write_blocks(self.session, self.statements, self.chain,
                                                  blocks)
        next_offset = records[-1].offset + 1 if records else 0
        if next_offset > self.resume_offset:  # step 5
            save_position(self.session, self.statements, self.chain, self.height, next_offset)
            self.resume_offset, self.stored_height = next_offset, self.height
        self.stats.stored += len(blocks)
        return len(blocks)

    def _replay(self, message: kafka.Record) -> None:
        """Step 2 of the start: verify a record below the stored position, write nothing (it
        was stored, or dead-lettered, before)."""
        try:
            outcome = self.follower.accept(decode_finalized(message.value))
        except ForkError:
            raise
        except (WireError, FollowError):
            return
        if outcome is BlockOutcome.APPLIED:
            self.stats.verified += 1

    def _check_resumed(self) -> None:
        """At the stored position, the fold must have reached the stored height."""
        if self._resumed:
            return
        if self.height != self.stored_height:
            raise BlockStoreError(
                f"the block store of {self.chain} says height {self.stored_height} is stored "
                f"up to offset {self.resume_offset} of {self.topic}, but that topic gives "
                f"height {self.height} there: the keyspace holds the store of another topic")
        self._resumed = True
        log.info("verified up to the stored height %d; storing from offset %d on",
                 self.height, self.resume_offset)

    def _verified(self, message: kafka.Record) -> StoredBlock | None:
        """The writes of ``message`` when it is the next block (it is then applied), None for a
        duplicate; ``WireError`` / ``FollowError`` when it does not decode or verify."""
        record = decode_finalized(message.value)
        if self.follower.accept(record) is BlockOutcome.DUPLICATE:
            return None
        self.stats.verified += 1
        previous = self.follower.sets.get(record.height - 1)
        return stored_block(bytes(message.value or b""), record, message.offset,
                            message.timestamp_ms, self.follower.sets[record.height],
                            previous.hash() if previous is not None else None)

    def close(self) -> None:
        self.consumer.close()
        self._producer.flush(10)


def run_projector(settings: Settings, spec: ChainSpec, *, max_batch: int = 500,
                  idle_exit_s: float | None = None) -> BlockProjector:
    """Connect, run one projector until stopped (SIGTERM, SIGINT) or idle for
    ``idle_exit_s``, and close; returns it (for its stats)."""
    import signal

    from services.shard_writer.store import connect

    cluster, session = connect(settings)
    try:
        projector = BlockProjector.create(settings, spec, session, max_batch=max_batch)
        signal.signal(signal.SIGTERM, lambda *_: projector.stop())
        signal.signal(signal.SIGINT, lambda *_: projector.stop())
        try:
            projector.run(idle_timeout_s=idle_exit_s)
        finally:
            projector.close()
    finally:
        cluster.shutdown()
    return projector
