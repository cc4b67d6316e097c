"""The transactional batch's steps, in order, and what each failure does to them.

The batch drives the real ``KafkaProducer``/``KafkaConsumer`` wrappers over recording stand-ins
of the library's clients (``tests/support/fake_kafka.py``): the calls the library would receive
are the assertion. Against the real broker: ``tests/integration/test_kafka_edge.py``.
"""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError
from hypothesis import given
from hypothesis import strategies as st

from streams.errors import FencedError
from streams.kafka import KafkaConsumer, KafkaProducer, Record
from streams.transactions import PendingOutputs, TransactionalBatch
from tests.support.fake_kafka import FakeRawConsumer, FakeRawProducer, kafka_exception

STEPS = ["begin_transaction", "produce", "flush", "produce", "send_offsets_to_transaction",
         "commit_transaction"]


def _records(*where: tuple[int, int]) -> list[Record]:
    return [Record("in", partition, offset, b"k", b"v", 0) for partition, offset in where]


def _batch(raw_producer: FakeRawProducer, raw_consumer: FakeRawConsumer | None = None
           ) -> TransactionalBatch:
    consumer = None if raw_consumer is None else KafkaConsumer(raw_consumer, "group")
    return TransactionalBatch(KafkaProducer(raw_producer, "tx-1"), consumer, timeout_s=1)


def _outputs(producer: KafkaProducer) -> None:
    producer.produce("out", b"event")


def _replies(producer: KafkaProducer) -> None:
    producer.produce("replies", b"reply")


def test_the_steps_run_in_the_documented_order() -> None:
    raw, consumer = FakeRawProducer(), FakeRawConsumer()
    consumed = _records((0, 10), (1, 4), (0, 11), (1, 5))
    assert _batch(raw, consumer).run(_outputs, consumed, after_flush=_replies)
    assert raw.names() == STEPS
    assert raw.calls[1] == ("produce", ("out", b"event"))
    assert raw.calls[3] == ("produce", ("replies", b"reply"))
    # the offsets after the last consumed record of each partition, with the group metadata
    assert raw.calls[4] == ("send_offsets_to_transaction",
                            ([("in", 0, 12), ("in", 1, 6)], "group-metadata"))
    assert consumer.names() == ["consumer_group_metadata"]


def test_outputs_offsets_are_known_to_step_4() -> None:
    raw = FakeRawProducer()
    offsets: list[int] = []
    seen_in_step_4: list[int] = []

    def produce(producer: KafkaProducer) -> None:
        for _ in range(3):
            producer.produce("out", b"e", on_delivery=lambda d: offsets.append(d.offset))

    def after_flush(producer: KafkaProducer) -> None:
        seen_in_step_4.extend(offsets)

    assert _batch(raw).run(produce, after_flush=after_flush)
    assert seen_in_step_4 == [0, 1, 2]


def test_without_a_consumer_no_offsets_join_the_transaction() -> None:
    raw = FakeRawProducer()
    assert _batch(raw).run(_outputs, _records((0, 1)))
    assert raw.names() == ["begin_transaction", "produce", "flush", "commit_transaction"]


@pytest.mark.parametrize("step", ["begin_transaction", "produce", "send_offsets_to_transaction",
                                  "commit_transaction"])
def test_an_abortable_error_aborts_and_rewinds(step: str) -> None:
    raw, consumer = FakeRawProducer(), FakeRawConsumer()
    raw.fail(step, kafka_exception(KafkaError.INVALID_TXN_STATE, txn_requires_abort=True))
    consumed = _records((0, 10), (1, 4), (0, 11))
    batch = _batch(raw, consumer)
    assert not batch.run(_outputs, consumed)
    assert "commit_transaction" not in raw.names()[raw.names().index(step) + 1:]
    assert raw.names()[-1] == "abort_transaction"
    assert [args for name, args in consumer.calls if name == "seek"] == [
        (("in", 0, 10),), (("in", 1, 4),)]
    assert batch.aborted == 1


def test_outputs_still_unreported_after_the_flush_abort_the_batch() -> None:
    raw, consumer = FakeRawProducer(unreported=1), FakeRawConsumer()
    assert not _batch(raw, consumer).run(_outputs, _records((0, 3)))
    assert raw.names() == ["begin_transaction", "produce", "flush", "abort_transaction"]


def test_a_transient_commit_error_is_retried() -> None:
    raw = FakeRawProducer()
    raw.fail("commit_transaction", kafka_exception(KafkaError._TIMED_OUT, retriable=True))
    assert _batch(raw).run(_outputs)
    assert raw.names().count("commit_transaction") == 2
    assert "abort_transaction" not in raw.names()


def test_a_fenced_producer_raises_without_trying_to_abort() -> None:
    raw, consumer = FakeRawProducer(), FakeRawConsumer()
    raw.fail("commit_transaction", kafka_exception(KafkaError.PRODUCER_FENCED, fatal=True))
    with pytest.raises(FencedError):
        _batch(raw, consumer).run(_outputs, _records((0, 1)))
    assert "abort_transaction" not in raw.names()
    assert "seek" not in consumer.names()


def test_a_bug_in_the_processing_aborts_and_propagates() -> None:
    raw, consumer = FakeRawProducer(), FakeRawConsumer()

    def broken(producer: KafkaProducer) -> None:
        producer.produce("out", b"half")
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        _batch(raw, consumer).run(broken, _records((0, 7)))
    assert raw.names() == ["begin_transaction", "produce", "abort_transaction"]
    assert consumer.names() == ["seek"]


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 50)), min_size=1, max_size=40))
def test_committed_and_rewound_offsets_bound_the_consumed_records(
        steps: list[tuple[int, int]]) -> None:
    """Records of each partition arrive in offset order: the offsets sent are one past the
    last record of each partition, and a rewind goes back to the first."""
    offsets: dict[int, int] = {}
    consumed = []
    for partition, gap in steps:
        offsets[partition] = offsets.get(partition, -1) + gap
        consumed.append(Record("in", partition, offsets[partition], None, None, 0))
    raw, consumer = FakeRawProducer(), FakeRawConsumer()
    assert _batch(raw, consumer).run(_outputs, consumed)
    sent = dict(((t, p), o) for t, p, o in
                next(args[0] for name, args in raw.calls if name == "send_offsets_to_transaction"))
    assert sent == {("in", p): max(r.offset for r in consumed if r.partition == p) + 1
                    for p in offsets}
    raw.fail("commit_transaction", kafka_exception(KafkaError.INVALID_TXN_STATE,
                                                   txn_requires_abort=True))
    assert not _batch(raw, consumer).run(_outputs, consumed)
    rewound = {args[0][1]: args[0][2] for name, args in consumer.calls if name == "seek"}
    assert rewound == {p: min(r.offset for r in consumed if r.partition == p) for p in offsets}


def test_a_batch_needs_a_transactional_producer() -> None:
    with pytest.raises(ValueError):
        TransactionalBatch(KafkaProducer(FakeRawProducer()))


def test_pending_outputs_are_written_inside_the_next_batch() -> None:
    pending = PendingOutputs()
    pending.produce("dlq", b"letter", b"k", headers=[("qs.dlq.error", b"x")])
    pending.produce("blocks", b"block")
    raw = FakeRawProducer()
    assert _batch(raw).run(pending.write_to)
    assert [args for name, args in raw.calls if name == "produce"] == [
        ("dlq", b"letter"), ("blocks", b"block")]
    assert len(pending) == 2
    pending.clear()
    assert len(pending) == 0
