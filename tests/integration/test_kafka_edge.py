"""The Kafka edge kit against the real broker: the transactional batch's guarantees and the
error translation.

- A process killed between the batch's steps (``tests/support/txn_crash.py``) leaves nothing
  that a ``read_committed`` reader sees and no committed input offset, even where its outputs
  are already in the log; a rerun of the same inputs commits outputs and offsets together.
- A zombie (an older producer with the same ``transactional.id``) is fenced with our type.
- An unreachable broker gives our error types within bounded time: the factories give up
  within the connect timeout naming the address, and a client that loses its broker later
  counts its errors rather than dropping them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from streams import kafka
from streams.admin import ensure_topics
from streams.errors import (
    FencedError,
    KafkaOperationError,
    KafkaUnreachableError,
    RetriableKafkaError,
)
from streams.kafka import Delivery, KafkaProducer, Position, Record
from streams.settings import Settings
from streams.topics import TopicSpec
from streams.transactions import TransactionalBatch
from tests.support.txn_crash import REACHED, static_member

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
INPUTS = 6


def _topics(settings: Settings) -> tuple[str, str]:
    specs = [TopicSpec(name, 2, "test", "test", ()) for name in ("edge.source", "edge.sink")]
    ensure_topics(settings, specs)
    return settings.topic("edge.source"), settings.topic("edge.sink")


def _produce_inputs(settings: Settings, topic: str) -> list[bytes]:
    producer = kafka.make_producer(settings)
    values = [f"input-{i}".encode() for i in range(INPUTS)]
    for i, value in enumerate(values):
        producer.produce(topic, value, f"key-{i}".encode(), partition=i % 2)
    assert producer.flush(30) == 0
    return values


def _values(settings: Settings, topic: str, isolation: str = "read_committed") -> list[bytes]:
    records = kafka.read_to_end(settings, topic, f"check-{time.time_ns()}",
                          **{"isolation.level": isolation})
    return sorted(record.value or b"" for record in records)


def _committed(settings: Settings, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets (probed with the raw client: no group join)."""
    probe = Consumer(kafka.consumer_config(settings, group))
    try:
        found = probe.committed([TopicPartition(topic, p) for p in (0, 1)], timeout=30)
    finally:
        probe.close()
    return {tp.partition: tp.offset for tp in found if tp.offset >= 0}


def _crash_at(settings: Settings, step: int, source: str, sink: str, group: str,
              txid: str) -> None:
    process = subprocess.run(
        [sys.executable, "-m", "tests.support.txn_crash", "--step", str(step),
         "--source", source, "--sink", sink, "--group", group, "--txid", txid,
         "--count", str(INPUTS)],
        cwd=REPO, env={**os.environ, **settings.to_env()}, capture_output=True, timeout=120)
    assert process.returncode == REACHED, process.stderr.decode()[-3000:]


def _poll(consumer_records: Callable[[], list[Record]], count: int) -> list[Record]:
    records: list[Record] = []
    deadline = time.monotonic() + 60
    while len(records) < count:
        assert time.monotonic() < deadline, f"only {len(records)} of {count} inputs arrived"
        records.extend(consumer_records())
    return records


@pytest.mark.parametrize("step", [2, 4, 6])
def test_a_crash_between_steps_leaves_nothing_visible_and_a_rerun_commits_all(
        settings: Settings, unique_name: Callable[[str], str], step: int) -> None:
    source, sink = _topics(settings)
    inputs = _produce_inputs(settings, source)
    group, txid = unique_name("edge-group"), unique_name("edge-tx")
    _crash_at(settings, step, source, sink, group, txid)

    # The successor: init_transactions aborts what the dead process left open.
    producer = kafka.make_producer(settings, transactional_id=txid)
    assert _values(settings, sink) == []
    assert _committed(settings, group, source) == {}
    if step >= 4:  # flushed before the crash: in the log, only never committed
        assert _values(settings, sink, "read_uncommitted") == inputs

    consumer = kafka.make_consumer(settings, group, **static_member(group))
    consumer.subscribe([source])
    try:
        consumed = _poll(lambda: consumer.poll_batch(0.5), INPUTS)
        assert sorted(r.value or b"" for r in consumed) == inputs  # nothing was consumed

        def produce(out: KafkaProducer) -> None:
            for record in consumed:
                out.produce(sink, record.value, record.key)

        assert TransactionalBatch(producer, consumer).run(produce, consumed)
    finally:
        consumer.close()
    assert _values(settings, sink) == inputs  # exactly once
    probe = kafka.make_consumer(settings, "ends")
    try:
        ends = {p: probe.watermarks(source, p)[1] for p in (0, 1)}
    finally:
        probe.close()
    assert _committed(settings, group, source) == ends  # offsets with the outputs


def test_a_zombie_producer_is_fenced(settings: Settings,
                                     unique_name: Callable[[str], str]) -> None:
    _, sink = _topics(settings)
    txid = unique_name("edge-tx")
    zombie = kafka.make_producer(settings, transactional_id=txid)
    successor = kafka.make_producer(settings, transactional_id=txid)
    with pytest.raises(FencedError):
        TransactionalBatch(zombie, timeout_s=10).run(lambda out: out.produce(sink, b"zombie"))
    assert TransactionalBatch(successor).run(lambda out: out.produce(sink, b"live"))
    assert _values(settings, sink) == [b"live"]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # nothing listens once the socket is closed


