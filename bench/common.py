"""Shared by the benchmarks: the one-JSON-line result every bench prints last, and the cleanup
of the Kafka topics and consumer groups a bench creates."""

from __future__ import annotations

import contextlib
import json
import sys
import uuid
from collections.abc import Iterator
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException
from confluent_kafka.admin import AdminClient

from streams.errors import KafkaUnreachableError
from streams.kafka import await_cluster
from streams.settings import Settings


def emit(record: dict[str, Any]) -> None:
    """Print ``record`` as one compact JSON line (the bench's last line of output)."""
    print(json.dumps(record, sort_keys=False, separators=(", ", ": ")), flush=True)


@contextlib.contextmanager
def scratch_kafka(base: Settings, **updates: Any) -> Iterator[Settings]:
    """``base`` with a fresh topic prefix (``bench-<uuid>.``) and ``updates``; when the block
    ends (also on an error or Ctrl-C), every topic with that prefix and the consumer groups the
    bench left are deleted.

    A group is the bench's when it appeared during the run, has no members left, and has no
    committed offset on a topic outside the prefix: so a concurrent user's group on a shared
    cluster is never touched (deleting a group with members fails and is ignored).
    """
    settings = base.model_copy(
        update={"topic_prefix": f"bench-{uuid.uuid4().hex[:10]}.", **updates}, deep=True)
    admin = AdminClient({**settings.kafka_config(), "log_level": 0})  # no retry chatter
    try:
        await_cluster(admin, settings, "bench admin client")
    except KafkaUnreachableError as exc:
        raise SystemExit(str(exc)) from exc  # names the address and how to start a broker
    before = _group_ids(admin)
    try:
        yield settings
    finally:
        topics = _delete_topics(admin, settings.topic_prefix)
        groups = _delete_groups(admin, _group_ids(admin) - before, settings.topic_prefix)
        print(f"cleanup: deleted {topics} topics {settings.topic_prefix}* and {groups} consumer "
              "groups", file=sys.stderr, flush=True)


def _group_ids(admin: AdminClient) -> set[str]:
    result = admin.list_consumer_groups(request_timeout=30).result()
    return {listing.group_id for listing in result.valid}


def _delete_topics(admin: AdminClient, prefix: str) -> int:
    names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefix)]
    if not names:
        return 0
    deleted = 0
    for future in admin.delete_topics(names, operation_timeout=30).values():
        with contextlib.suppress(KafkaException):  # already gone
            future.result(60)
            deleted += 1
    return deleted


def _delete_groups(admin: AdminClient, candidates: set[str], prefix: str) -> int:
    ours = []
    for group in sorted(candidates):
        request = [ConsumerGroupTopicPartitions(group)]
        try:
            offsets = admin.list_consumer_group_offsets(request)[group].result(30)
        except KafkaException:
            continue  # gone already, or not a consumer group
        if all(tp.topic.startswith(prefix) for tp in offsets.topic_partitions or []):
            ours.append(group)
    if not ours:
        return 0
    deleted = 0
    for future in admin.delete_consumer_groups(ours, request_timeout=30).values():
        with contextlib.suppress(KafkaException):  # still has members: not the bench's
            future.result(60)
            deleted += 1
    return deleted
