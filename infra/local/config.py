"""Pure rendering of the embedded servers' files and command lines (no I/O, unit-tested).

Every listener binds to 127.0.0.1 only: the embedded cluster is a development tool and must never
be reachable from the network.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"
KAFKA_MAIN = "kafka.Kafka"
KAFKA_STORAGE_TOOL = "kafka.tools.StorageTool"
CASSANDRA_MAIN = "org.apache.cassandra.service.CassandraDaemon"
COMPONENTS = ("kafka", "cassandra")


@dataclass(frozen=True)
class ComponentLayout:
    """Where one server keeps its jars, data, configuration, log and pid under the state dir."""

    name: str
    home: Path
    libs: Path

    @classmethod
    def under(cls, state_dir: Path, name: str,
              libs_state_dir: Path | None = None) -> ComponentLayout:
        home = state_dir / name
        return cls(name=name, home=home, libs=(libs_state_dir or state_dir) / name / "libs")

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def conf(self) -> Path:
        return self.home / "conf"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def log_file(self) -> Path:
        """The process's stdout and stderr (the log configs below write to the console)."""
        return self.log_dir / f"{self.name}.out"

    @property
    def pid_file(self) -> Path:
        return self.home / f"{self.name}.pid"


def new_kafka_cluster_id(random_bytes: bytes) -> str:
    """A KRaft cluster id: 16 bytes, URL-safe base64 without padding (22 characters)."""
    if len(random_bytes) != 16:
        raise ValueError("a Kafka cluster id is made of exactly 16 bytes")
    return base64.urlsafe_b64encode(random_bytes).decode().rstrip("=")


def fresh_kafka_cluster_id(draw: Callable[[int], bytes]) -> str:
    """A new cluster id from ``draw(16)`` (``secrets.token_bytes``), drawn again while it
    starts with "-": kafka-storage would read "--cluster-id -x..." as a missing value (one id in
    64 did), and Kafka's own ``Uuid.randomUuid`` redraws such ids too."""
    while True:
        cluster_id = new_kafka_cluster_id(draw(16))
        if not cluster_id.startswith("-"):
            return cluster_id


def kafka_server_properties(*, port: int, controller_port: int, data_dir: Path) -> str:
    """server.properties for a single KRaft node that is both broker and controller."""
    return _render_properties(_kafka_single_node_values(
        port=port, controller_port=controller_port, data_dir=data_dir))


# How fast the replicated cluster notices a dead broker and moves its leaderships (see
# docs/replicated-cluster.md for the resulting bound on a pause). A broker that misses its
# heartbeats for broker.session.timeout.ms is fenced by the active controller, which then
# elects new leaders from the in-sync replicas and drops the dead broker from every ISR; if
# the dead broker was also the active controller, the other voters first notice the silence
# (controller.quorum.fetch.timeout.ms) and elect a new one (within
# controller.quorum.election.timeout.ms).
KAFKA_FAILOVER: dict[str, int] = {
    "broker.heartbeat.interval.ms": 500,
    "broker.session.timeout.ms": 3000,
    "controller.quorum.fetch.timeout.ms": 2000,
    "controller.quorum.election.timeout.ms": 1000,
}


def kafka_failover_bound_ms() -> int:
    """The longest a partition can be without a leader after kill -9 of one broker, by the
    settings above: the worst case is the active controller dying with it."""
    return (KAFKA_FAILOVER["controller.quorum.fetch.timeout.ms"]
            + KAFKA_FAILOVER["controller.quorum.election.timeout.ms"]
            + KAFKA_FAILOVER["broker.session.timeout.ms"])


def kafka_replicated_properties(*, node_id: int, ports: list[tuple[int, int]],
                                data_dir: Path) -> str:
    """server.properties for broker ``node_id`` (1-based) of a cluster of ``len(ports)`` KRaft
    nodes, each both broker and controller (a voter of the static controller quorum).

    Internal topics get replication min(3, n) with min.insync.replicas min(2, n), and so do
    topics created without explicit settings; a few partitions each, so the group and
    transaction coordinators are spread over the brokers as in production.
    """
    if not 1 <= node_id <= len(ports):
        raise ValueError(f"node id {node_id} outside 1..{len(ports)}")
    port, controller_port = ports[node_id - 1]
    replication = min(3, len(ports))
    min_isr = min(2, replication)
    values = _kafka_single_node_values(port=port, controller_port=controller_port,
                                       data_dir=data_dir)
    partitions = max(3, len(ports))
    values.update({
        "node.id": node_id,
        "controller.quorum.voters": ",".join(
            f"{index}@{LOOPBACK}:{cport}" for index, (_, cport) in enumerate(ports, start=1)),
        "default.replication.factor": replication,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": replication,
        "offsets.topic.num.partitions": partitions,
        "transaction.state.log.replication.factor": replication,
        "transaction.state.log.min.isr": min_isr,
        "transaction.state.log.num.partitions": partitions,
        "share.coordinator.state.topic.replication.factor": replication,
        "share.coordinator.state.topic.min.isr": min_isr,
        "unclean.leader.election.enable": "false",
        **KAFKA_FAILOVER,
    })
    return _render_properties(values)


