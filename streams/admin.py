"""Topic administration at the Kafka edge: create the catalogue, delete topics, probe brokers.

Like ``streams.kafka``, and only with it, this module sees confluent-kafka; its errors leave as
``streams.errors`` types (``streams.kafka.translate``), decided on error codes, never on text.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from streams.errors import KafkaTimeoutError
from streams.kafka import await_cluster, client_logging, translate
from streams.settings import Settings
from streams.topics import CATALOGUE, TopicSpec


def brokers_answer(config: dict[str, Any], timeout_s: float) -> bool:
    """True when a cluster reached with ``config`` lists at least one broker in time."""
    try:
        return bool(AdminClient({**client_logging(), **config})
                    .list_topics(timeout=timeout_s).brokers)
    except KafkaException:
        return False


def _admin(settings: Settings) -> AdminClient:
    """An admin client whose cluster has answered (``KafkaUnreachableError`` otherwise)."""
    admin = AdminClient({**client_logging(), **settings.kafka_config()})
    await_cluster(admin, settings, "topic administration")
    return admin


@dataclass(frozen=True, slots=True)
class TopicReport:
    topic: str
    status: str  # "created", "ok", "drift"
    drift: tuple[str, ...] = ()


def _already_exists(exc: KafkaException) -> bool:
    error = exc.args[0] if exc.args else None
    return isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS


def ensure_topics(
    settings: Settings,
    specs: Iterable[TopicSpec] = CATALOGUE,
    *,
    replication_factor: int | None = None,
    timeout_s: float = 30.0,
    leaders_timeout_s: float = 120.0,
) -> list[TopicReport]:
    """Create missing catalogue topics; report configuration drift of existing ones.

    Drift is reported, not corrected: changing partitions or retention of a live topic is an
    operator's decision.
    """
    factor = replication_factor or settings.kafka.replication_factor
    admin = _admin(settings)
    specs = list(specs)
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise translate(exc, f"cannot list topics at {settings.kafka_bootstrap()}") from exc
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
                if not _already_exists(exc):
                    raise translate(exc, f"cannot create topic {name}") from exc
            reports.append(TopicReport(name, "created"))
        # A broker that has just started creates the partitions' logs before its metadata
        # lists them: with two CPU hogs on two cores that took more than 30 s.
        _await_leaders(admin, [settings.topic(s.name) for s in missing],
                       max(timeout_s, leaders_timeout_s))
    present = [s for s in specs if settings.topic(s.name) in existing]
    if present:
        resources = [ConfigResource("topic", settings.topic(s.name)) for s in present]
        described = admin.describe_configs(resources)
        for spec_, resource in zip(present, resources, strict=True):
            name = settings.topic(spec_.name)
            try:
                actual = {k: v.value for k, v in described[resource].result(timeout_s).items()}
            except KafkaException as exc:
                raise translate(exc, f"cannot describe topic {name}") from exc
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


def _await_leaders(admin: AdminClient, names: list[str], timeout_s: float) -> None:
    """Wait until every partition of the just-created ``names`` has a leader in the metadata
    brokers serve. CreateTopics answers once the controller has committed the topics, before
    the brokers' metadata caches know them; a client that subscribes in that moment is told
    "unknown topic" and, with librdkafka, looks again only at its next metadata refresh
    (minutes), so a service started right after ``ensure_topics`` could sit idle."""
    deadline = time.monotonic() + timeout_s
    pending = set(names)
    while pending:
        try:
            topics = admin.list_topics(timeout=max(1.0, deadline - time.monotonic())).topics
        except KafkaException as exc:
            raise translate(exc, "cannot read the metadata of the topics just created") from exc
        pending = {name for name in pending
                   if name not in topics or topics[name].error is not None
                   or not topics[name].partitions
                   or any(p.leader < 0 for p in topics[name].partitions.values())}
        if pending and time.monotonic() > deadline:
            raise KafkaTimeoutError(f"topics created but without a leader after {timeout_s:.0f}"
                                    f" s: {', '.join(sorted(pending))}")
        if pending:
            time.sleep(0.1)


def delete_topics(settings: Settings, names: Iterable[str], *, timeout_s: float = 60.0
                  ) -> list[str]:
    """Delete those of ``names`` that exist and wait until the names are free (deletion
    completes asynchronously in the controller); returns the names deleted."""
    admin = _admin(settings)
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
        doomed = [name for name in names if name in existing]
        if not doomed:
            return []
        for future in admin.delete_topics(doomed, operation_timeout=timeout_s).values():
            future.result(timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not set(doomed) & set(admin.list_topics(timeout=timeout_s).topics):
                break
            time.sleep(0.5)
    except KafkaException as exc:
        raise translate(exc, "cannot delete topics") from exc
    return doomed
