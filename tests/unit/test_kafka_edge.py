"""The Kafka edge kit's clients: error translation, records, consumer errors, dead letters.

The wrappers run over recording stand-ins of the library's clients that hand out the library's
own ``Message`` and ``KafkaError`` objects (``tests/support/fake_kafka.py``); the real broker is
in ``tests/integration/test_kafka_edge.py``.
"""

from __future__ import annotations

import enum
import itertools
import logging
from typing import ClassVar

import pytest
from confluent_kafka import KafkaError, KafkaException
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import OperationError
from streams import errors, kafka
from streams.codec import CodecError, default_codec
from streams.dlq import DeadLetters, error_type
from streams.kafka import Delivery, KafkaConsumer, KafkaProducer, Record
from tests.support.fake_kafka import (
    FakeRawConsumer,
    FakeRawProducer,
    error_event,
    kafka_exception,
    message,
)

# ------------------------------------------------------------------------- translation

CASES = [
    # (code, flags, our type)
    (KafkaError.PRODUCER_FENCED, {}, errors.FencedError),
    (KafkaError._FENCED, {"fatal": True}, errors.FencedError),
    (KafkaError.FENCED_INSTANCE_ID, {}, errors.FencedError),
    (KafkaError.INVALID_PRODUCER_EPOCH, {"txn_requires_abort": True}, errors.FencedError),
    (KafkaError._FATAL, {"fatal": True}, errors.FatalKafkaError),
    (KafkaError.INVALID_TXN_STATE, {"txn_requires_abort": True}, errors.AbortableTransactionError),
    (KafkaError._TIMED_OUT, {}, errors.KafkaTimeoutError),
    (KafkaError.REQUEST_TIMED_OUT, {"retriable": True}, errors.KafkaTimeoutError),
    (KafkaError.NOT_LEADER_FOR_PARTITION, {}, errors.RetriableKafkaError),
    (KafkaError._TRANSPORT, {}, errors.RetriableKafkaError),
    (KafkaError.COORDINATOR_LOAD_IN_PROGRESS, {}, errors.RetriableKafkaError),
    (KafkaError.INVALID_CONFIG, {"retriable": True}, errors.RetriableKafkaError),
    (KafkaError.INVALID_CONFIG, {}, errors.KafkaOperationError),
    (KafkaError.TOPIC_AUTHORIZATION_FAILED, {}, errors.KafkaOperationError),
]


@pytest.mark.parametrize(("code", "flags", "expected"), CASES)
def test_translation_follows_flags_and_codes(code: int, flags: dict[str, bool],
                                             expected: type[errors.KafkaOperationError]) -> None:
    error = kafka.translate(KafkaError(code, "whatever", **flags), "doing it")
    assert type(error) is expected
    assert isinstance(error, OperationError)
    assert error.kafka_error == KafkaError(code).name()
    assert str(error).startswith("doing it: ")
    wrapped = kafka.translate(KafkaException(KafkaError(code, "whatever", **flags)), "doing it")
    assert type(wrapped) is expected


MISLEADING = ["Not leader for partition", "Local: Queue full", "buffer is full", "fenced",
              "Broker: Topic already exists", "timed out", "retriable", "fatal"]


@given(reason=st.one_of(st.sampled_from(MISLEADING),
                        st.text(st.characters(blacklist_characters="\x00",
                                              blacklist_categories=("Cs",)), max_size=80)),
       case=st.sampled_from(CASES))
def test_translation_never_reads_the_message_text(reason: str, case: tuple) -> None:
    code, flags, expected = case
    assert type(kafka.translate(KafkaError(code, reason, **flags), "x")) is expected


def test_a_kafka_exception_without_an_error_object_is_still_ours() -> None:
    translated = kafka.translate(KafkaException("no error object"), "x")
    assert type(translated) is errors.KafkaOperationError


# ------------------------------------------------------------------------- consumer


def test_records_carry_every_field() -> None:
    consumer = KafkaConsumer(FakeRawConsumer([message("t", 3, 41, b"value", b"key", 1234)]),
                             "test")
    assert consumer.poll(0.1) == Record("t", 3, 41, b"key", b"value", 1234, (("h", b"1"),))
    assert consumer.poll(0.1) is None