def _render_properties(values: dict[str, str | int]) -> str:
    lines = ["# Written by `qustream infra`; edits are overwritten on the next `up`."]
    lines += [f"{key}={value}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _kafka_single_node_values(*, port: int, controller_port: int,
                              data_dir: Path) -> dict[str, str | int]:
    values: dict[str, str | int] = {
        "process.roles": "broker,controller",
        "node.id": 1,
        # A static one-voter quorum: formatting needs no --standalone and no bootstrap voters.
        "controller.quorum.voters": f"1@{LOOPBACK}:{controller_port}",
        "listeners": f"PLAINTEXT://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        # Internal topics: one replica, and few partitions because creating the default 50 on
        # first use costs seconds on two cores.
        "offsets.topic.replication.factor": 1,
        "offsets.topic.num.partitions": 1,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "transaction.state.log.num.partitions": 1,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        "share.coordinator.state.topic.num.partitions": 1,
        "group.initial.rebalance.delay.ms": 0,
        "num.network.threads": 2,
        "num.io.threads": 2,
        "num.recovery.threads.per.data.dir": 1,
        "log.cleaner.threads": 1,
        # The default 128 MiB dedupe buffer would take a sixth of the small heap.
        "log.cleaner.dedupe.buffer.size": 16 * 1024 * 1024,
        # Entropy chunks and blocks may exceed the 1 MiB default.
        "message.max.bytes": 8 * 1024 * 1024,
        "replica.fetch.max.bytes": 8 * 1024 * 1024,
        # Retention is enforced by a periodic check (default every 5 minutes, first run 30 s
        # after start), which adds to how long a record outlives its retention.ms; a few seconds
        # costs nothing on a dev node.
        "log.retention.check.interval.ms": 5000,
        "log.initial.task.delay.ms": 1000,
    }
    return values


def kafka_log4j2_properties() -> str:
    """log4j2 config: INFO to the console, which the launcher redirects to the log file."""
    return "\n".join([
        "status = warn",
        "name = qustream-kafka",
        "appender.console.type = Console",
        "appender.console.name = STDOUT",
        "appender.console.layout.type = PatternLayout",
        "appender.console.layout.pattern = [%d] %p %m (%c)%n",
        "rootLogger.level = INFO",
        "rootLogger.appenderRef.stdout.ref = STDOUT",
        # The per-request controller and state-change chatter drowns the useful lines.
        "logger.controller.name = kafka.controller",
        "logger.controller.level = WARN",
        "logger.statechange.name = state.change.logger",
        "logger.statechange.level = WARN",
        "logger.clients.name = org.apache.kafka.clients",
        "logger.clients.level = WARN",
        "",
    ])


def cassandra_yaml(*, cluster_name: str, native_port: int, storage_port: int,
                   data_root: Path) -> str:
    """cassandra.yaml for a fast-starting single node on loopback (rendered as JSON, which is
    valid YAML, so no YAML quoting rules can bite)."""
    return _render_yaml(_cassandra_single_node_config(
        cluster_name=cluster_name, native_port=native_port, storage_port=storage_port,
        data_root=data_root))


CASSANDRA_DATACENTER = "datacenter1"
CASSANDRA_RACK = "rack1"


