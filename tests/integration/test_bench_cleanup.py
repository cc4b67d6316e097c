"""Benchmarks leave no topics or consumer groups behind, also when they fail (issue 14)."""

from __future__ import annotations

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import NewTopic

from bench.common import scratch_kafka
from streams.settings import Settings
from tests.support.raw_kafka import raw_admin, raw_consumer

pytestmark = pytest.mark.integration


def _commit_group(settings: Settings, group: str, topic: str) -> None:
    consumer = raw_consumer(settings, group)
    consumer.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
    consumer.close()


def _create(settings: Settings, topic: str) -> None:
    admin = raw_admin(settings)  # kept alive until the futures resolve
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(30)


def test_a_failing_bench_deletes_its_topics_and_groups_only(settings: Settings,
                                                            unique_name) -> None:
    admin = raw_admin(settings)
    outside = settings.topic("outside")
    _create(settings, outside)
    bystander = unique_name("bystander")
    made: dict[str, str] = {}
    with pytest.raises(RuntimeError, match="bench failed"), scratch_kafka(settings) as scratch:
        assert scratch.topic_prefix.startswith("bench-") and scratch.topic_prefix != \
            settings.topic_prefix
        made["topic"] = scratch.topic("users.events")
        made["group"] = scratch.topic("users.shard_writer.ks")
        _create(scratch, made["topic"])
        _commit_group(scratch, made["group"], made["topic"])
        _commit_group(settings, bystander, outside)  # someone else's, created meanwhile
        raise RuntimeError("bench failed")
    topics = admin.list_topics(timeout=10).topics
    assert made["topic"] not in topics
    assert outside in topics
    groups = {g.group_id for g in admin.list_consumer_groups().result().valid}
    assert made["group"] not in groups
    assert bystander in groups
    for future in admin.delete_consumer_groups([bystander]).values():
        future.result(30)
