"""The command handler's snapshots on ``users.snapshots``: written in pieces in a Kafka
transaction, read back as each partition's complete snapshots, newest first.

Why a compacted Kafka topic and not Cassandra: the handler is a Kafka -> Kafka edge with no
Cassandra session, so Kafka adds no dependency and no failure domain to it; a snapshot written
in a transaction of the handler's own transactional producer is there whole or not at all for
``read_committed`` readers, whenever the writer dies (a successor with the same
``transactional.id`` aborts what it left open); compaction keeps the newest value of each key,
so the topic holds about one snapshot per partition however long the history; and it can be
read, exported and audited like every other topic.

Records: key ``<partition>/<piece>`` (ASCII), value a ``UserPartitionSnapshotted`` message
carrying one piece of the canonical state (``core.snapshot``), all on the topic's one partition
(so Java's partitioner puts every key where we do). The price: an instance reads every
partition's snapshots and keeps its own, so with several instances each reads the snapshots of
all users, still nothing that grows with the events. A snapshot smaller than before leaves its
predecessor's surplus pieces under their keys; they name another digest and are never taken.

Writing (``SnapshotStore.write``; the handler calls it only with committed state, see its
module doc), in this order:

1. the state's pieces are cut (``core.snapshot.split``);
2. one transaction (``TransactionalBatch.run`` with nothing consumed): begin, produce every
   piece, flush, commit. Aborted (returns False) or killed before the commit: readers never see
   any of it, and the previous snapshot stays the newest.

Reading (``SnapshotStore.load``):

1. the whole topic, ``read_committed``, to its end, keeping the newest value of each key as
   compaction will, so what a reader finds does not depend on when the cleaner last ran;
2. each value decoded strictly (Avro, then the key must name the piece the value says it is);
   one that fails is returned as rejected (the handler dead-letters it) and ignored;
3. per partition, the complete snapshots, newest first (``core.snapshot.candidates``). The
   handler assembles and checks them (``core.snapshot.assemble``) and folds the log after one.

A value is reported by the instance that owns the partition its key names (a key that names no
partition: the owner of partition 0), so several handler instances do not each dead-letter it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field

from services.shard_writer.core.partition import PartitionState
from services.shard_writer.core.snapshot import SnapshotError, SnapshotPiece, candidates, split
from streams.codec import Codec, CodecError, default_codec
from streams.errors import KafkaOperationError
from streams.kafka import KafkaProducer, Record, compacted, make_reader, read_to_end
from streams.settings import Settings
from streams.transactions import TransactionalBatch

log = logging.getLogger(__name__)

SCHEMA = "UserPartitionSnapshotted"
# A piece's canonical bytes: with its envelope well under the topic's max.message.bytes (1 MiB).
PIECE_BYTES = 512 * 1024

Candidate = tuple[Record, tuple[SnapshotPiece, ...]]  # the record of its last piece, its pieces


@dataclass
class Loaded:
    """What ``load`` found for the partitions asked for."""

    candidates: dict[int, list[Candidate]] = field(default_factory=dict)
    rejected: list[tuple[Record, SnapshotError]] = field(default_factory=list)
    records: int = 0  # read from the topic
    available: bool = True  # False: the topic does not exist (``qustream topics ensure``)


def _key(partition: int, chunk: int) -> bytes:
    return f"{partition}/{chunk}".encode()


def _owner(key: bytes | None) -> int:
    """The partition a key names (0 when it names none: see the module doc)."""
    try:
        partition, _ = (key or b"").decode("ascii").split("/")
        return int(partition)
    except ValueError:
        return 0


class SnapshotStore:
    """Snapshots of the partitions of ``users.events`` on ``users.snapshots``."""

    def __init__(self, settings: Settings, *, piece_bytes: int = PIECE_BYTES,
                 codec: Codec | None = None) -> None:
        self.settings = settings
        self.topic = settings.topic("users.snapshots")
        self.events_topic = settings.topic("users.events")
        self.piece_bytes = piece_bytes
        self.codec = codec or default_codec()

    def write(self, batch: TransactionalBatch, partition: int, state: PartitionState) -> bool:
        """Steps 1-2 of the module doc; True when the snapshot committed."""
        return batch.run(lambda producer: self.produce(producer, partition, state))

    def produce(self, producer: KafkaProducer, partition: int, state: PartitionState) -> None:
        """Produce the pieces of a snapshot of ``state`` (inside the caller's transaction)."""
        for piece in split(self.events_topic, partition, state, self.piece_bytes):
            producer.produce(self.topic, self.encode(piece), _key(partition, piece.chunk))

    def encode(self, piece: SnapshotPiece) -> bytes:
        return self.codec.encode(SCHEMA, {
            "events_topic": piece.events_topic, "partition": piece.partition,
            "events_offset": piece.events_offset, "replies_offset": piece.replies_offset,
            "state_sha256": piece.digest, "chunk": piece.chunk, "chunks": piece.chunks,
            "state": piece.body})

    def decode(self, record: Record) -> SnapshotPiece:
        """The piece a record carries; ``SnapshotError`` when it is not one (wrong schema,
        malformed, or a key that does not name it)."""
        try:
            r = self.codec.decode(record.value, expected=SCHEMA).record
        except CodecError as exc:
            raise SnapshotError(f"{self.topic}@{record.offset}: {exc}") from exc
        piece = SnapshotPiece(r["events_topic"], r["partition"], r["events_offset"],
                              r["replies_offset"], r["state_sha256"], r["chunk"], r["chunks"],
                              r["state"])
        if record.key != _key(piece.partition, piece.chunk):
            raise SnapshotError(f"{self.topic}@{record.offset}: key {record.key!r} does not "
                                f"name piece {piece.chunk} of partition {piece.partition}")
        if not 0 <= piece.chunk < piece.chunks or min(piece.events_offset,
                                                       piece.replies_offset) < 0:
            raise SnapshotError(f"{self.topic}@{record.offset}: piece {piece.chunk} of "
                                f"{piece.chunks} at offsets {piece.events_offset}/"
                                f"{piece.replies_offset}")
        return piece

    def load(self, partitions: Collection[int], group_id: str) -> Loaded:
        """Steps 1-3 of the module doc for ``partitions``; raises ``KafkaOperationError``."""
        loaded = Loaded()
        records = list(read_to_end(self.settings, self.topic, group_id))
        loaded.records = len(records)
        if not loaded.records:
            loaded.available = self._exists(group_id)
        pieces: dict[SnapshotPiece, Record] = {}
        for record in compacted(records):
            if _owner(record.key) not in partitions:
                continue
            try:
                pieces[self.decode(record)] = record
            except SnapshotError as exc:
                loaded.rejected.append((record, exc))
        for partition, found in candidates(pieces).items():
            loaded.candidates[partition] = [(pieces[ps[-1]], ps) for ps in found]
        return loaded

    def _exists(self, group_id: str) -> bool:
        reader = make_reader(self.settings, group_id)
        try:
            return bool(reader.partitions(self.topic))
        except KafkaOperationError:
            return False
        finally:
            reader.close()
