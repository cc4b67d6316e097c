"""A process that runs one transactional batch and dies (``os._exit``) at a chosen step.

``python -m tests.support.txn_crash --step {2,4,6} --source T --sink T --group G --txid X``
(Kafka from the ``QUSTREAM_*`` environment): joins group ``G`` on ``T``, polls the records there,
and runs ``streams.transactions.TransactionalBatch`` over them, producing one output per input
to the sink; it exits without a word, as a kill would, right after step 2 (outputs produced,
not flushed), after step 4 (outputs flushed into the log), or when step 6 (commit) is called
(offsets sent). Exit status 3 says it reached the step; anything else is a failure.
"""

from __future__ import annotations

import argparse
import os
import time

from streams.kafka import KafkaProducer, Record, make_consumer, make_producer
from streams.settings import load_settings
from streams.transactions import TransactionalBatch

REACHED = 3


def static_member(group: str) -> dict[str, object]:
    """Static membership: the process that takes over from a dead one gets its partitions at
    once instead of waiting for the dead member's session to time out."""
    return {"group.instance.id": f"{group}.member", "session.timeout.ms": 6000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", type=int, choices=(2, 4, 6), required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--sink", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--txid", required=True)
    parser.add_argument("--count", type=int, required=True, help="inputs to wait for")
    args = parser.parse_args()
    settings = load_settings()
    consumer = make_consumer(settings, args.group, **static_member(args.group))
    consumer.subscribe([args.source])
    producer = make_producer(settings, transactional_id=args.txid)
    consumed: list[Record] = []
    deadline = time.monotonic() + 60
    while len(consumed) < args.count and time.monotonic() < deadline:
        consumed.extend(consumer.poll_batch(0.5))

    def die() -> None:
        os._exit(REACHED)

    def produce(out: KafkaProducer) -> None:
        for record in consumed:
            out.produce(args.sink, record.value, record.key)
        if args.step == 2:
            die()

    def after_flush(out: KafkaProducer) -> None:
        if args.step == 4:
            die()

    if args.step == 6:
        producer.commit_transaction = lambda timeout_s: die()  # type: ignore[method-assign]
    TransactionalBatch(producer, consumer).run(produce, consumed, after_flush=after_flush)
    raise SystemExit(1)  # the step was never reached


if __name__ == "__main__":
    main()
