"""The streams/ backbone against the real Kafka: topics, codec round trips, DLQ, trace context."""

from __future__ import annotations

import json
import time

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
from fastavro.schema import parse_schema
from fastavro.utils import generate_many
from opentelemetry import trace

from streams.admin import ensure_topics
from streams.codec import SCHEMA_DIR, CodecError, default_codec
from streams.dlq import DeadLetters
from streams.kafka import KafkaConsumer, Record, make_consumer, make_producer
from streams.settings import Settings
from streams.telemetry import extract_context, inject_context, setup_telemetry
from streams.topics import CATALOGUE

pytestmark = pytest.mark.integration


def _drain(consumer: KafkaConsumer, count: int, timeout_s: float = 30.0) -> list[Record]:
    messages: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(messages) < count and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None:
            continue
        messages.append(message)
    assert not consumer.errors, consumer.errors
    assert len(messages) == count, f"got {len(messages)} of {count} messages"
    return messages


def test_ensure_topics_creates_catalogue_then_reports_drift(settings: Settings) -> None:
    reports = ensure_topics(settings)
    assert {r.topic for r in reports} == {settings.topic(s.name) for s in CATALOGUE}
    assert {r.status for r in reports} == {"created"}

    admin = AdminClient(settings.kafka_config())
    metadata = admin.list_topics(timeout=10).topics
    for spec in CATALOGUE:
        assert len(metadata[settings.topic(spec.name)].partitions) == spec.partitions

    again = ensure_topics(settings)
    assert {r.status for r in again} == {"ok"}, [r for r in again if r.status != "ok"]

    blocks = settings.topic("chain.blocks")
    resource = ConfigResource(
        "topic", blocks,
        incremental_configs=[ConfigEntry("retention.ms", "1000",
                                         incremental_operation=AlterConfigOpType.SET)],
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)
    # The broker applies config changes asynchronously: describe may lag the alter briefly.
    deadline = time.monotonic() + 20
    while True:
        drifted = {r.topic: r for r in ensure_topics(settings)}
        if drifted[blocks].status == "drift" or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert drifted[blocks].status == "drift"
    assert any("retention.ms" in line for line in drifted[blocks].drift)


def test_every_schema_round_trips_through_kafka(settings: Settings, unique_name) -> None:
    codec = default_codec()
    topic = settings.topic("roundtrip")
    ensure_topics(settings, [])  # connectivity check; the topic is auto-created below
    admin = AdminClient(settings.kafka_config())
    from confluent_kafka.admin import NewTopic

    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(30)
    sent: list[tuple[str, dict]] = []
    producer = make_producer(settings)
    for name in codec.schema_names:
        schema = json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())
        for record in generate_many(parse_schema(schema), 3):
            producer.produce(topic, value=codec.encode(name, record), key=name.encode())
            sent.append((name, record))
    assert producer.flush(30) == 0

    consumer = make_consumer(settings, unique_name("roundtrip"))
    consumer.subscribe([topic])
    try:
        received = [codec.decode(m.value) for m in _drain(consumer, len(sent))]
    finally:
        consumer.close()
    assert [(d.schema, d.record) for d in received] == sent


def test_dead_letters_keep_original_bytes_and_reason(settings: Settings, unique_name) -> None:
    ensure_topics(settings)
    producer = make_producer(settings)
    dlq_topic = settings.topic("dlq.chain")
    dead = DeadLetters(producer, dlq_topic, consumer="test")
    rejected = Record(settings.topic("chain.consensus"), 0, 41, b"k", b"\x00garbage", 0)
    dead.send(rejected, CodecError("not an Avro message"))
    assert producer.flush(30) == 0
    assert dead.counts["CodecError"] == 1

    consumer = make_consumer(settings, unique_name("dlq"))
    consumer.subscribe([dlq_topic])
    try:
        (message,) = _drain(consumer, 1)
    finally:
        consumer.close()
    record = default_codec().decode(message.value, expected="MessageDeadLettered").record
    assert record["value"] == b"\x00garbage"
    assert record["offset"] == 41
    assert record["reason"] == "not an Avro message"
    assert record["error_type"] == "CodecError"
    assert dict(message.headers)["qs.dlq.error"] == b"CodecError"


def test_trace_context_crosses_kafka_in_headers(settings: Settings, unique_name) -> None:
    ensure_topics(settings)
    telemetry = setup_telemetry("test-backbone")
    topic = settings.topic("ledger.tx")
    producer = make_producer(settings)
    with telemetry.tracer.start_as_current_span("submit") as span:
        producer.produce(topic, value=b"v", key=b"k", headers=inject_context())
        trace_id = span.get_span_context().trace_id
    assert producer.flush(30) == 0

    consumer = make_consumer(settings, unique_name("trace"))
    consumer.subscribe([topic])
    try:
        (message,) = _drain(consumer, 1)
    finally:
        consumer.close()
    context = extract_context(list(message.headers))
    assert trace.get_current_span(context).get_span_context().trace_id == trace_id
