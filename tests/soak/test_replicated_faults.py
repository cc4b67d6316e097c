"""Fault tests on the replicated cluster (``make soak``): three KRaft brokers and a three-node
Cassandra ring of this module's own (``infra.local``, state under
``.qustream/replicated-test``, ports found free at start), replication factor 3,
``min.insync.replicas`` 2, LOCAL_QUORUM.

- the leader broker of ``chain.consensus``, then of ``chain.blocks``, is killed (``kill -9``)
  while four validators finalize: the chain goes on while it is down, with no gap, no fork and
  nothing finalized lost; the longest pause between two finalized blocks is reported;
- a Cassandra node is killed during 10,000 user commands: projection writes and quorum reads go
  on, the projection equals the fold of the log, and the node, restarted, catches up from the
  others' hints (checked by reading everything at ONE through that node alone);
- the brokers holding the transaction coordinators of the tally and of the user command
  handler are killed: nothing is applied twice, nothing lost;
- a producer facing ``NOT_ENOUGH_REPLICAS`` keeps its records until the ISR is back: each is
  written exactly once, in order.

Services must ride through (none is restarted); every kill is followed by a restart of the
node, and each test starts with every node up and in sync. Every wait is bounded.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import WhiteListRoundRobinPolicy
from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from bench.failover import FinalizedLog, integrity, longest_pause_ms
from infra.local import LocalCluster
from infra.local.config import kafka_failover_bound_ms
from infra.local.faults import (
    free_port_block,
    group_coordinator,
    partition_leader,
    transaction_coordinator,
    wait_in_sync,
)
from services.shard_writer.consistency import (
    check_log,
    diff_projection,
    end_positions,
    expected_views,
    read_events,
)
from services.shard_writer.core import Command, command_to_record
from services.shard_writer.queries import UserQueries
from services.shard_writer.store import StoreError, connect, create_schema, drop_keyspace
from streams.admin import ensure_topics
from streams.codec import default_codec
from streams.settings import CassandraSettings, InfraSettings, KafkaSettings, Settings
from tests.conftest import REPO_ROOT
from tests.integration.test_chain_e2e import Network, network_factory, verify_chain
from tests.integration.test_users_pipeline import (
    Service,
    handler_caught_up,
    queries_for,
    wait_until,
)
from tests.support.raw_kafka import raw_admin, raw_consumer, raw_producer
from tests.support.workload import make_workload

pytestmark = pytest.mark.integration
__all__ = ["network_factory"]  # the fixture, re-exported for pytest

STATE_DIR = REPO_ROOT / ".qustream" / "replicated-test"
RING = ("127.0.0.1", "127.0.0.2", "127.0.0.3")


@pytest.fixture(scope="module")
def replicated(embedded_state_dir: Path) -> Iterator[LocalCluster]:
    """The replicated cluster, fresh for this module, stopped at its end."""
    # Below the single-node test clusters (28000+) and the ephemeral range, per checkout.
    start = 20000 + 20 * (zlib.crc32(str(STATE_DIR).encode()) % 300)
    kafka_port = free_port_block(6, start=start)
    cassandra_port = free_port_block(2, RING, start=kafka_port + 6)
    infra = InfraSettings(kafka_brokers=3, cassandra_nodes=3, replicated_kafka_port=kafka_port,
                          replicated_cassandra_native_port=cassandra_port,
                          replicated_cassandra_storage_port=cassandra_port + 1,
                          start_timeout_s=420)
    cluster = LocalCluster(Settings(state_dir=STATE_DIR, infra=infra,
                                    kafka=KafkaSettings(bootstrap_servers=None),
                                    cassandra=CassandraSettings(contact_points=None)),
                           jars_from=embedded_state_dir)
    cluster.reset()
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()


@pytest.fixture
def healthy(replicated: LocalCluster) -> Iterator[LocalCluster]:
    """Every node up and in sync before the test; killed nodes restarted after it."""
    replicated.up()
    wait_in_sync(replicated, timeout_s=300)
    try:
        yield replicated
    finally:
        replicated.up()


@pytest.fixture
def settings(healthy: LocalCluster, tmp_path: Path) -> Settings:
    """Overrides the session fixture: fresh topics and keyspace on the replicated cluster."""
    hosts, port = healthy.settings.cassandra_endpoint()
    suffix = uuid.uuid4().hex[:8]
    return Settings(
        state_dir=tmp_path, topic_prefix=f"r{suffix}.",
        kafka=KafkaSettings(bootstrap_servers=healthy.kafka_bootstrap, replication_factor=3),
        cassandra=CassandraSettings(contact_points=",".join(hosts), port=port,
                                    keyspace=f"ks_{suffix}", replication_factor=3))


def _report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n[replicated] {line}", flush=True)


def _rode_through(network: Network) -> None:
    restarted = {s.name: s.restarts for s in network.supervisor.status() if s.restarts}
    assert not restarted, f"services restarted instead of riding through: {restarted}"


def _chain_intact(network: Network, log: FinalizedLog) -> None:
    """Nothing finalized lost, no height twice, no gap; every block re-verified from genesis
    (hash links, certificates, state hashes: no fork)."""
    final = FinalizedLog(network.settings)
    try:
        final.poll(5)
    finally:
        final.close()
    assert integrity(log.records, final.records) == {"lost": 0, "duplicated": 0, "gaps": 0}
    verify_chain(network, len(final.records))


# --- (a) partition leaders die under the chain ------------------------------------------------

def test_chain_finalizes_through_leader_kills(healthy: LocalCluster, settings: Settings,
                                              network_factory: Callable[..., Network],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    network = network_factory(validators=4, interval_ms=300, sources=1)
    tick = network.supervisor.tick
    log = FinalizedLog(settings)
    pauses: dict[str, tuple[int, int]] = {}
    try:
        assert log.wait_for(5, 240, tick), network.log("tally")
        for topic in ("chain.consensus", "chain.blocks"):
            before = len(log.records)
            leader = partition_leader(healthy.kafka_bootstrap, settings.topic(topic))
            healthy.kill(f"kafka-{leader}")
            # No halt: five more blocks are finalized while the old leader is still dead.
            assert log.wait_for(before + 5, 180, tick), (topic, network.log("tally"))
            assert healthy.status(("kafka",))[leader - 1].state == "dead"
            window = log.records[before - 1:]
            pauses[f"{topic} (kafka-{leader})"] = (longest_pause_ms(window),
                                                   longest_pause_ms(window, log_time=True))
            healthy.up(("kafka",))
            wait_in_sync(healthy, ("kafka",), 180)
        assert log.wait_for(len(log.records) + 3, 120, tick)
    finally:
        network.supervisor.stop(grace_s=10)
        log.poll(3)
        log.close()
    _rode_through(network)
    _chain_intact(network, log)
    _report(capsys, f"longest pause between finalized blocks (as read, by log time) after "
                    f"killing the leader of {pauses} ms (election bound "
                    f"{kafka_failover_bound_ms()} ms)")


# --- (b) a Cassandra node dies under 10,000 user commands --------------------------------------

class _PacedCommands:
    """Produces the workload in order at about ``per_second`` commands, in a thread."""

    def __init__(self, settings: Settings, commands: list[Command], per_second: int) -> None:
        self.settings, self.commands, self.per_second = settings, commands, per_second
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            overrides: dict[str, Any] = {"linger.ms": 20}
            producer = raw_producer(self.settings, **overrides)
            codec = default_codec()
            topic = self.settings.topic("users.commands")
            step = max(1, self.per_second // 10)
            for index, command in enumerate(self.commands):
                producer.produce(topic, key=command.user_id.encode(), value=codec.encode(
                    "UserCommandIssued", command_to_record(command)))
                producer.poll(0)
                if index % step == step - 1:
                    time.sleep(0.1)
            if producer.flush(120) != 0:
                raise AssertionError("commands left unacknowledged")
        except BaseException as exc:  # reported by done()
            self.error = exc

    def done(self) -> bool:
        if self.error is not None:
            raise AssertionError(f"producing commands failed: {self.error}")
        return not self.thread.is_alive()


class _Reader:
    """Reads random users at LOCAL_QUORUM in a thread, counting answers and failures."""

    def __init__(self, queries: UserQueries, users: list[str]) -> None:
        self.queries, self.users = queries, users
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        rng = random.Random(5)
        while not self._stop.wait(0.02):
            try:
                self.queries.get_user(rng.choice(self.users))
                self.ok += 1
            except StoreError as exc:
                self.failed.append(str(exc))

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(30)


def _applied(queries: UserQueries) -> int:
    return sum(queries.positions().values())


def _read_at_one_through(host: str, port: int, settings: Settings) -> UserQueries:
    """Queries served by ``host`` alone at ONE: with the ring's snitch (local replica first, no
    dynamic snitch) and replication 3, that node answers from its own data."""
    profile = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([host]),
                               request_timeout=30)
    cluster = Cluster([host], port=port, protocol_version=5,
                      execution_profiles={EXEC_PROFILE_DEFAULT: profile})
    queries = queries_for(settings, cluster.connect())
    for name in queries.statements.__dataclass_fields__:
        getattr(queries.statements, name).consistency_level = ConsistencyLevel.ONE
    return queries


def test_cassandra_node_dies_under_ten_thousand_commands(
        healthy: LocalCluster, settings: Settings, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    ensure_topics(settings)
    cluster, session = connect(settings)
    keyspace = settings.cassandra.keyspace
    create_schema(session, keyspace, replication_factor=3)
    workload = make_workload(100, 10_000, seed=31)
    # Default session timeouts (30 s for these static members): above a coordinator failover.
    handler = Service(settings, "services.shard_writer.handler", ["--instance-id", "0"],
                      tmp_path / "handler.log")
    writer = Service(settings, "services.shard_writer.projection",
                     ["--instance-id", "sw0", "--max-batch", "500"], tmp_path / "writer.log")
    queries = queries_for(settings, session)
    victim = healthy.node("cassandra-1")  # the seed and first contact point: the harsh case
    handler.start()
    writer.start()
    producer = _PacedCommands(settings, workload.commands, per_second=250)
    reader = _Reader(queries, sorted(workload.users))
    one: UserQueries | None = None

    def alive() -> None:
        producer.done()
        for service in (handler, writer):
            assert service.alive(), f"{service.module} died: {service.log.read_text()[-3000:]}"

    try:
        wait_until(lambda: _applied(queries) >= 2_000, 300, "2,000 events projected", alive)
        healthy.kill(victim.name)
        killed_at = _applied(queries)
        reads_before = reader.ok
        wait_until(lambda: _applied(queries) >= killed_at + 2_000, 300,
                   "2,000 more events projected with a node down", alive)
        assert healthy.status(("cassandra",))[0].state == "dead"
        assert reader.ok > reads_before, "no read was answered while the node was down"
        healthy.up(("cassandra",))
        wait_until(producer.done, 300, "every command produced", alive)
        wait_until(handler_caught_up(settings), 300, "the handler to apply every command", alive)
        logged = read_events(settings)
        queries.wait_for_positions(end_positions(logged), timeout_s=300)
        alive()
        wait_in_sync(healthy, ("cassandra",), 300)  # hints replayed to the restarted node
        reader.stop()
        assert reader.failed == [], reader.failed[:5]
        assert check_log(logged) == []
        by_user: dict[str, list[str]] = {}
        for item in logged:
            by_user.setdefault(item.event.user_id, []).append(item.event.command_id)
        assert by_user == {u: ids for u, ids in workload.accepted.items() if ids}
        expected = expected_views(logged)
        assert diff_projection(expected, queries) == []
        one = _read_at_one_through(victim.host, victim.port, settings)
        assert diff_projection(expected, one) == [], "the restarted node did not catch up"
        _report(capsys, f"{len(logged)} events, {reader.ok} quorum reads, none failed; "
                        f"{victim.name} killed at {killed_at} events and caught up by hints")
    finally:
        reader.stop()
        handler.stop()
        writer.stop()
        if one is not None:
            one.session.cluster.shutdown()
        drop_keyspace(session, keyspace)
        cluster.shutdown()


# --- (c) transaction coordinators move -----------------------------------------------------

def _commands_committed(settings: Settings) -> int:
    """Command offsets the handler committed (in its transactions): its progress, counting
    committed transactions only; -1 while the group coordinator does not answer."""
    topic = settings.topic("users.commands")
    consumer = raw_consumer(settings, settings.topic("users.handler"))
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions],
                                       timeout=10)
        return sum(max(tp.offset, 0) for tp in committed)
    except KafkaException:
        return -1
    finally:
        consumer.close()


def _described_coordinator(settings: Settings, group: str) -> int:
    admin = raw_admin(settings)  # referenced until the future is done
    return int(admin.describe_consumer_groups([group])[group].result(30).coordinator.id)


def _more_commands(settings: Settings, than: int,
                   producer: _PacedCommands) -> Callable[[], bool]:
    """The handler committed past ``than``, or the workload ended and it applied it all."""
    caught_up = handler_caught_up(settings)
    return lambda: _commands_committed(settings) > than or (producer.done() and caught_up())


def test_transaction_coordinators_move_and_nothing_is_applied_twice(
        healthy: LocalCluster, settings: Settings, network_factory: Callable[..., Network],
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    network = network_factory(validators=4, interval_ms=300, sources=1)
    tick = network.supervisor.tick
    workload = make_workload(60, 6_000, seed=23, seal=False)
    handler = Service(settings, "services.shard_writer.handler",
                      ["--instance-id", "0", "--max-batch", "50"], tmp_path / "handler.log")
    log = FinalizedLog(settings)
    bootstrap = healthy.kafka_bootstrap
    killed: list[str] = []

    def alive() -> None:
        tick()
        producer.done()
        assert handler.alive(), f"the handler died: {handler.log.read_text()[-3000:]}"

    try:
        assert log.wait_for(3, 240, tick), network.log("tally")
        handler.start()
        # About 150 s of commands: both kills and restarts happen while they flow.
        producer = _PacedCommands(settings, workload.commands, per_second=40)
        wait_until(_more_commands(settings, 200, producer), 180, "the handler to start",
                   alive)
        group = settings.topic("users.handler")
        # The coordinator placement computed as Kafka does (Java hash of the id) agrees with
        # what the brokers say for the handler's group: so it finds transaction coordinators.
        assert group_coordinator(bootstrap, group) == _described_coordinator(settings, group)
        coordinators: dict[str, Callable[[], int]] = {
            "the tally's transactions": lambda: transaction_coordinator(
                bootstrap, f"{settings.topic_prefix}tally.0"),
            "the handler's transactions": lambda: transaction_coordinator(
                bootstrap, f"{group}.0"),
            "the handler's group": lambda: group_coordinator(bootstrap, group),
        }
        for role, find in coordinators.items():
            broker = find()
            blocks, commands = len(log.records), _commands_committed(settings)
            healthy.kill(f"kafka-{broker}")
            killed.append(f"kafka-{broker} ({role})")
            # The tally commits through the move: three blocks while the broker is down.
            assert log.wait_for(blocks + 3, 180, alive), network.log("tally")
            # The handler's offsets go to its group coordinator, which librdkafka may keep
            # waiting for until its broker is back (issues 5511, 5456): restart it within the
            # handler's transaction timeout, then see the handler commit again.
            healthy.up(("kafka",))
            wait_in_sync(healthy, ("kafka",), 180)
            wait_until(_more_commands(settings, commands + 100, producer), 180,
                       "the handler to commit again", alive)
        wait_until(producer.done, 300, "every command produced", alive)
        wait_until(handler_caught_up(settings), 300, "the handler to apply every command",
                   alive)
    except BaseException:
        handler_log = handler.log.read_text() if handler.log.exists() else ""
        print(f"handler log:\n{handler_log[-5000:]}\ntally log:\n"
              f"{network.log('tally')}")  # shown by pytest with the failure
        raise
    finally:
        handler.stop()
        network.supervisor.stop(grace_s=10)
        log.poll(3)
        log.close()
    _rode_through(network)
    _chain_intact(network, log)
    logged = read_events(settings)
    assert check_log(logged) == [], "a command applied twice or a version skipped"
    by_user: dict[str, list[str]] = {}
    for item in logged:
        by_user.setdefault(item.event.user_id, []).append(item.event.command_id)
    assert by_user == {u: ids for u, ids in workload.accepted.items() if ids}
    replaced = handler.log.read_text().count("replacing the transactional producer")
    _report(capsys, f"killed {killed}; {len(log.records)} blocks and {len(logged)} events, "
                    f"each exactly once; the handler replaced a stuck producer {replaced} times")


# --- (d) NOT_ENOUGH_REPLICAS ------------------------------------------------------------------

def _isr(settings: Settings, topic: str) -> list[int]:
    meta = raw_admin(settings).list_topics(topic, timeout=30).topics[topic]
    return list(meta.partitions[0].isrs)


def _set_min_isr(settings: Settings, topic: str, value: int) -> None:
    resource = ConfigResource("topic", topic, incremental_configs=[ConfigEntry(
        "min.insync.replicas", str(value), incremental_operation=AlterConfigOpType.SET)])
    admin = raw_admin(settings)  # referenced until the futures are done
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)


def test_producer_keeps_records_through_not_enough_replicas(healthy: LocalCluster,
                                                            settings: Settings) -> None:
    ensure_topics(settings)
    topic = settings.topic("chain.consensus")
    leader = partition_leader(healthy.kafka_bootstrap, topic)
    follower = next(i for i in (1, 2, 3) if i != leader)
    healthy.kill(f"kafka-{follower}")
    wait_until(lambda: len(_isr(settings, topic)) == 2, 60, "the ISR to shrink to 2")
    _set_min_isr(settings, topic, 3)  # two in sync, three required: NOT_ENOUGH_REPLICAS
    time.sleep(2)  # the brokers apply the new config from the metadata log
    delivered: list[int] = []
    errors: list[Any] = []

    def on_delivery(error: Any, message: Any) -> None:
        if error is not None:
            errors.append(error)
        else:
            delivered.append(int(message.value()))

    overrides: dict[str, Any] = {"linger.ms": 0}
    producer = raw_producer(settings, **overrides)
    for index in range(200):
        producer.produce(topic, value=str(index).encode(), on_delivery=on_delivery)
    assert producer.flush(8) > 0, "records were acknowledged with too few in-sync replicas"
    assert delivered == [] and errors == []
    healthy.up(("kafka",))  # the follower returns to the ISR: the held records go through
    assert producer.flush(180) == 0, "records still unacknowledged after the ISR recovered"
    assert errors == [] and delivered == list(range(200))
    _set_min_isr(settings, topic, 2)
    consumer = raw_consumer(settings, f"check-{uuid.uuid4().hex[:8]}")
    values: list[int] = []
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 60
        while len(values) < 200 and time.monotonic() < deadline:
            values.extend(int(m.value() or b"") for m in consumer.consume(500, 1.0)
                          if m.error() is None)
        values.extend(int(m.value() or b"") for m in consumer.consume(500, 2.0)
                      if m.error() is None)
    finally:
        consumer.close()
    assert values == list(range(200)), "a record lost, repeated or reordered"
