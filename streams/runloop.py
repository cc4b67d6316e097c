"""One run loop for every long-running consumer: validator, tally, user command handler,
shard_writer, the gateway's private pool.

Each turn (``RunLoop.turn``):

1. ``tick()`` — the owner's timers (consensus timeouts, deferred inputs, opening chunks); it
   returns how long the loop may wait for input before the next timer is due;
2. poll a batch: the first record within that wait plus whatever else is already fetched
   (``fill=False``: latency-bound loops), or up to ``max_records`` within ``poll_s``
   (``fill=True``: throughput-bound batches);
3. hand the batch to ``handle`` (``by_topic`` dispatches each record to its topic's handler);
4. ``after_batch()`` (e.g. commit what the batch produced);
5. serve the producer's delivery reports.

The loop ends when ``stop()`` is called (or the shared stop event is set: a signal handler or
another thread may do it), after ``duration_s``, or after ``idle_timeout_s`` without a record;
on the way out it flushes the producer. Consumer errors never reach the loop silently: the
consumer (``streams.kafka.KafkaConsumer``) counts, logs or raises them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field

from streams.kafka import KafkaConsumer, KafkaProducer, Record


def by_topic(handlers: Mapping[str, Callable[[Record], object]]
             ) -> Callable[[Sequence[Record]], None]:
    """A batch handler that gives each record to the handler of its topic, in order."""

    def dispatch(records: Sequence[Record]) -> None:
        for record in records:
            handlers[record.topic](record)

    return dispatch


@dataclass
class RunLoop:
    """See the module docstring. ``stop_event`` may be shared with the loop's owner."""

    consumer: KafkaConsumer
    handle: Callable[[Sequence[Record]], object]
    _: KW_ONLY
    producer: KafkaProducer | None = None
    tick: Callable[[], float] | None = None
    after_batch: Callable[[], object] | None = None
    poll_s: float = 0.05
    max_records: int = 500
    fill: bool = False
    stop_event: threading.Event = field(default_factory=threading.Event)
    flush_s: float = 10.0

    def stop(self) -> None:
        self.stop_event.set()

    def turn(self) -> int:
        """Steps 1-5 of the module docstring once; returns the number of records handled."""
        wait = self.poll_s if self.tick is None else max(0.0, min(self.tick(), self.poll_s))
        if self.fill:
            records = self.consumer.consume(self.max_records, wait)
        else:
            records = self.consumer.poll_batch(wait, self.max_records)
        if records:
            self.handle(records)
        if self.after_batch is not None:
            self.after_batch()
        if self.producer is not None:
            self.producer.poll(0)
        return len(records)

    def run(self, *, duration_s: float | None = None,
            idle_timeout_s: float | None = None) -> None:
        started = idle_since = time.monotonic()
        try:
            while not self.stop_event.is_set():
                if duration_s is not None and time.monotonic() - started > duration_s:
                    break
                if self.turn():
                    idle_since = time.monotonic()
                elif (idle_timeout_s is not None
                      and time.monotonic() - idle_since > idle_timeout_s):
                    break
        finally:
            if self.producer is not None:
                self.producer.flush(self.flush_s)


class LoopService:
    """A service whose whole work is one ``RunLoop`` (``self.loop``): the user command handler,
    the shard_writer. ``stop`` may be called from any thread or a signal handler."""

    loop: RunLoop

    def stop(self) -> None:
        self.loop.stop()

    def run(self, *, idle_timeout_s: float | None = None) -> None:
        """Run until ``stop()`` (or, with ``idle_timeout_s``, until idle that long)."""
        self.loop.run(idle_timeout_s=idle_timeout_s)

    def run_once(self) -> int:
        """One turn of the loop; returns the records polled."""
        return self.loop.turn()
