"""Kafka's conventions on the real broker: Java's partitioner, retention that holds, dead letters
of maximal messages, and consumer-group lag that reads zero when caught up (issue 14)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest
from cassandra.cluster import Session
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from confluent_kafka.admin import ConfigResource

from protocol.users import MalformedCommandError
from services.shard_writer.core import command_to_record
from services.shard_writer.handler import CommandHandler
from services.shard_writer.projection import Projector
from streams.admin import ensure_topics
from streams.codec import default_codec
from streams.dlq import DeadLetters
from streams.kafka import Record
from streams.settings import Settings
from streams.topics import BY_NAME, TopicSpec
from tests.integration.test_users_pipeline import users_settings  # noqa: F401
from tests.support.raw_kafka import raw_admin, raw_consumer, raw_producer
from tests.support.users_services import running_handler_and_projector
from tests.support.workload import make_workload
from tests.unit.test_partitioning import java_partition

pytestmark = pytest.mark.integration


def _deliver(settings: Settings, topic: str, records: list[tuple[bytes, bytes]],
             **overrides: object) -> list[Message]:
    producer = raw_producer(settings, **overrides)
    delivered: list[Message] = []

    def on_delivery(error: object, message: Message) -> None:
        assert error is None, error
        delivered.append(message)

    for key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(60) == 0
    return delivered


# --- partitioning -----------------------------------------------------------------------------

def test_keyed_records_land_where_javas_default_partitioner_puts_them(settings: Settings) -> None:
    rng = random.Random(14)
    keys = [b"", b"src-1", "用户-ü".encode()]
    keys += [rng.randbytes(rng.randrange(1, 80)) for _ in range(150)]
    keys += [f"u-{rng.getrandbits(128):032x}".encode() for _ in range(150)]
    names = ("users.commands", "entropy.raw", "qrng.status")  # 12, 6 and 3 partitions
    ensure_topics(settings, [BY_NAME[n] for n in names])
    for name in names:
        delivered = _deliver(settings, settings.topic(name), [(k, b"v") for k in keys])
        assert len(delivered) == len(keys)
        partitions = BY_NAME[name].partitions
        wrong = [(m.key(), m.partition()) for m in delivered
                 if m.partition() != java_partition(m.key() or b"", partitions)]
        assert wrong == [], f"{name}: {len(wrong)} of {len(keys)} off Java's partition"
        assert len({m.partition() for m in delivered}) == partitions  # and they spread


# --- retention --------------------------------------------------------------------------------

def _retention_check_interval_ms(settings: Settings) -> int:
    admin = raw_admin(settings)
    broker = next(iter(admin.list_topics(timeout=10).brokers))
    resource = ConfigResource("broker", str(broker))
    configs = admin.describe_configs([resource])[resource].result(30)
    return int(configs["log.retention.check.interval.ms"].value)


def _oldest_age_ms(consumer: Consumer, topic: str, partitions: int) -> tuple[int, int]:
    """(age in ms of the oldest record still in the topic, how many records were deleted)."""
    now = int(time.time() * 1000)
    oldest, deleted = 0, 0
    for partition in range(partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        deleted += low
        if low == high:
            continue
        consumer.assign([TopicPartition(topic, partition, low)])
        message = None
        deadline = time.monotonic() + 10
        while message is None and time.monotonic() < deadline:
            message = consumer.poll(0.5)
        assert message is not None and message.error() is None, message
        if message.offset() == low:  # else deleted while we looked: younger than assumed
            oldest = max(oldest, now - message.timestamp()[1])
    return oldest, deleted


def test_a_short_retention_holds_no_segment_older_than_retention_plus_segment_time(
        settings: Settings, unique_name) -> None:
    """A topic written slowly, with the catalogue's segment rule and a 10 s retention, keeps no
    record older than retention + segment.ms + the broker's retention check interval (+ the
    write interval and scheduling slack). The same topic with Kafka's default segments keeps
    everything: the rule, not the retention alone, is what deletes."""
    retention_ms, write_every_s = 10_000, 0.25
    spec = TopicSpec("retention", 2, "k", "test", (), retention_ms=retention_ms)
    bare = settings.topic("retention.bare")
    ensure_topics(settings, [spec])
    admin = raw_admin(settings)
    from confluent_kafka.admin import NewTopic

    for future in admin.create_topics([NewTopic(bare, 2, 1, config={
            "retention.ms": str(retention_ms)})]).values():
        future.result(30)
    check_ms = _retention_check_interval_ms(settings)
    assert check_ms <= 30_000, (
        f"the broker checks retention every {check_ms} ms: this test needs at most 30 s "
        "(the embedded broker uses 5 s; set log.retention.check.interval.ms on a test cluster)")
    bound_ms = retention_ms + spec.segment_ms + check_ms + int(write_every_s * 1000) + 3_000
    topic = settings.topic("retention")
    producer = raw_producer(settings, **{"linger.ms": 0})
    consumer = raw_consumer(settings, unique_name("retention"))
    start = time.monotonic()
    ages: list[int] = []
    deleted = 0
    try:
        while time.monotonic() - start < (bound_ms + 8_000) / 1000:
            for name in (topic, bare):
                producer.produce(name, key=b"a", value=b"x" * 100)
                producer.produce(name, key=b"b", value=b"x" * 100)
            producer.poll(0)
            time.sleep(write_every_s)
            if time.monotonic() - start > bound_ms / 1000:
                age, deleted = _oldest_age_ms(consumer, topic, spec.partitions)
                ages.append(age)
        assert producer.flush(30) == 0
        _, bare_deleted = _oldest_age_ms(consumer, bare, 2)
    finally:
        consumer.close()
    assert ages and max(ages) <= bound_ms, (ages, bound_ms)
    assert deleted > 0, "nothing was deleted"
    assert bare_deleted == 0, "default segments kept every record"


# --- dead letters -----------------------------------------------------------------------------

def test_a_maximal_message_can_be_dead_lettered(settings: Settings, unique_name) -> None:
    """The largest message users.commands accepts still fits dlq.users once wrapped."""
    ensure_topics(settings, [BY_NAME["users.commands"], BY_NAME["dlq.users"]])
    source = settings.topic("users.commands")
    value = b"\x01" * (BY_NAME["users.commands"].max_message_bytes - 200)
    _deliver(settings, source, [(b"u-big", value)], **{"linger.ms": 0})
    consumer = raw_consumer(settings, unique_name("dlq"))
    consumer.subscribe([source])
    message = None
    deadline = time.monotonic() + 30
    while message is None and time.monotonic() < deadline:
        message = consumer.poll(0.5)
    consumer.close()
    assert message is not None and message.error() is None
    producer = raw_producer(settings)
    record = Record(message.topic() or "", message.partition() or 0, message.offset() or 0,
                    message.key(), message.value(), message.timestamp()[1])
    DeadLetters(producer, settings.topic("dlq.users"), "test").send(  # type: ignore[arg-type]
        record, MalformedCommandError("x" * 100_000))
    assert producer.flush(30) == 0
    reader = raw_consumer(settings, unique_name("dlq-read"))
    reader.assign([TopicPartition(settings.topic("dlq.users"), 0, 0)])
    wrapped = None
    deadline = time.monotonic() + 30
    while wrapped is None and time.monotonic() < deadline:
        wrapped = reader.poll(0.5)
    reader.close()
    assert wrapped is not None and wrapped.error() is None, wrapped and wrapped.error()
    assert default_codec().decode(wrapped.value()).record["value"] == value


# --- lag ----------------------------------------------------------------------------------------

def group_lag(settings: Settings, group: str, topic: str) -> dict[int, int]:
    """Per partition: log end offset - committed offset (what kafka-consumer-groups shows)."""
    consumer = raw_consumer(settings, group)
    try:
        partitions = sorted(raw_admin(settings).list_topics(topic, timeout=10)
                            .topics[topic].partitions)
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions],
                                       timeout=10)
        lag = {}
        for tp in committed:
            _low, end = consumer.get_watermark_offsets(tp, timeout=10)
            lag[tp.partition] = end - max(tp.offset, 0)
        return lag
    finally:
        consumer.close()


def _wait_for_zero_lag(settings: Settings, group: str, topic: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    lag: dict[int, int] = {}
    while time.monotonic() < deadline:
        try:
            lag = group_lag(settings, group, topic)
        except KafkaException:
            lag = {}  # coordinator loading: ask again
        if lag and all(v == 0 for v in lag.values()):
            return
        time.sleep(1)
    raise AssertionError(f"{group} on {topic} never caught up to lag 0: {lag}")


@pytest.fixture
def running(users_settings: Settings,  # noqa: F811
            cassandra_session: Session) -> Iterator[tuple[CommandHandler, Projector]]:
    with running_handler_and_projector(users_settings, cassandra_session, "lag",
                                       create_tables=False) as services:
        yield services


def test_caught_up_groups_report_lag_zero_over_transactional_topics(
        users_settings: Settings, running: tuple[CommandHandler, Projector]) -> None:  # noqa: F811
    """Commands written in transactions (as a Kafka Streams app would), the handler's own
    transactional events: once caught up, the handler's and the shard_writer's groups both
    report lag 0 on every partition, transaction markers included."""
    handler, _projector = running
    workload = make_workload(12, 120, seed=14, seal=False)
    producer = raw_producer(users_settings, transactional_id=f"{users_settings.topic_prefix}w")
    codec = default_codec()
    topic = users_settings.topic("users.commands")
    for start in range(0, len(workload.commands), 40):
        producer.begin_transaction()
        for command in workload.commands[start:start + 40]:
            producer.produce(topic, key=command.user_id.encode(),
                             value=codec.encode("UserCommandIssued", command_to_record(command)))
        producer.commit_transaction(30)
    _wait_for_zero_lag(users_settings, users_settings.topic("users.handler"), topic, 120)
    assert handler.stats.accepted > 0
    events = users_settings.topic("users.events")
    group = users_settings.topic(f"users.shard_writer.{users_settings.cassandra.keyspace}")
    _wait_for_zero_lag(users_settings, group, events, 120)