def cassandra_ring_token(node_index: int, nodes: int) -> str:
    """Murmur3 token of node ``node_index`` (1-based) in a ring of ``nodes`` with one token
    each: evenly spaced, so every node owns the same share."""
    if not 1 <= node_index <= nodes:
        raise ValueError(f"node {node_index} outside 1..{nodes}")
    return str(-(2**63) + (node_index - 1) * (2**64 // nodes))


def cassandra_ring_yaml(*, cluster_name: str, node_index: int, nodes: int, native_port: int,
                        storage_port: int, data_root: Path) -> str:
    """cassandra.yaml for node ``node_index`` (1-based) of a ring of ``nodes`` on
    127.0.0.1..n, node 1 being the seed.

    Each node gets an evenly spaced single token and does not bootstrap (a brand-new ring has
    no data to stream, and without streaming the nodes can join one after another in seconds).
    GossipingPropertyFileSnitch with one data center and rack, as production uses, and no
    dynamic snitch: a read at ONE through a node that is a replica is served by that node
    itself, which is how the fault tests check that a restarted node caught up.
    """
    address = ring_address(node_index)
    config = _cassandra_single_node_config(
        cluster_name=cluster_name, native_port=native_port, storage_port=storage_port,
        data_root=data_root)
    config.update({
        "initial_token": cassandra_ring_token(node_index, nodes),
        "listen_address": address,
        "rpc_address": address,
        "seed_provider": [{
            "class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
            "parameters": [{"seeds": f"{ring_address(1)}:{storage_port}"}],
        }],
        "auto_bootstrap": False,
        "endpoint_snitch": "GossipingPropertyFileSnitch",
        "dynamic_snitch": False,
        # A node that was down gets the writes it missed replayed from the others' hints
        # (within max_hint_window); the default throttle would replay a test's backlog slowly.
        "hinted_handoff_enabled": True,
        "max_hint_window": "3h",
        "hinted_handoff_throttle": "8MiB",
        "max_hints_delivery_threads": 2,
    })
    return _render_yaml(config)


def cassandra_rackdc_properties() -> str:
    return f"dc={CASSANDRA_DATACENTER}\nrack={CASSANDRA_RACK}\n"


def ring_address(node_index: int) -> str:
    """The loopback address of Cassandra node ``node_index`` (1-based) of the ring."""
    if not 1 <= node_index <= 254:
        raise ValueError(f"node {node_index} has no 127.0.0.x address")
    return f"127.0.0.{node_index}"


def _render_yaml(config: dict[str, object]) -> str:
    header = "# Written by `qustream infra`; edits are overwritten on the next `up`.\n"
    return header + json.dumps(config, indent=2) + "\n"


def _cassandra_single_node_config(*, cluster_name: str, native_port: int, storage_port: int,
                                  data_root: Path) -> dict[str, object]:
    config: dict[str, object] = {
        "cluster_name": cluster_name,
        # One token: a single node needs no vnodes, and token allocation costs start time.
        "num_tokens": 1,
        "initial_token": "0",
        "partitioner": "org.apache.cassandra.dht.Murmur3Partitioner",
        "endpoint_snitch": "SimpleSnitch",
        "seed_provider": [{
            "class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
            "parameters": [{"seeds": f"{LOOPBACK}:{storage_port}"}],
        }],
        "listen_address": LOOPBACK,
        "rpc_address": LOOPBACK,
        "storage_port": storage_port,
        "native_transport_port": native_port,
        "start_native_transport": True,
        "data_file_directories": [str(data_root / "data")],
        "commitlog_directory": str(data_root / "commitlog"),
        "saved_caches_directory": str(data_root / "saved_caches"),
        "hints_directory": str(data_root / "hints"),
        "cdc_raw_directory": str(data_root / "cdc_raw"),
        "commitlog_sync": "periodic",
        "commitlog_sync_period": "10000ms",
        "authenticator": "AllowAllAuthenticator",
        "authorizer": "AllowAllAuthorizer",
        "role_manager": "CassandraRoleManager",
        "auto_snapshot": False,
        "snapshot_before_compaction": False,
        "incremental_backups": False,
        "concurrent_compactors": 1,
        "concurrent_reads": 8,
        "concurrent_writes": 8,
        "concurrent_counter_writes": 8,
        "memtable_heap_space": "64MiB",
        "memtable_offheap_space": "64MiB",
        "key_cache_size": "16MiB",
        "disk_failure_policy": "stop",
        "commit_failure_policy": "stop",
    }
    return config


def cassandra_logback_xml() -> str:
    """logback config: INFO to the console, which the launcher redirects to the log file."""
    return """<configuration scan="false">
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <logger name="org.apache.cassandra" level="INFO"/>
  <logger name="com.datastax" level="WARN"/>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
"""


def classpath(libs: Path) -> str:
    """A JVM wildcard classpath (the JVM expands ``dir/*`` itself)."""
    return f"{libs}/*"


def kafka_jvm_args(*, heap: str, layout: ComponentLayout) -> list[str]:
    return [
        f"-Xms{heap}", f"-Xmx{heap}",
        "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={layout.conf / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={layout.log_dir}",
        "-cp", classpath(layout.libs),
    ]


def kafka_start_command(java: Path, *, heap: str, layout: ComponentLayout) -> list[str]:
    return [str(java), *kafka_jvm_args(heap=heap, layout=layout), KAFKA_MAIN,
            str(layout.conf / "server.properties")]


def kafka_format_command(java: Path, *, layout: ComponentLayout, cluster_id: str) -> list[str]:
    # The storage tool is short-lived: a small heap starts it faster.
    return [str(java), "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            f"-Dlog4j2.configurationFile={layout.conf / 'log4j2.properties'}",
            "-cp", classpath(layout.libs), KAFKA_STORAGE_TOOL, "format",
            "-t", cluster_id, "-c", str(layout.conf / "server.properties"), "--ignore-formatted"]


# From Cassandra 5.0's conf/jvm17-server.options: the modules its internals reach into.
_CASSANDRA_ADD_EXPORTS = (
    "java.base/jdk.internal.misc", "java.management.rmi/com.sun.jmx.remote.internal.rmi",
    "java.rmi/sun.rmi.registry", "java.rmi/sun.rmi.server", "java.sql/java.sql",
    "java.base/java.lang.ref", "jdk.unsupported/sun.misc", "jdk.attach/sun.tools.attach",
    "jdk.compiler/com.sun.tools.javac.file",
)
_CASSANDRA_ADD_OPENS = (
    "java.base/java.lang.module", "java.base/jdk.internal.loader", "java.base/jdk.internal.ref",
    "java.base/jdk.internal.reflect", "java.base/jdk.internal.math",
    "java.base/jdk.internal.module", "java.base/jdk.internal.util.jar",
    "jdk.management/com.sun.management.internal", "java.base/sun.nio.ch", "java.base/java.io",
    "java.base/java.lang.reflect", "java.base/java.lang", "java.base/java.util",
    "java.base/java.nio", "jdk.compiler/com.sun.tools.javac",
)


def cassandra_jvm_args(*, heap: str, layout: ComponentLayout, gc: str = "G1",
                       jamm_jar: Path | None = None, initial_token: str = "0",
                       ring: bool = False) -> list[str]:
    args = [f"-Xms{heap}", f"-Xmx{heap}", "-Xss256k"]
    args += ["-XX:+UseSerialGC"] if gc == "Serial" else ["-XX:+UseG1GC", "-XX:MaxGCPauseMillis=300"]
    args += [
        # A node that ran out of memory may corrupt data if it keeps going; stop it instead.
        "-XX:+ExitOnOutOfMemoryError",
        # No hsperfdata mmap file: it only serves jstat, and costs a disk write per GC.
        "-XX:+PerfDisableSharedMem",
        "-Djava.awt.headless=true",
        "-Djdk.attach.allowAttachSelf=true",
        "-Dio.netty.tryReflectionSetAccessible=true",
        f"-Dcassandra.config=file://{layout.conf / 'cassandra.yaml'}",
        # Without it the daemon closes stdout/stderr and the log file stays empty.
        "-Dcassandra-foreground=yes",
        f"-Dcassandra.storagedir={layout.data}",
        f"-Dcassandra.logdir={layout.log_dir}",
        f"-Dlogback.configurationFile={layout.conf / 'logback.xml'}",
        # Single node: nothing to gossip with, so do not wait for gossip to settle.
        "-Dcassandra.skip_wait_for_gossip_to_settle=0",
        f"-Dcassandra.initial_token={initial_token}",
        "-Dcassandra.superuser_setup_delay_ms=0",
    ]
    if ring:
        args += [
            f"-Dcassandra-rackdc.properties=file://{layout.conf / 'cassandra-rackdc.properties'}",
            # Nodes join with fixed tokens and no streaming: the 30 s default is for
            # bootstrapping strangers, not for a ring that starts one node after another.
            "-Dcassandra.ring_delay_ms=5000",
        ]
    args += [f"--add-exports={module}=ALL-UNNAMED" for module in _CASSANDRA_ADD_EXPORTS]
    args += [f"--add-opens={module}=ALL-UNNAMED" for module in _CASSANDRA_ADD_OPENS]
    if jamm_jar is not None:
        # Lets Cassandra measure object sizes exactly instead of estimating memtable use.
        args.append(f"-javaagent:{jamm_jar}")
    args += ["-cp", classpath(layout.libs)]
    return args


def cassandra_start_command(java: Path, *, heap: str, layout: ComponentLayout, gc: str = "G1",
                            jamm_jar: Path | None = None, initial_token: str = "0",
                            ring: bool = False) -> list[str]:
    return [str(java), *cassandra_jvm_args(heap=heap, layout=layout, gc=gc, jamm_jar=jamm_jar,
                                           initial_token=initial_token, ring=ring),
            CASSANDRA_MAIN]
