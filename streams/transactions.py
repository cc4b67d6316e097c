"""The transactional batch: one consume-process-produce step of a Kafka -> Kafka edge.

A batch's outputs and (when it consumed through a group) the offsets after its inputs commit in
one Kafka transaction; every downstream reader is ``read_committed``, so each input is applied
exactly once however often the process dies. ``TransactionalBatch.run`` does, in this order
(the same numbers mark the steps in the code):

1. ``begin_transaction``.
2. Produce the outputs: the caller's ``produce`` writes them through the producer it is given.
3. ``flush``: every output's delivery report has arrived (so its offset is known); one still
   unreported after the timeout makes the batch abort.
4. Produce the outputs that name offsets of step 2's outputs (the caller's ``after_flush``,
   e.g. replies that point at the event they caused).
5. ``send_offsets_to_transaction``: the offsets after the consumed records, or the consumer's
   position where it stepped over transaction markers beyond them (``past_markers``: so a
   caught-up group's lag reads 0), with the consumer's group metadata (a zombie from an older
   group generation is fenced here). Skipped when the batch consumed nothing through a group
   (an edge whose position is its own output).
6. ``commit_transaction``. Only after this returns does the caller make its working state the
   state (``run`` returned True).

While idle, ``commit_idle_positions`` commits positions that moved past markers alone, in an
offsets-only transaction (steps 1, 5, 6).

On an ``AbortableTransactionError`` at any step the transaction is aborted, the consumer is
rewound to the first consumed offset of each partition, and ``run`` returns False: the caller
drops its working state and the same inputs come again. Transient errors of steps 5 and 6 are
retried until the timeout; one that persists, or a transient error of steps 1-4 (a full produce
queue), ends the batch the same way. ``FencedError``/``FatalKafkaError`` propagate: this
instance must stop (a new one aborts whatever it left open). Any other exception (a bug in
``produce``) aborts the transaction and propagates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from streams.errors import (
    AbortableTransactionError,
    ClientStuckError,
    FatalKafkaError,
    RetriableKafkaError,
)
from streams.kafka import (
    KafkaConsumer,
    KafkaProducer,
    Position,
    Record,
    first_positions,
    next_positions,
)

log = logging.getLogger(__name__)
# A send_offsets_to_transaction that has not returned by then is stuck in the client, not slow:
# a broker failover takes seconds (docs/replicated-cluster.md).
STUCK_AFTER_S = 40.0

T = TypeVar("T")


def within(call: Callable[[], T], *, seconds: float, what: str) -> T:
    """``call()``, given at most ``seconds`` to return; raises ``ClientStuckError`` if it does
    not. The call runs on a helper thread, which is abandoned if it hangs: the caller must then
    stop using the client (a replaced transactional producer is fenced, so whatever the
    abandoned call does later is refused by the brokers)."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed to the caller's thread below
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"kafka-{what}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise ClientStuckError(f"{what} did not return within {seconds:.0f} s")
    if failure:
        raise failure[0]
    return outcome[0]


