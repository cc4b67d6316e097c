"""A standalone verified entropy pool fed from Kafka (what ``qustream builder run`` runs).

Inputs: ``entropy.raw`` (every partition, from the start) and ``chain.blocks`` (to drop chunks
once included). Output: dead letters on ``dlq.entropy`` for rejected chunks and checkpoints.
Nothing is committed: the pool is rebuilt by replaying its inputs on start.
"""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import Message, TopicPartition

from services.block_builder.pool import EntropyPool
from services.consensus.follower import BlockFollower, ChainSpec, catch_up, source_registry
from services.consensus.wire import WireError, decode_finalized
from services.qrng_ingest.core.chain import Checkpoint, Chunk
from services.qrng_ingest.core.verifier import EntropyRejectedError
from streams.codec import CodecError, default_codec
from streams.dlq import DeadLetters
from streams.kafka import make_consumer, make_producer
from streams.settings import Settings


class PoolFollower:
    def __init__(self, settings: Settings, spec: ChainSpec, name: str = "builder") -> None:
        self.settings = settings
        self.follower = catch_up(settings, BlockFollower.start(spec))
        self.pool = EntropyPool(source_registry(self.follower.chain.app_state))
        self.pool.advance(self.follower.chain.tip)
        self.producer = make_producer(settings)
        producer: Any = self.producer
        self.dlq = DeadLetters(producer, settings.topic("dlq.entropy"), name)
        self.codec = default_codec()
        self.consumer = make_consumer(settings, f"{name}-{time.time_ns()}")
        entropy = settings.topic("entropy.raw")
        partitions = self.consumer.list_topics(entropy, timeout=30).topics[entropy].partitions
        self.consumer.assign([
            TopicPartition(settings.topic("chain.blocks"), 0, self.follower.last_offset + 1),
            *(TopicPartition(entropy, p, 0) for p in sorted(partitions)),
        ])

    def poll(self, timeout_s: float) -> None:
        for message in self.consumer.consume(500, timeout_s):
            if message.error():
                continue
            if message.topic() == self.settings.topic("chain.blocks"):
                self._block(message)
            else:
                self._entropy(message)
        self.producer.poll(0)

    def _block(self, message: Message) -> None:
        try:
            self.follower.accept(decode_finalized(message.value(), self.codec))
        except (WireError, ValueError):
            return  # the validators and the audit report bad blocks; the pool only follows
        self.pool.advance(self.follower.chain.tip)

    def _entropy(self, message: Message) -> None:
        try:
            schema, record = self.codec.decode(message.value())
            if schema == "EntropyChunkPublished":
                self.pool.accept_chunk(Chunk.from_record(record))
            elif schema == "EntropyCheckpointSigned":
                self.pool.accept_checkpoint(Checkpoint.from_record(record))
            else:
                raise CodecError(f"{schema} does not belong on entropy.raw")
        except EntropyRejectedError as exc:
            self.pool.count_rejection(exc.code)
            self.dlq.send_message(message, str(exc), exc.code)
        except (CodecError, ValueError) as exc:
            self.pool.count_rejection("malformed")
            self.dlq.send_message(message, str(exc), "malformed")

    def status(self) -> dict[str, Any]:
        return {"next_height": self.follower.next_height, "pending": self.pool.pending(),
                "verified_chunks": self.pool.verified_chunks, "rejected": self.pool.rejected}

    def close(self) -> None:
        self.consumer.close()
        self.producer.flush(10)