def test_an_unreachable_broker_gives_our_errors_in_bounded_time(settings: Settings) -> None:
    port = _closed_port()
    nowhere = settings.model_copy(update={"kafka": settings.kafka.model_copy(
        update={"bootstrap_servers": f"127.0.0.1:{port}", "connect_timeout_s": 2.0})})
    fast = {"socket.connection.setup.timeout.ms": 1000, "reconnect.backoff.max.ms": 500,
            "log_level": 0}  # the refused connections are expected: keep the output readable

    # Every factory gives up within the connect timeout, naming the address.
    for build in (lambda: ensure_topics(nowhere, timeout_s=2),
                  lambda: kafka.make_consumer(nowhere, "nowhere", **fast),
                  lambda: kafka.make_reader(nowhere, "nowhere", **fast),
                  lambda: kafka.make_producer(nowhere, **fast)):
        started = time.monotonic()
        with pytest.raises(KafkaUnreachableError, match=f"127.0.0.1:{port}") as caught:
            build()
        assert isinstance(caught.value, RetriableKafkaError)
        assert time.monotonic() - started < 2.0 + 10

    # A client that lost its broker after it was built: errors are ours, counted, never dropped.
    tally = kafka.ErrorTally("nowhere")
    consumer = kafka.KafkaConsumer(
        Consumer({**kafka.consumer_config(nowhere, "nowhere", **fast),
                  "error_cb": tally.on_client_error}), "nowhere", tally=tally)
    started = time.monotonic()
    try:
        with pytest.raises(RetriableKafkaError):
            consumer.watermarks("any", 0, timeout_s=2)
        with pytest.raises(RetriableKafkaError):
            consumer.partitions("any", timeout_s=2)
        consumer.assign([Position("any", 0, 0)])
        deadline = time.monotonic() + 10
        while not consumer.errors and time.monotonic() < deadline:
            assert consumer.poll(0.2) is None  # errors are counted, never raised or dropped
        assert consumer.errors and isinstance(consumer.last_error, KafkaOperationError)
    finally:
        consumer.close()
    producer = KafkaProducer(Producer(kafka.producer_config(
        nowhere, **{**fast, "message.timeout.ms": 1500})))
    reports: list[Delivery] = []
    producer.produce("any", b"lost", on_delivery=reports.append)
    producer.flush(10)
    assert len(reports) == 1 and isinstance(reports[0].error, KafkaOperationError)
    assert time.monotonic() - started < 60


def test_a_missing_topic_is_a_counted_consumer_error(settings: Settings) -> None:
    consumer = kafka.make_consumer(settings, f"missing-{time.time_ns()}",
                             **{"allow.auto.create.topics": False})
    try:
        consumer.subscribe([settings.topic("does.not.exist")])
        deadline = time.monotonic() + 20
        while not consumer.errors and time.monotonic() < deadline:
            assert consumer.poll(0.2) is None
        assert "UNKNOWN_TOPIC_OR_PART" in consumer.errors
    finally:
        consumer.close()


def test_offset_for_time_uses_the_time_index(settings: Settings) -> None:
    topic = settings.topic("edge.times")
    ensure_topics(settings, [TopicSpec("edge.times", 1, "test", "test", ())])
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    base = int(time.time() * 1000) - 60_000
    for stamp in (1_000, 2_000, 3_000):  # record timestamps set by the writer (CreateTime)
        producer.produce(topic, b"x", partition=0, timestamp=base + stamp)
    assert producer.flush(30) == 0
    consumer = kafka.make_consumer(settings, f"times-{time.time_ns()}")
    try:
        assert consumer.offset_for_time(topic, 0, base) == 0
        assert consumer.offset_for_time(topic, 0, base + 2_000) == 1  # exactly on a timestamp
        assert consumer.offset_for_time(topic, 0, base + 2_001) == 2  # between two
        assert consumer.offset_for_time(topic, 0, base + 3_001) is None  # after every record
    finally:
        consumer.close()


def test_span_reads_back_to_back_on_one_consumer_return_every_record(settings: Settings) -> None:
    """librdkafka applies an ``assign`` asynchronously, so right after it ``position`` can
    still say where the previous read stopped. A span read that trusted it returned nothing
    when it followed a read that had got further (the light chain reads walk backwards)."""
    ensure_topics(settings)
    topic = settings.topic("chain.blocks")
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    for index in range(96):
        producer.produce(topic, b"r%d" % index, partition=0)
    assert producer.flush(30) == 0
    reader = kafka.make_reader(settings, "spans", **{"fetch.wait.max.ms": 10})
    try:
        for start, end in [(32, 96), (30, 94), (30, 94), (0, 30), (0, 30), (95, 96), (10, 12)]:
            got = reader.read_span(topic, 0, start, end, timeout_s=30)
            assert [r.offset for r in got] == list(range(start, end)), (start, end)
            assert [r.value for r in got] == [b"r%d" % i for i in range(start, end)]
    finally:
        reader.close()
