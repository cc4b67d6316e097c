"""Kafka client factories and topic administration (the shell around confluent-kafka).

Producers are idempotent with ``acks=all`` (no duplicates from retries, nothing acknowledged
before every in-sync replica has it), and place keyed records as Java's default partitioner does
(murmur2 of the key bytes, positive, modulo the partition count), so a Java, Kafka Streams or
Connect producer sends a user's or a source's records to the same partition as we do.
Consumers commit manually and read committed data only, so a transactional writer's aborted
output is never seen; committed positions step over transaction markers, so a caught-up group's
lag reads 0 (``positions_past_markers``). Errors from the client library are translated here
into ``KafkaError`` subclasses of our own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from streams.settings import Settings
from streams.topics import CATALOGUE, TopicSpec


class KafkaError(RuntimeError):
    """A Kafka operation failed; the message says which and why."""


class DeliveryError(KafkaError):
    """A produced message was not acknowledged by the cluster."""


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        **settings.kafka_config(),
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "none",
        "linger.ms": 5,
        "message.max.bytes": 9 * 1024 * 1024,
        # librdkafka's default is CRC32; murmur2_random is Java's placement of keyed records
        # (records without a key are spread randomly; we produce none to keyed topics).
        # Settings keep CRC32 only for deployments not migrated yet (docs/kafka-interop.md).
        "partitioner": settings.kafka.partitioner,
    }
    config.update(overrides)
    return config


def make_producer(
    settings: Settings, *, transactional_id: str | None = None, **overrides: Any
) -> Producer:
    """An idempotent, acks=all producer; transactional when ``transactional_id`` is given."""
    config = producer_config(settings, **overrides)
    if transactional_id is not None:
        config["transactional.id"] = transactional_id
    try:
        producer = Producer(config)
        if transactional_id is not None:
            producer.init_transactions(30)
    except KafkaException as exc:
        raise KafkaError(f"cannot create producer: {exc}") from exc
    return producer


def make_consumer(settings: Settings, group_id: str, **overrides: Any) -> Consumer:
    """A consumer with manual commits, reading only committed data, from the earliest offset."""
    config: dict[str, Any] = {
        **settings.kafka_config(),
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
    }
    config.update(overrides)
    try:
        return Consumer(config)
    except KafkaException as exc:
        raise KafkaError(f"cannot create consumer: {exc}") from exc


def positions_past_markers(consumer: Consumer, topic: str,
                           consumed: Mapping[int, int]) -> dict[int, int]:
    """Offsets to commit for ``topic`` after processing every message handed out so far.

    ``consumed`` maps partition -> offset after the last message processed (partitions with no
    message yet may be absent). A transactional writer leaves a commit marker (a control record)
    after each transaction; the consumer steps over it without handing it out, so committing
    "last offset + 1" leaves a lag of one on every partition such a writer wrote, forever. The
    consumer's position is exactly past the messages handed out and the markers stepped over
    (never past a message not yet handed out), so the larger of the two is what a caught-up
    consumer commits: its lag, measured against the log end offset, reads 0 (Java's consumer
    position does the same). Returns only partitions of ``topic`` with a valid position or an
    entry in ``consumed``.
    """
    result = dict(consumed)
    try:
        assigned = [tp for tp in consumer.assignment() if tp.topic == topic]
        positions = consumer.position(assigned) if assigned else []
    except KafkaException as exc:
        raise KafkaError(f"cannot read the positions on {topic}: {exc}") from exc
    for tp in positions:
        if tp.offset >= 0 and tp.offset > result.get(tp.partition, -1):
            result[tp.partition] = tp.offset
    return result


def advanced_positions(consumer: Consumer, topic: str,
                       committed: Mapping[int, int]) -> list[TopicPartition]:
    """Partitions of ``topic`` whose position moved past ``committed`` with no message handed
    out (markers stepped over while idle): commit them and a caught-up group's lag reads 0."""
    return [TopicPartition(topic, partition, offset)
            for partition, offset in sorted(positions_past_markers(consumer, topic, {}).items())
            if offset > committed.get(partition, -1)]


def make_admin(settings: Settings) -> AdminClient:
    return AdminClient(settings.kafka_config())


@dataclass(frozen=True, slots=True)
class TopicReport:
    topic: str
    status: str  # "created", "ok", "drift"
    drift: tuple[str, ...] = ()


def ensure_topics(
    settings: Settings,
    specs: Iterable[TopicSpec] = CATALOGUE,
    *,
    replication_factor: int | None = None,
    timeout_s: float = 30.0,
) -> list[TopicReport]:
    """Create missing catalogue topics; report configuration drift of existing ones.

    Drift is reported, not corrected: changing partitions or retention of a live topic is an
    operator's decision.
    """
    factor = replication_factor or settings.kafka.replication_factor
    admin = make_admin(settings)
    specs = list(specs)
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise KafkaError(f"cannot list topics at {settings.kafka_bootstrap()}: {exc}") from exc
    reports: list[TopicReport] = []
    missing = [s for s in specs if settings.topic(s.name) not in existing]
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(settings.topic(s.name), s.partitions, factor, config=s.configs(factor))
                for s in missing
            ],
            operation_timeout=timeout_s,
        )
        for name, future in futures.items():
            try:
                future.result(timeout_s)
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise KafkaError(f"cannot create topic {name}: {exc}") from exc
            reports.append(TopicReport(name, "created"))
    present = [s for s in specs if settings.topic(s.name) in existing]
    if present:
        resources = [ConfigResource("topic", settings.topic(s.name)) for s in present]
        described = admin.describe_configs(resources)
        for spec_, resource in zip(present, resources, strict=True):
            name = settings.topic(spec_.name)
            try:
                actual = {k: v.value for k, v in described[resource].result(timeout_s).items()}
            except KafkaException as exc:
                raise KafkaError(f"cannot describe topic {name}: {exc}") from exc
            drift = [
                f"{key}: want {want}, have {actual.get(key)}"
                for key, want in spec_.configs(factor).items()
                if actual.get(key) != want
            ]
            partitions = len(existing[name].partitions)
            if partitions != spec_.partitions:
                drift.insert(0, f"partitions: want {spec_.partitions}, have {partitions}")
            reports.append(TopicReport(name, "drift" if drift else "ok", tuple(drift)))
    return reports
