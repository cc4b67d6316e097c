"""Typed settings for every QuStream process.

Values come, in increasing priority, from the defaults below, an optional TOML config file
(``QUSTREAM_CONFIG`` or ``--config``) with ``[kafka]``, ``[cassandra]``, ``[infra]`` and top-level
keys, and environment variables with the ``QUSTREAM_`` prefix:

- ``QUSTREAM_KAFKA_BOOTSTRAP_SERVERS`` (``QUSTREAM_KAFKA_*`` for TLS/SASL) — when set, QuStream
  uses that cluster and starts no local Kafka;
- ``QUSTREAM_CASSANDRA_CONTACT_POINTS`` (``QUSTREAM_CASSANDRA_*``) — likewise for Cassandra;
- ``QUSTREAM_INFRA_*`` — ports and heap of the embedded cluster, and its size
  (``QUSTREAM_INFRA_KAFKA_BROKERS`` / ``QUSTREAM_INFRA_CASSANDRA_NODES``: 1 by default, 3 for the
  replicated cluster, whose replication factors then follow the cluster size);
- ``QUSTREAM_STATE_DIR``, ``QUSTREAM_TOPIC_PREFIX``.

An unknown key or section in the file, or a bad value anywhere, is a ``SettingsError`` that
names it in one line. ``kafka_origin`` / ``cassandra_origin`` say which setting chose an address,
so an unreachable server can be reported with the knob that points at it.

Nothing here connects anywhere: settings are plain data handed to factory functions.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from protocol.errors import InputError

MAX_NODES = 9  # Cassandra nodes take 127.0.0.1-9; brokers a block of 2 ports each

# A replication factor of 3 survives one node down while a quorum (2) still acknowledges.
REPLICATION_CAP = 3


class SettingsError(InputError):
    """The configuration file or an environment variable holds a value QuStream cannot use."""


class KafkaSettings(BaseSettings):
    """How to reach Kafka. ``bootstrap_servers`` unset means: use the embedded local broker."""

    model_config = SettingsConfigDict(env_prefix="QUSTREAM_KAFKA_", extra="forbid")

    bootstrap_servers: str | None = None
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    sasl_mechanism: str | None = None  # e.g. SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    replication_factor: int = 1  # 3 in production (see the Helm chart)
    # Where keyed records go: murmur2 is Java's default partitioner (every Java, Streams or
    # Connect producer agrees with us); consistent_random (CRC32) is librdkafka's default and
    # what releases before issue 14 used: only for deployments that have not migrated their
    # keyed topics yet (docs/kafka-interop.md).
    partitioner: Literal["murmur2_random", "consistent_random"] = "murmur2_random"
    # How long a new client waits for the cluster to answer before giving up with an error
    # naming the address (librdkafka itself would retry forever, logging every attempt).
    connect_timeout_s: float = Field(default=15.0, gt=0)

    def client_config(self) -> dict[str, Any]:
        """librdkafka properties for the connection part (servers, TLS, SASL)."""
        if not self.bootstrap_servers:
            raise SettingsError("no Kafka bootstrap servers configured and none resolved")
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
        }
        config.update({k: v for k, v in optional.items() if v is not None})
        return config


class CassandraSettings(BaseSettings):
    """How to reach Cassandra. ``contact_points`` unset means: use the embedded local node."""

    model_config = SettingsConfigDict(env_prefix="QUSTREAM_CASSANDRA_", extra="forbid")

    contact_points: str | None = None  # comma-separated hosts
    port: int = 9042
    username: str | None = None
    password: str | None = None
    local_datacenter: str = "datacenter1"
    keyspace: str = "qustream"
    replication_factor: int = 1
    ssl_ca_location: str | None = None
    connect_timeout_s: float = Field(default=10.0, gt=0)  # per connection attempt of the driver

    def hosts(self) -> list[str]:
        if not self.contact_points:
            raise SettingsError("no Cassandra contact points configured and none resolved")
        return [h.strip() for h in self.contact_points.split(",") if h.strip()]


class InfraSettings(BaseSettings):
    """The embedded cluster: ports chosen to stay clear of the standard ones.

    ``kafka_brokers`` / ``cassandra_nodes`` = 1 is the single-node development cluster on the
    ports above. More than one is the replicated cluster, which has its own state folders and
    ports so it never meets the single-node one: broker ``i`` (1-based) of ``kafka_brokers``
    listens on ``replicated_kafka_port + 2(i-1)`` with its controller on the port after it;
    Cassandra node ``i`` listens on ``127.0.0.i`` (Linux routes all of 127/8 to the loopback
    interface) with the same native and storage ports on every address.
    """

    model_config = SettingsConfigDict(env_prefix="QUSTREAM_INFRA_", extra="forbid")

    kafka_version: str = "4.1.1"
    cassandra_version: str = "5.0.8"
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    cassandra_native_port: int = 19042
    cassandra_storage_port: int = 17000
    kafka_heap: str = "768m"
    cassandra_heap: str = "1g"
    java_home: str | None = None  # a Java 17 home; found on PATH or /usr/lib/jvm otherwise
    start_timeout_s: float = 240.0
    kafka_brokers: int = Field(default=1, ge=1, le=MAX_NODES)
    cassandra_nodes: int = Field(default=1, ge=1, le=MAX_NODES)
    replicated_kafka_port: int = 19192
    replicated_cassandra_native_port: int = 19142
    replicated_cassandra_storage_port: int = 17100
    # Six JVMs on a two-core, 24 GiB machine beside other work: small heaps.
    replicated_kafka_heap: str = "448m"
    replicated_cassandra_heap: str = "768m"

    @field_validator("kafka_port", "kafka_controller_port", "cassandra_native_port",
                     "cassandra_storage_port", "replicated_cassandra_native_port",
                     "replicated_cassandra_storage_port")
    @classmethod
    def _port_range(cls, value: int) -> int:
        if not 1024 <= value <= 65535:
            raise ValueError(f"port {value} is outside 1024..65535")
        return value

    @field_validator("replicated_kafka_port")
    @classmethod
    def _port_block(cls, value: int) -> int:
        if not 1024 <= value <= 65535 - 2 * MAX_NODES:
            raise ValueError(f"port {value} leaves no room for {MAX_NODES} brokers below 65536")
        return value

    def kafka_broker_ports(self) -> list[tuple[int, int]]:
        """(client port, controller port) of every embedded broker, node 1 first."""
        if self.kafka_brokers == 1:
            return [(self.kafka_port, self.kafka_controller_port)]
        base = self.replicated_kafka_port
        return [(base + 2 * i, base + 2 * i + 1) for i in range(self.kafka_brokers)]

    def cassandra_hosts(self) -> list[str]:
        """The loopback address of every embedded Cassandra node, node 1 (the seed) first."""
        return [f"127.0.0.{i}" for i in range(1, self.cassandra_nodes + 1)]

    def cassandra_ports(self) -> tuple[int, int]:
        """(native port, storage port) of the embedded Cassandra nodes."""
        if self.cassandra_nodes == 1:
            return self.cassandra_native_port, self.cassandra_storage_port
        return self.replicated_cassandra_native_port, self.replicated_cassandra_storage_port


class Settings(BaseModel):
    """Everything a QuStream process is configured with."""

    state_dir: Path = Path(".qustream")
    topic_prefix: str = "qs."
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    cassandra: CassandraSettings = Field(default_factory=CassandraSettings)
    infra: InfraSettings = Field(default_factory=InfraSettings)

    @model_validator(mode="after")
    def _replication_follows_the_embedded_cluster(self) -> Settings:
        """On the embedded replicated cluster, topics and the keyspace are replicated to
        min(3, nodes) unless a replication factor was configured explicitly."""
        if (not self.uses_external_kafka and self.infra.kafka_brokers > 1
                and "replication_factor" not in self.kafka.model_fields_set):
            self.kafka = self.kafka.model_copy(update={
                "replication_factor": min(REPLICATION_CAP, self.infra.kafka_brokers)})
        if (not self.uses_external_cassandra and self.infra.cassandra_nodes > 1
                and "replication_factor" not in self.cassandra.model_fields_set):
            self.cassandra = self.cassandra.model_copy(update={
                "replication_factor": min(REPLICATION_CAP, self.infra.cassandra_nodes)})
        return self

    @property
    def uses_external_kafka(self) -> bool:
        return bool(self.kafka.bootstrap_servers)

    @property
    def uses_external_cassandra(self) -> bool:
        return bool(self.cassandra.contact_points)

    def kafka_bootstrap(self) -> str:
        """The configured bootstrap servers, or the embedded brokers' loopback addresses."""
        if self.kafka.bootstrap_servers:
            return self.kafka.bootstrap_servers
        return ",".join(f"127.0.0.1:{port}" for port, _ in self.infra.kafka_broker_ports())

    def kafka_config(self) -> dict[str, Any]:
        """librdkafka connection properties (servers, TLS, SASL), embedded broker resolved."""
        return self.kafka.model_copy(
            update={"bootstrap_servers": self.kafka_bootstrap()}
        ).client_config()

    def cassandra_endpoint(self) -> tuple[list[str], int]:
        """Contact points and native port, or the embedded nodes' loopback addresses."""
        if self.cassandra.contact_points:
            return self.cassandra.hosts(), self.cassandra.port
        return self.infra.cassandra_hosts(), self.infra.cassandra_ports()[0]

    def to_env(self) -> dict[str, str]:
        """``QUSTREAM_*`` variables that give a child process these same settings (the demo's
        services and the tests' service processes are configured this way)."""
        env = {
            "QUSTREAM_KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap(),
            "QUSTREAM_KAFKA_REPLICATION_FACTOR": str(self.kafka.replication_factor),
            "QUSTREAM_TOPIC_PREFIX": self.topic_prefix,
            "QUSTREAM_STATE_DIR": str(self.state_dir),
            "QUSTREAM_KAFKA_PARTITIONER": self.kafka.partitioner,
        }
        if self.cassandra.contact_points or self.infra.cassandra_nodes > 1:
            hosts, port = self.cassandra_endpoint()
            env.update({
                "QUSTREAM_CASSANDRA_CONTACT_POINTS": ",".join(hosts),
                "QUSTREAM_CASSANDRA_PORT": str(port),
                "QUSTREAM_CASSANDRA_KEYSPACE": self.cassandra.keyspace,
                "QUSTREAM_CASSANDRA_LOCAL_DATACENTER": self.cassandra.local_datacenter,
                "QUSTREAM_CASSANDRA_REPLICATION_FACTOR": str(self.cassandra.replication_factor),
            })
        return env

    def topic(self, name: str) -> str:
        """Full topic name for a catalogue name such as ``chain.blocks``."""
        return f"{self.topic_prefix}{name}"

    def kafka_origin(self) -> str:
        """Which setting chose the Kafka address (for errors that say what was unreachable)."""
        if not self.kafka.bootstrap_servers:
            return (f"the embedded broker's port, QUSTREAM_INFRA_KAFKA_PORT="
                    f"{self.infra.kafka_port}, since QUSTREAM_KAFKA_BOOTSTRAP_SERVERS is unset; "
                    "start it with `qustream infra up`")
        return _origin("QUSTREAM_KAFKA_BOOTSTRAP_SERVERS", "kafka", "bootstrap_servers",
                       self.kafka.bootstrap_servers)

    def cassandra_origin(self) -> str:
        """Which setting chose the Cassandra address (see ``kafka_origin``)."""
        if not self.cassandra.contact_points:
            return (f"the embedded node's port, QUSTREAM_INFRA_CASSANDRA_NATIVE_PORT="
                    f"{self.infra.cassandra_native_port}, since QUSTREAM_CASSANDRA_CONTACT_POINTS "
                    "is unset; start it with `qustream infra up`")
        origin = _origin("QUSTREAM_CASSANDRA_CONTACT_POINTS", "cassandra", "contact_points",
                         self.cassandra.contact_points)
        if os.environ.get("QUSTREAM_CASSANDRA_PORT") == str(self.cassandra.port):
            origin += " (port: QUSTREAM_CASSANDRA_PORT)"
        return origin


