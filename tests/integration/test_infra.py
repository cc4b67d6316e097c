"""The embedded cluster against the real servers: round trips, and crash-and-restart semantics."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from rich.console import Console

from infra.local import LocalCluster
from infra.local.process import free_port
from streams.settings import CassandraSettings, InfraSettings, KafkaSettings, Settings

pytestmark = pytest.mark.integration


def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=1,
                                                replication_factor=1)]).values():
        future.result(30)


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True})
    for index, value in enumerate(values):
        producer.produce(topic, key=str(index).encode(), value=value)
    assert producer.flush(30) == 0, "messages left unacknowledged"


def _consume(bootstrap: str, topic: str, group: str, count: int,
             timeout_s: float = 60.0) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(values) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            value = message.value()
            assert value is not None
            values.append(value)
    finally:
        consumer.close()
    return values


def test_message_round_trips_through_kafka(settings: Settings,
                                           unique_name: Callable[[str], str]) -> None:
    bootstrap = settings.kafka_bootstrap()
    topic = settings.topic("infra.roundtrip")
    _create_topic(bootstrap, topic)
    sent = [f"message {i}".encode() for i in range(10)]
    _produce(bootstrap, topic, sent)
    assert _consume(bootstrap, topic, unique_name("roundtrip"), len(sent)) == sent


def test_rows_round_trip_through_cassandra(cassandra_settings: Settings,
                                           cassandra_session: Any) -> None:
    keyspace = cassandra_settings.cassandra.keyspace
    cassandra_session.execute(
        f"CREATE KEYSPACE {keyspace} WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 1}")
    try:
        cassandra_session.execute(
            f"CREATE TABLE {keyspace}.items (shard int, id int, body text, "
            "PRIMARY KEY (shard, id))")
        insert = cassandra_session.prepare(
            f"INSERT INTO {keyspace}.items (shard, id, body) VALUES (?, ?, ?)")
        for index in range(20):
            cassandra_session.execute(insert, (index % 2, index, f"body {index}"))
        rows = cassandra_session.execute(
            f"SELECT id, body FROM {keyspace}.items WHERE shard = 1")
        assert [(row.id, row.body) for row in rows] == [
            (i, f"body {i}") for i in range(1, 20, 2)]
    finally:
        cassandra_session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")


@pytest.fixture
def private_kafka(tmp_path: Path, embedded_state_dir: Path) -> Iterator[LocalCluster]:
    """A Kafka of this test's own (state under tmp_path, free ports), stopped afterwards."""
    ports = sorted({free_port() for _ in range(8)})[:4]
    assert len(ports) == 4
    settings = Settings(
        state_dir=tmp_path / "state",
        topic_prefix="crash.",
        kafka=KafkaSettings(bootstrap_servers=None),
        cassandra=CassandraSettings(contact_points=None),
        infra=InfraSettings(kafka_port=ports[0], kafka_controller_port=ports[1],
                            cassandra_native_port=ports[2], cassandra_storage_port=ports[3],
                            kafka_heap="512m"),
    )
    cluster = LocalCluster(settings, console=Console(stderr=True),
                           jars_from=embedded_state_dir)
    try:
        yield cluster
    finally:
        cluster.down()


def _kafka_status(cluster: LocalCluster) -> Any:
    return cluster.status(("kafka",))[0]


def test_killed_broker_is_reported_dead_and_restarted_with_its_data(
        private_kafka: LocalCluster, unique_name: Callable[[str], str]) -> None:
    cluster = private_kafka
    assert _kafka_status(cluster).state == "stopped"
    first = cluster.up(("kafka",))[0]
    assert first.state == "up" and first.pid is not None

    # `up` on a running server leaves it alone.
    assert cluster.up(("kafka",))[0].pid == first.pid

    bootstrap = cluster.kafka_bootstrap
    topic = cluster.settings.topic("durable")
    _create_topic(bootstrap, topic)
    sent = [f"before crash {i}".encode() for i in range(25)]
    _produce(bootstrap, topic, sent)

    os.kill(first.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _kafka_status(cluster).state != "dead" and time.monotonic() < deadline:
        time.sleep(0.2)
    dead = _kafka_status(cluster)
    assert dead.state == "dead", dead
    assert dead.pid == first.pid

    restarted = cluster.up(("kafka",))[0]
    assert restarted.state == "up" and restarted.pid not in (None, first.pid)
    assert _consume(bootstrap, topic, unique_name("after-crash"), len(sent)) == sent

    # A graceful down + up keeps the data too.
    assert cluster.down(("kafka",))[0].state == "stopped"
    cluster.up(("kafka",))
    assert _consume(bootstrap, topic, unique_name("after-down"), len(sent)) == sent

    # reset wipes it: the topic is gone after the next start.
    cluster.reset(("kafka",))
    assert _kafka_status(cluster).state == "stopped"
    cluster.up(("kafka",))
    topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).topics
    assert topic not in topics
