"""The user database on the real Kafka + Cassandra: crash safety, rebalances, rebuilds.

The handler and the shard_writer run as real subprocesses (``python -m ...``) so they can be
killed with SIGKILL at random points; the truth they are checked against is the event log.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cassandra.cluster import Session
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from services.shard_writer.consistency import (
    check_log,
    diff_projection,
    end_positions,
    expected_views,
    read_events,
)
from services.shard_writer.core import Command, command_to_record
from services.shard_writer.projection import Projector
from services.shard_writer.queries import UserQueries
from services.shard_writer.store import create_schema, drop_keyspace
from streams.admin import ensure_topics
from streams.codec import default_codec
from streams.kafka import consumer_config, make_producer
from streams.settings import Settings
from tests.support.workload import make_workload

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


# --- helpers (the soak tests reuse them) -----------------------------------------------------

def process_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)}


class Service:
    """A handler or shard_writer subprocess that can be killed and restarted."""

    def __init__(self, settings: Settings, module: str, args: list[str], log: Path) -> None:
        self.settings, self.module, self.args, self.log = settings, module, args, log
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args], cwd=ROOT,
            env=process_env(self.settings), stdout=handle, stderr=subprocess.STDOUT)
        handle.close()
        self.starts += 1

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def produce_commands(settings: Settings, commands: list[Command]) -> None:
    producer = make_producer(settings, **{"linger.ms": 20})
    codec = default_codec()
    topic = settings.topic("users.commands")
    for command in commands:
        producer.produce(topic, key=command.user_id.encode(),
                         value=codec.encode("UserCommandIssued", command_to_record(command)))
        producer.poll(0)
    assert producer.flush(60) == 0


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str,
               check: Callable[[], None] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.5)


def events_written(settings: Settings) -> int:
    """How many records ``users.events`` holds (transaction markers included)."""
    topic = settings.topic("users.events")
    consumer = Consumer(consumer_config(settings, f"count-{time.time_ns()}"))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in partitions)
    finally:
        consumer.close()


def handler_caught_up(settings: Settings) -> Callable[[], bool]:
    """True once the handler group committed every command offset."""
    topic = settings.topic("users.commands")
    consumer = Consumer(consumer_config(settings, settings.topic("users.handler")))

    def done() -> bool:
        partitions = sorted(AdminClient(settings.kafka_config()).list_topics(topic, timeout=10)
                            .topics[topic].partitions)
        try:
            committed = consumer.committed([TopicPartition(topic, p) for p in partitions],
                                           timeout=10)
            for tp in committed:
                _low, high = consumer.get_watermark_offsets(tp, timeout=10)
                if high > 0 and tp.offset < high:
                    return False
        except KafkaException:
            return False  # coordinator moving or loading: ask again
        return True

    return done


def queries_for(settings: Settings, session: Session) -> UserQueries:
    return UserQueries(session, settings.cassandra.keyspace, settings.topic("users.events"))


def dump_tables(session: Session, keyspace: str) -> dict[str, list[tuple[Any, ...]]]:
    return {table: sorted(tuple(row) for row in
                          session.execute(f"SELECT * FROM {keyspace}.{table}"))
            for table in ("users", "records", "devices")}


def in_thread(runner: Any) -> threading.Thread:
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def users_settings(cassandra_settings: Settings, cassandra_session: Session) -> Iterator[Settings]:
    ensure_topics(cassandra_settings)
    create_schema(cassandra_session, cassandra_settings.cassandra.keyspace)
    yield cassandra_settings
    drop_keyspace(cassandra_session, cassandra_settings.cassandra.keyspace)


def run_with_kills(settings: Settings, session: Session, tmp: Path, *, users: int,
                   commands: int, kills: int, seed: int,
                   handler_args: Sequence[str] = ()) -> None:
    """Produce the workload, kill -9 handler and shard_writer ``kills`` times each at random
    points, then check the log and the projection. ``handler_args`` go to the handler."""
    rng = random.Random(seed)
    workload = make_workload(users, commands, seed=seed)
    produce_commands(settings, workload.commands)
    handler = Service(settings, "services.shard_writer.handler",
                      ["--instance-id", "0", "--session-timeout-ms", "6000", *handler_args],
                      tmp / "handler.log")
    writer = Service(settings, "services.shard_writer.projection",
                     ["--instance-id", "sw0", "--session-timeout-ms", "6000",
                      "--max-batch", "500"], tmp / "writer.log")
    handler.start()
    writer.start()
    try:
        victims = [handler] * kills + [writer] * kills
        rng.shuffle(victims)
        for victim in victims:
            time.sleep(rng.uniform(1.0, 4.0))
            victim.kill()
            victim.start()
        wait_until(handler_caught_up(settings), 180, "the handler to apply every command",
                   check=lambda: _alive(handler, writer))
        logged = read_events(settings)
        targets = end_positions(logged)
        queries = queries_for(settings, session)
        queries.wait_for_positions(targets, timeout_s=180)
    finally:
        handler.stop()
        writer.stop()
    assert check_log(logged) == []
    by_user: dict[str, list[str]] = {}
    for item in logged:
        by_user.setdefault(item.event.user_id, []).append(item.event.command_id)
    assert by_user == {u: ids for u, ids in workload.accepted.items() if ids}, \
        "events differ from the commands the core accepts (lost or duplicated)"
    assert diff_projection(expected_views(logged), queries) == []
    assert handler.starts == kills + 1 and writer.starts == kills + 1


def _alive(*services: Service) -> None:
    for service in services:
        assert service.alive(), f"{service.module} died: {service.log.read_text()[-3000:]}"


# --- tests ------------------------------------------------------------------------------------

def test_ten_thousand_commands_survive_kill_9_and_rebuild_gives_identical_rows(
        users_settings: Settings, cassandra_session: Session, tmp_path: Path) -> None:
    kills = int(os.environ.get("QUSTREAM_USERS_KILLS", "2"))
    run_with_kills(users_settings, cassandra_session, tmp_path, users=100, commands=10_000,
                   kills=kills, seed=11)
    # Rebuild: a fresh keyspace (and so a fresh group) projected from offset 0.
    fresh = users_settings.model_copy(deep=True)
    fresh.cassandra.keyspace = users_settings.cassandra.keyspace + "_rebuild"
    projector = Projector.create(fresh, cassandra_session)
    try:
        projector.run(idle_timeout_s=5)
        assert dump_tables(cassandra_session, fresh.cassandra.keyspace) == \
            dump_tables(cassandra_session, users_settings.cassandra.keyspace)
    finally:
        projector.close()
        drop_keyspace(cassandra_session, fresh.cassandra.keyspace)


def test_two_shard_writers_split_partitions_and_one_stopping_loses_nothing(
        users_settings: Settings, cassandra_session: Session, tmp_path: Path) -> None:
    from services.shard_writer.handler import CommandHandler

    args = ["--session-timeout-ms", "6000", "--max-batch", "100"]
    first = Service(users_settings, "services.shard_writer.projection", args, tmp_path / "a.log")
    second = Service(users_settings, "services.shard_writer.projection", args,
                     tmp_path / "b.log")
    first.start()
    second.start()

    def split() -> bool:
        return all(re.search(r"assigned \{\d", s.log.read_text()) for s in (first, second))

    try:
        wait_until(split, 60, "both shard_writers to own partitions",
                   check=lambda: _alive(first, second))
        workload = make_workload(40, 3000, seed=5, seal=False)
        produce_commands(users_settings, workload.commands)
        handler = CommandHandler.create(users_settings, instance_id="split")
        thread = in_thread(handler)
        quarter = len(workload.commands) // 4
        wait_until(lambda: events_written(users_settings) >= quarter, 120,
                   "a quarter of the events, so the second shard_writer leaves mid-run")
        second.stop()  # leaves the group: its partitions move to the first instance
        wait_until(handler_caught_up(users_settings), 120, "the handler")
        handler.stop()
        thread.join(30)
        handler.close()
        logged = read_events(users_settings)
        queries = queries_for(users_settings, cassandra_session)
        queries.wait_for_positions(end_positions(logged), timeout_s=120)
    finally:
        first.stop()
        second.stop()
    assert check_log(logged) == []
    assert diff_projection(expected_views(logged), queries) == []
    second_assignments = [line for line in second.log.read_text().splitlines()
                          if "assigned {" in line]
    assert second_assignments, "the second shard_writer never owned a partition"
