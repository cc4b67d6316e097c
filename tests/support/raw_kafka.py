"""The library's own Kafka clients, configured like ours: for tests that probe the broker with
the exact confluent-kafka API (watermarks, committed offsets, control records), where the edge
kit's wrappers would hide what is being checked. Production code never imports this."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from streams.kafka import consumer_config, producer_config
from streams.settings import Settings


def raw_consumer(settings: Settings, group_id: str, **overrides: Any) -> Consumer:
    return Consumer(consumer_config(settings, group_id, **overrides))


def raw_producer(settings: Settings, *, transactional_id: str | None = None,
                 **overrides: Any) -> Producer:
    config = producer_config(settings, **overrides)
    if transactional_id is not None:
        config["transactional.id"] = transactional_id
    producer = Producer(config)
    if transactional_id is not None:
        producer.init_transactions(30)
    return producer


def raw_admin(settings: Settings) -> AdminClient:
    return AdminClient(settings.kafka_config())