def test_end_of_partition_is_remembered_not_raised_and_cleared_by_a_new_record() -> None:
    # None ends a scripted consume batch
    raw = FakeRawConsumer([message("t", 0, 5), error_event(KafkaError._PARTITION_EOF),
                           None, None, message("t", 0, 6)])
    consumer = KafkaConsumer(raw, "test", policy=kafka.ErrorPolicy.RAISE)
    assert consumer.consume(10, 0.1) == [Record("t", 0, 5, b"k", b"v", 1000, (("h", b"1"),))]
    assert consumer.at_end("t", 0) and not consumer.at_end("t", 1)
    assert consumer.errors == {}
    assert consumer.consume(10, 0.1) == []
    assert consumer.poll(0.1) is not None
    assert not consumer.at_end("t", 0)


def test_transient_errors_are_counted_and_logged_at_a_bounded_rate(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    script = [error_event(KafkaError._TRANSPORT) for _ in range(50)]
    script += [error_event(KafkaError.UNKNOWN_TOPIC_OR_PART) for _ in range(5)]
    consumer = KafkaConsumer(FakeRawConsumer(script), "test", log_every_s=30.0,
                             clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="streams.kafka"):
        for step in range(55):
            now[0] = step * 0.5  # 27.5 s in all: below one interval
            assert consumer.consume(1, 0) == []
    assert consumer.errors == {"_TRANSPORT": 50, "UNKNOWN_TOPIC_OR_PART": 5}
    assert isinstance(consumer.last_error, errors.RetriableKafkaError)
    assert len(caplog.records) == 2  # one line per kind within the interval
    consumer = KafkaConsumer(FakeRawConsumer([error_event(KafkaError._TRANSPORT)] * 3),
                             "test", log_every_s=30.0, clock=lambda: now[0])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="streams.kafka"):
        for at in (0.0, 29.0, 30.0):
            now[0] = at
            consumer.consume(1, 0)
    assert len(caplog.records) == 2  # the first, and again once the interval passed


@given(times=st.lists(st.floats(min_value=0, max_value=1000), min_size=1, max_size=200),
       interval=st.floats(min_value=1, max_value=100))
def test_log_lines_are_bounded_by_the_interval(times: list[float], interval: float) -> None:
    now = [0.0]
    lines: list[float] = []

    class Counting(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(now[0])

    handler = Counting()
    logger = logging.getLogger("streams.kafka")
    logger.addHandler(handler)
    try:
        ordered = sorted(times)
        consumer = KafkaConsumer(
            FakeRawConsumer([error_event(KafkaError._TRANSPORT)] * len(ordered)), "test",
            log_every_s=interval, clock=lambda: now[0])
        for at in ordered:
            now[0] = at
            consumer.consume(1, 0)
    finally:
        logger.removeHandler(handler)
    assert consumer.errors["_TRANSPORT"] == len(ordered)
    assert all(b - a >= interval for a, b in itertools.pairwise(lines))
    assert len(lines) <= (ordered[-1] - ordered[0]) / interval + 1


def test_client_wide_errors_are_counted_and_fatal_ones_raise() -> None:
    tally = kafka.ErrorTally("client")
    tally.on_client_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "down"))
    tally.on_client_error(KafkaError(KafkaError._TRANSPORT, "reset"))
    assert tally.counts == {"_ALL_BROKERS_DOWN": 1, "_TRANSPORT": 1}
    assert isinstance(tally.last, errors.RetriableKafkaError)
    with pytest.raises(errors.FencedError):
        tally.on_client_error(KafkaError(KafkaError._FENCED, "fenced", fatal=True))


def test_fatal_consumer_errors_raise() -> None:
    consumer = KafkaConsumer(FakeRawConsumer([error_event(KafkaError._FATAL, fatal=True)]),
                             "test")
    with pytest.raises(errors.FatalKafkaError):
        consumer.poll(0.1)


