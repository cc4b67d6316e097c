"""Pure rendering of the embedded servers' files and command lines (no I/O, unit-tested).

Every listener binds to 127.0.0.1 only: the embedded cluster is a development tool and must never
be reachable from the network.
"""

from __future__ import annotations

import base64
import json
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


def kafka_server_properties(*, port: int, controller_port: int, data_dir: Path) -> str:
    """server.properties for a single KRaft node that is both broker and controller."""
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
    lines = ["# Written by `qustream infra`; edits are overwritten on the next `up`."]
    lines += [f"{key}={value}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


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
    header = "# Written by `qustream infra`; edits are overwritten on the next `up`.\n"
    return header + json.dumps(config, indent=2) + "\n"


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
                       jamm_jar: Path | None = None) -> list[str]:
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
        "-Dcassandra.initial_token=0",
        "-Dcassandra.superuser_setup_delay_ms=0",
    ]
    args += [f"--add-exports={module}=ALL-UNNAMED" for module in _CASSANDRA_ADD_EXPORTS]
    args += [f"--add-opens={module}=ALL-UNNAMED" for module in _CASSANDRA_ADD_OPENS]
    if jamm_jar is not None:
        # Lets Cassandra measure object sizes exactly instead of estimating memtable use.
        args.append(f"-javaagent:{jamm_jar}")
    args += ["-cp", classpath(layout.libs)]
    return args


def cassandra_start_command(java: Path, *, heap: str, layout: ComponentLayout, gc: str = "G1",
                            jamm_jar: Path | None = None) -> list[str]:
    return [str(java), *cassandra_jvm_args(heap=heap, layout=layout, gc=gc, jamm_jar=jamm_jar),
            CASSANDRA_MAIN]