def _origin(variable: str, section: str, key: str, value: str) -> str:
    """The environment variable or config file entry that holds ``value``, by comparison (the
    settings object may have been built or copied in code, so nothing is recorded)."""
    if os.environ.get(variable) == value:
        return variable
    path = os.environ.get("QUSTREAM_CONFIG")
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError):
            data = {}
        if dict(data.get(section, {})).get(key) == value:
            return f"{key} under [{section}] in {path}"
    return f"{section}.{key} of the settings in use"


_SECTIONS: dict[str, type[BaseSettings]] = {
    "kafka": KafkaSettings, "cassandra": CassandraSettings, "infra": InfraSettings,
}
_TOP_LEVEL = ("state_dir", "topic_prefix")


def _one_line(exc: ValidationError, where: str, section: str = "", prefix: str = "QUSTREAM_"
              ) -> str:
    """A pydantic validation error as one line: each setting (the variable when one is set,
    else the file entry) with what is wrong with it."""
    parts = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ())]
        variable = f"{prefix}{loc[0]}".upper() if loc else ""
        if variable and variable in os.environ:
            name = variable
        elif loc:
            name = f"{'.'.join(loc)} under [{section}]" if section else ".".join(loc)
        else:
            name = ""
        message = "unknown setting (misspelt?)" if error.get("type") == "extra_forbidden" \
            else str(error.get("msg", "invalid"))
        parts.append(f"{name}: {message}" if name else message)
    return f"invalid QuStream settings{where}: {'; '.join(parts)}"


