"""A user command handler that dies (``os._exit``, as a kill would) in the middle of writing a
snapshot: its pieces produced and flushed into the log, the transaction not committed.

``python -m tests.support.snapshot_crash --die-at N [--snapshot-every K] [--piece-bytes B]``
(Kafka from the ``QUSTREAM_*`` environment): runs ``CommandHandler`` instance "0" whose
``N``-th snapshot is the one it dies writing; the earlier ones commit. Exit status 3 says it
got there; anything else is a failure.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from services.shard_writer.core.partition import PartitionState
from services.shard_writer.handler import CommandHandler
from services.shard_writer.snapshots import SnapshotStore
from streams.kafka import KafkaProducer
from streams.settings import Settings, load_settings

REACHED = 3


class DyingStore(SnapshotStore):
    """A store whose ``die_at``-th snapshot never commits: the process exits mid-transaction."""

    def __init__(self, settings: Settings, die_at: int, piece_bytes: int) -> None:
        super().__init__(settings, piece_bytes=piece_bytes)
        self.die_at = die_at
        self.written = 0

    def produce(self, producer: KafkaProducer, partition: int, state: PartitionState) -> None:
        super().produce(producer, partition, state)
        self.written += 1
        if self.written == self.die_at:
            assert producer.flush(30) == 0  # the pieces are in the log, uncommitted
            os._exit(REACHED)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--die-at", type=int, required=True)
    parser.add_argument("--snapshot-every", type=int, default=100)
    parser.add_argument("--piece-bytes", type=int, default=4096)
    args = parser.parse_args()
    settings = load_settings()
    consumer: dict[str, Any] = {"session.timeout.ms": 6000}
    handler = CommandHandler.create(
        settings, instance_id="0", snapshot_every=args.snapshot_every,
        snapshots=DyingStore(settings, args.die_at, args.piece_bytes), **consumer)
    handler.run(idle_timeout_s=120)
    raise SystemExit(1)  # never got to the snapshot it was to die in


if __name__ == "__main__":
    main()
