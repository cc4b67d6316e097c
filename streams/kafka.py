"""Kafka client factories and topic administration (the shell around confluent-kafka).

Producers are idempotent with ``acks=all`` (no duplicates from retries, nothing acknowledged
before every in-sync replica has it). Consumers commit manually and read committed data only,
so a transactional writer's aborted output is never seen. Errors from the client library are
translated here into ``KafkaError`` subclasses of our own.

Riding through a replicated cluster's failures (docs/replicated-cluster.md): a produce to a
partition whose leader died, or that has too few in-sync replicas (``NOT_ENOUGH_REPLICAS``),
is retried inside the client until ``message.timeout.ms`` with the idempotent producer's
sequence numbers, so it is neither lost nor written twice; consumers follow leaders through
metadata refreshes. What surfaces to the caller are the transactional calls whose coordinator
moved or timed out: ``retrying`` repeats a call that failed with a retriable error (the client
documents that as safe: a commit or offset send retried cannot apply twice), and
``run_transaction`` redoes a whole transaction after an abortable error (its aborted output is
invisible to ``read_committed`` readers).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from streams.settings import Settings
from streams.topics import CATALOGUE, TopicSpec


class KafkaError(RuntimeError):
    """A Kafka operation failed; the message says which and why."""


class DeliveryError(KafkaError):
    """A produced message was not acknowledged by the cluster."""


log = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_DEADLINE_S = 120.0  # far beyond a broker election (seconds), short of "the cluster is gone"


def is_retriable(exc: KafkaException) -> bool:
    error = exc.args[0] if exc.args else None
    return bool(getattr(error, "retriable", lambda: False)())


def requires_abort(exc: KafkaException) -> bool:
    error = exc.args[0] if exc.args else None
    return bool(getattr(error, "txn_requires_abort", lambda: False)())


def retrying(call: Callable[[], T], *, what: str, deadline_s: float = RETRY_DEADLINE_S) -> T:
    """``call()``, called again while it fails with a retriable error (a coordinator or leader
    moving, a timeout) until ``deadline_s`` has passed; any other ``KafkaException``, or the
    last retriable one, propagates unchanged for the caller to classify."""
    deadline = time.monotonic() + deadline_s
    pause = 0.1
    while True:
        try:
            return call()
        except KafkaException as exc:
            if not is_retriable(exc) or time.monotonic() + pause > deadline:
                raise
            log.warning("%s failed, retrying: %s", what, exc)
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


class ClientStuckError(KafkaError):
    """A client call did not return within its deadline; the client object must be replaced.

    librdkafka's ``send_offsets_to_transaction`` can wait for a dead group coordinator forever,
    ignoring its own timeout (librdkafka issues 5456 and 5511, open in 2.16)."""


def within(call: Callable[[], T], *, seconds: float, what: str) -> T:
    """``call()``, given at most ``seconds`` to return; raises ``ClientStuckError`` if it does
    not. The call runs on a helper thread, which is abandoned if it hangs: the caller must
    then stop using the client (a replaced transactional producer is fenced, so whatever the
    abandoned call does later is refused by the brokers)."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed to the caller's thread below
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"kafka-{what}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise ClientStuckError(f"{what} did not return within {seconds:.0f} s")
    if failure:
        raise failure[0]
    return outcome[0]


def raise_if_fatal(messages: Iterable[Any], *, what: str) -> None:
    """Raise ``KafkaError`` when a consumed batch carries a fatal client error: the consumer
    can never recover from one (a static group member fenced by its own rejoin after its
    session timed out, librdkafka issue 3437), so the process must end and be restarted
    rather than poll a dead consumer."""
    for message in messages:
        error = message.error()
        if error is not None and error.fatal():
            raise KafkaError(f"{what}: fatal consumer error: {error}")


def run_transaction(producer: Producer, fill: Callable[[], None], *, what: str,
                    timeout_s: float = 30.0, deadline_s: float = RETRY_DEADLINE_S) -> None:
    """Begin a transaction, ``fill()`` it with produces and commit it, riding through broker
    failures: a retriable commit failure is retried; an abortable one aborts and starts over
    (``fill`` must produce the same records again); a fatal one (the producer was fenced by a
    newer instance) raises ``KafkaError``, as does running out of ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            producer.begin_transaction()
            fill()
            retrying(lambda: producer.commit_transaction(timeout_s), what=f"{what}: commit",
                     deadline_s=max(0.0, deadline - time.monotonic()))
            return
        except KafkaException as exc:
            if not requires_abort(exc) or time.monotonic() > deadline:
                raise KafkaError(f"{what} failed: {exc}") from exc
            log.warning("%s aborted, starting over: %s", what, exc)
            try:
                retrying(lambda: producer.abort_transaction(timeout_s), what=f"{what}: abort",
                         deadline_s=max(0.0, deadline - time.monotonic()))
            except KafkaException as abort_exc:
                raise KafkaError(f"{what}: abort failed: {abort_exc}") from abort_exc


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        **settings.kafka_config(),
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "none",
        "linger.ms": 5,
        "message.max.bytes": 9 * 1024 * 1024,
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
            # The transaction coordinator may be moving (a broker just died): wait it out.
            retrying(lambda: producer.init_transactions(30), what="init_transactions")
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