def test_a_bounded_reader_raises_on_any_error() -> None:
    consumer = KafkaConsumer(FakeRawConsumer([error_event(KafkaError._TRANSPORT)]), "test",
                             policy=kafka.ErrorPolicy.RAISE)
    with pytest.raises(errors.RetriableKafkaError):
        consumer.consume(10, 0.1)


def test_poll_batch_takes_one_record_then_what_is_already_fetched() -> None:
    raw = FakeRawConsumer([message("t", 0, 1), message("t", 0, 2), message("t", 0, 3)])
    consumer = KafkaConsumer(raw, "test")
    assert [r.offset for r in consumer.poll_batch(0.25, max_records=2)] == [1, 2]
    assert [name for name, _ in raw.calls] == ["poll", "consume"]
    assert raw.poll_timeouts[0] == pytest.approx(0.25, abs=0.01)
    assert raw.calls[1] == ("consume", (1, 0))


# ------------------------------------------------------------------------- producer


def test_a_full_producer_queue_is_our_type() -> None:
    raw = FakeRawProducer()
    raw.fail("produce", BufferError("Local: Queue full"))
    producer = KafkaProducer(raw)
    with pytest.raises(errors.ProducerQueueFullError):
        producer.produce("t", b"v")
    producer.produce("t", b"v")  # room again: produced


def test_producer_errors_are_translated() -> None:
    raw = FakeRawProducer()
    raw.fail("produce", kafka_exception(KafkaError.MSG_SIZE_TOO_LARGE))
    raw.fail("commit_transaction", kafka_exception(KafkaError.PRODUCER_FENCED, fatal=True))
    producer = KafkaProducer(raw, "tx")
    with pytest.raises(errors.KafkaOperationError) as produced:
        producer.produce("t", b"v")
    assert produced.value.kafka_error == "MSG_SIZE_TOO_LARGE"
    with pytest.raises(errors.FencedError):
        producer.commit_transaction(1)


def test_delivery_reports_are_our_values() -> None:
    raw = FakeRawProducer()
    producer = KafkaProducer(raw)
    reports: list[Delivery] = []
    producer.produce("t", b"a", partition=2, on_delivery=reports.append)
    producer.produce("t", b"b", partition=2, on_delivery=reports.append)
    assert producer.flush(1) == 0
    assert reports == [Delivery("t", 2, 0, None), Delivery("t", 2, 1, None)]


# ------------------------------------------------------------------------- dead letters


class _Reason(enum.Enum):
    TOO_OLD = "too_old"


class _Coded(ValueError):
    code: ClassVar[str] = "coded"


class _Uncoded(ValueError):
    pass


def test_dead_letter_error_types_come_from_the_type() -> None:
    assert error_type(_Reason.TOO_OLD) == "too_old"
    assert error_type(_Coded("x")) == "coded"
    assert error_type(_Uncoded("x")) == "_Uncoded"
    assert error_type(CodecError("x")) == "CodecError"
    odd = _Uncoded("x")
    odd.code = "chosen at the call site"  # type: ignore[attr-defined]
    assert error_type(odd) == "_Uncoded"  # instance attributes do not count
    assert error_type(errors.DeliveryError("x")) == errors.DeliveryError.code


def test_dead_letters_keep_the_record_reason_and_typed_error() -> None:
    raw = FakeRawProducer()
    letters = DeadLetters(KafkaProducer(raw), "dlq", "test")
    record = Record("in", 2, 7, b"key", b"\x00bad", 5)
    letters.send(record, _Coded("the field is wrong"))
    letters.send(record, _Reason.TOO_OLD, "height 3 at 9")
    assert letters.counts == {"coded": 1, "too_old": 1}
    codec = default_codec()
    first, second = [codec.decode(args[1], expected="MessageDeadLettered").record
                     for name, args in raw.calls if name == "produce"]
    assert (first["source_topic"], first["partition"], first["offset"]) == ("in", 2, 7)
    assert first["value"] == b"\x00bad" and first["key"] == b"key"
    assert (first["reason"], first["error_type"]) == ("the field is wrong", "coded")
    assert (second["reason"], second["error_type"]) == ("height 3 at 9", "too_old")