def _check_keys(data: dict[str, Any], path: str) -> None:
    """Unknown top-level keys or sections in the config file are errors, not silently unused."""
    unknown = [key for key, value in data.items()
               if (key not in _SECTIONS if isinstance(value, dict) else key not in _TOP_LEVEL)]
    if unknown:
        known = ", ".join([*_TOP_LEVEL, *(f"[{name}]" for name in _SECTIONS)])
        raise SettingsError(f"invalid QuStream settings in {path}: unknown "
                            f"{'entries' if len(unknown) > 1 else 'entry'} "
                            f"{', '.join(sorted(unknown))} (misspelt?); known: {known}")


def load_settings(config_file: Path | str | None = None) -> Settings:
    """Build settings from the config file (if any) overlaid by ``QUSTREAM_*`` variables."""
    path = config_file or os.environ.get("QUSTREAM_CONFIG")
    data: dict[str, Any] = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read config file {path}: {exc}") from exc
        _check_keys(data, str(path))
    where = f" (config file {path} and QUSTREAM_* variables)" if path else \
        " (QUSTREAM_* variables)"
    try:
        # Environment wins over the file: BaseSettings gives init kwargs priority, so pass
        # only the file keys that no QUSTREAM_ variable overrides.
        def section(cls: type[BaseSettings], name: str) -> BaseSettings:
            prefix = str(cls.model_config.get("env_prefix", ""))
            values = {k: v for k, v in dict(data.get(name, {})).items()
                      if f"{prefix}{k}".upper() not in os.environ}
            try:
                return cls(**values)
            except ValidationError as exc:
                raise SettingsError(_one_line(exc, where, name, prefix)) from exc

        top = {k: v for k, v in data.items() if not isinstance(v, dict)}
        for key in ("state_dir", "topic_prefix"):
            env = os.environ.get(f"QUSTREAM_{key.upper()}")
            if env is not None:
                top[key] = env
        return Settings(
            kafka=section(KafkaSettings, "kafka"),  # type: ignore[arg-type]
            cassandra=section(CassandraSettings, "cassandra"),  # type: ignore[arg-type]
            infra=section(InfraSettings, "infra"),  # type: ignore[arg-type]
            **top,
        )
    except SettingsError:
        raise
    except ValidationError as exc:
        raise SettingsError(_one_line(exc, where)) from exc
    except ValueError as exc:
        raise SettingsError(f"invalid QuStream settings{where}: {exc}") from exc