class TransactionalBatch:
    """Runs batches through steps 1-6 of the module docstring on one transactional producer."""

    def __init__(self, producer: KafkaProducer, consumer: KafkaConsumer | None = None, *,
                 timeout_s: float = 30.0, stuck_after_s: float = STUCK_AFTER_S,
                 new_producer: Callable[[], KafkaProducer] | None = None,
                 on_replaced: Callable[[KafkaProducer], None] | None = None) -> None:
        if producer.transactional_id is None:
            raise ValueError("a transactional batch needs a producer with a transactional.id")
        self.producer = producer
        self.consumer = consumer
        self.timeout_s = timeout_s
        self.stuck_after_s = stuck_after_s
        self._new_producer = new_producer
        self._on_replaced = on_replaced
        self.replaced = 0
        self.aborted = 0
        # (topic, partition) -> offset this batch's transactions committed for the consumer
        self.committed: dict[tuple[str, int], int] = {}

    def run(self, produce: Callable[[KafkaProducer], None], consumed: Sequence[Record] = (),
            *, after_flush: Callable[[KafkaProducer], None] | None = None) -> bool:
        """Steps 1-6; True when committed, False when aborted (the inputs will come again)."""
        producer = self.producer
        try:
            # Step 1: begin.
            producer.begin_transaction()
            # Step 2: produce the outputs.
            produce(producer)
            # Step 3: flush, so every output's offset is known.
            unreported = producer.flush(self.timeout_s)
            if unreported:
                raise AbortableTransactionError(
                    f"{unreported} outputs unacknowledged after {self.timeout_s}s")
            # Step 4: outputs that name the offsets of step 2's outputs.
            if after_flush is not None:
                after_flush(producer)
            # Step 5: the consumed offsets join the transaction.
            if self.consumer is not None and consumed:
                after = self.consumer.past_markers(next_positions(consumed))
                positions = [Position(topic, partition, offset)
                             for (topic, partition), offset in after.items()]
                self.committed.update(after)
                consumer = self.consumer
                # librdkafka can wait here for a dead group coordinator forever: bounded.
                self._retrying(lambda: within(
                    lambda: producer.send_offsets_to_transaction(positions, consumer,
                                                                 self.timeout_s),
                    seconds=self.stuck_after_s, what="send_offsets_to_transaction"))
            # Step 6: commit.
            self._retrying(lambda: producer.commit_transaction(self.timeout_s))
        except (AbortableTransactionError, RetriableKafkaError) as exc:
            # Retriable errors here were retried until the timeout: the transaction cannot
            # complete, so it ends like an abortable one.
            log.warning("aborting the batch of %s: %s", producer.transactional_id, exc)
            self._abort(consumed)
            return False
        except ClientStuckError as exc:
            # Step 5 hung (step 6 had not started, so nothing is committed): a new producer
            # with the same transactional.id aborts the open transaction and fences this one.
            self._replace(exc)
            self._rewind(consumed)
            return False
        except FatalKafkaError:
            raise  # nothing more can be done with this producer, not even an abort
        except BaseException:
            self._abort(consumed, quiet=True)
            raise
        return True

    def commit_idle_positions(self) -> bool:
        """While idle: commit, in an offsets-only transaction, the consumer positions that moved
        past the last committed offsets with no record handed out (the markers at the end of a
        transactional writer's batch), so a caught-up group's lag reads 0. True if committed."""
        consumer = self.consumer
        if consumer is None:
            return False
        advanced = {key: offset for key, offset in consumer.past_markers({}).items()
                    if offset > self.committed.get(key, -1)}
        if not advanced:
            return False
        positions = [Position(topic, partition, offset)
                     for (topic, partition), offset in sorted(advanced.items())]
        producer = self.producer
        try:
            producer.begin_transaction()
            self._retrying(lambda: producer.send_offsets_to_transaction(
                positions, consumer, self.timeout_s))
            self._retrying(lambda: producer.commit_transaction(self.timeout_s))
        except (AbortableTransactionError, RetriableKafkaError) as exc:
            log.warning("aborting an offsets-only transaction of %s: %s",
                        producer.transactional_id, exc)
            self.aborted += 1
            producer.abort_transaction(self.timeout_s)
            return False
        self.committed.update(advanced)
        return True

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Partitions this consumer no longer owns (revoked): their committed offsets go."""
        for key in partitions:
            self.committed.pop(key, None)

    def _replace(self, stuck: ClientStuckError) -> None:
        if self._new_producer is None:
            raise stuck
        log.warning("replacing the transactional producer %s: %s",
                    self.producer.transactional_id, stuck)
        self.aborted += 1
        self.replaced += 1
        self.producer = self._new_producer()
        if self._on_replaced is not None:
            self._on_replaced(self.producer)

    def _retrying(self, call: Callable[[], None]) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                call()
                return
            except RetriableKafkaError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def _abort(self, consumed: Sequence[Record], *, quiet: bool = False) -> None:
        """Abort the open transaction and rewind the consumer to the batch's first offsets."""
        self.aborted += 1
        try:
            self.producer.abort_transaction(self.timeout_s)
        except Exception:
            if not quiet:
                raise
            log.exception("abort after a failed batch failed too")
            return
        self._rewind(consumed)

    def _rewind(self, consumed: Sequence[Record]) -> None:
        """Seek the consumer back to the batch's first offsets: the same inputs come again."""
        if self.consumer is not None:
            for (topic, partition), offset in first_positions(consumed).items():
                self.consumer.seek(Position(topic, partition, offset))


@dataclass
class PendingOutputs:
    """Outputs collected between transactions (quacks like a producer for ``DeadLetters``),
    written by ``write_to`` inside the next one (step 2)."""

    items: list[tuple[str, bytes | None, bytes | None, tuple[tuple[str, bytes], ...]]] = field(
        default_factory=list)

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None, *,
                headers: Sequence[tuple[str, bytes]] | None = None) -> None:
        self.items.append((topic, value, key, tuple(headers or ())))

    def write_to(self, producer: KafkaProducer) -> None:
        for topic, value, key, headers in self.items:
            producer.produce(topic, value, key, headers=headers)

    def clear(self) -> None:
        self.items.clear()

    def __len__(self) -> int:
        return len(self.items)
