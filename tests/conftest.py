"""Session-wide fixtures: one Kafka and one Cassandra per test session, fresh names per test.

Where the servers come from, in order of preference:

1. an external cluster, when ``QUSTREAM_KAFKA_BOOTSTRAP_SERVERS`` /
   ``QUSTREAM_CASSANDRA_CONTACT_POINTS`` (or the ``QUSTREAM_CONFIG`` file) name one;
2. testcontainers, only when a Docker engine answers ``ping``;
3. the embedded JVM cluster (``infra.local``) under ``.qustream/test-cluster`` on its own block
   of ports (28000-31999, chosen from the checkout's path or ``QUSTREAM_TEST_PORT_BASE``), so it
   never clashes with a developer's ``qustream infra up`` (19092/19042) or another checkout.

Each server is started lazily by the first test that needs it, Kafka and Cassandra
independently (a Kafka-only test never waits for Cassandra), and a session that starts a server
starts it with no data, as a clean checkout in CI does. The embedded servers are stopped at
the end of the session unless ``QUSTREAM_TEST_KEEP_CLUSTER=1`` — and only when no other pytest
session (another engineer's, in the same tree) still holds a lease on them. When no server can be
started, the fixture fails with the reason: tests never skip for missing infrastructure.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from infra.local import LocalCluster
from infra.local.process import pid_alive
from streams.settings import Settings, SettingsError, load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_CLUSTER_DIR = REPO_ROOT / ".qustream" / "test-cluster"
# Each checkout gets its own block of ports (derived from its path, or QUSTREAM_TEST_PORT_BASE),
# so two checkouts on one machine (a CI copy beside a working tree) never meet on a port.
# 28000-31999 lies below Linux's ephemeral range, so client sockets never take these ports.
_PORT_BASE = int(os.environ.get("QUSTREAM_TEST_PORT_BASE")
                 or 28000 + 10 * (zlib.crc32(str(TEST_CLUSTER_DIR).encode()) % 400))
TEST_PORTS: dict[str, int] = {
    "kafka_port": _PORT_BASE + 2,
    "kafka_controller_port": _PORT_BASE + 3,
    "cassandra_native_port": _PORT_BASE + 4,
    "cassandra_storage_port": _PORT_BASE + 5,
}
KEEP_CLUSTER = os.environ.get("QUSTREAM_TEST_KEEP_CLUSTER", "") == "1"
# The suite runs on the single-node cluster (the replicated fault tests build their own
# settings): a shell that selected the replicated one for `qustream` commands
# (docs/replicated-cluster.md) must not move the tests, or the services they start, onto it.
for _size in ("QUSTREAM_INFRA_KAFKA_BROKERS", "QUSTREAM_INFRA_CASSANDRA_NODES"):
    os.environ.pop(_size, None)
CLUSTER_FIXTURES = frozenset({"kafka_bootstrap", "cassandra_contact", "settings",
                              "cassandra_settings", "cassandra_session"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a cluster fixture as ``integration`` (``-m "not integration"``
    then selects the fast tests), so a forgotten ``pytestmark`` cannot hide a cluster test."""
    for item in items:
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def _uuid8() -> str:
    return uuid.uuid4().hex[:8]


def _docker_available() -> bool:
    try:
        import docker

        return bool(docker.from_env().ping())
    except Exception:  # no engine, no socket, no permission: all mean "not available"
        return False


class _EmbeddedCluster:
    """The embedded test cluster, shared between concurrent pytest sessions through leases.

    A lease is a file named after this session's pid; the last session to leave stops the
    servers. The lease lock also serialises starts, so two sessions never start one server twice.
    """

    def __init__(self, base: Settings) -> None:
        infra = base.infra.model_copy(update=TEST_PORTS)
        # Kafka and Cassandra settings are the defaults (no external servers): this cluster is
        # only used for the parts that are not external.
        self.settings = Settings(state_dir=TEST_CLUSTER_DIR, infra=infra,
                                 kafka=base.kafka.model_copy(update={"bootstrap_servers": None}),
                                 cassandra=base.cassandra.model_copy(
                                     update={"contact_points": None}))
        self.cluster = LocalCluster(self.settings)
        self.leases = TEST_CLUSTER_DIR / "leases"
        self.started: list[str] = []

    @contextlib.contextmanager
    def _lease_lock(self) -> Iterator[None]:
        self.leases.mkdir(parents=True, exist_ok=True)
        with open(TEST_CLUSTER_DIR / ".leases.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def start(self, component: str) -> None:
        with self._lease_lock():
            holders = [lease for lease in self.leases.iterdir()
                       if lease.name.isdigit() and lease.name != str(os.getpid())
                       and pid_alive(int(lease.name))]
            down = not any(s.is_up for s in self.cluster.status((component,)))
            if down and not holders and not KEEP_CLUSTER:
                # A session that starts the server starts it empty, as CI does: every test
                # makes its own topics and keyspaces, and what earlier sessions left piles up
                # (each partition holds open files: a broker kept across runs in one checkout
                # reached its 20,000 descriptors and refused connections).
                self.cluster.reset((component,))
            (self.leases / str(os.getpid())).touch()
            self.cluster.up((component,))
            self.started.append(component)

    def release(self) -> None:
        if not self.started:
            return
        with self._lease_lock():
            (self.leases / str(os.getpid())).unlink(missing_ok=True)
            others = [lease for lease in self.leases.iterdir()
                      if lease.name.isdigit() and pid_alive(int(lease.name))]
            for stale in set(self.leases.iterdir()) - set(others):
                stale.unlink(missing_ok=True)
            if not others and not KEEP_CLUSTER:
                self.cluster.down()


class _Servers:
    """Lazily provides each server from the first source that can serve it."""

    def __init__(self, base: Settings) -> None:
        self.base = base
        self._docker: bool | None = None
        self._embedded: _EmbeddedCluster | None = None
        self._containers: list[Any] = []

    def docker(self) -> bool:
        if self._docker is None:
            self._docker = _docker_available()
        return self._docker

    def embedded(self) -> _EmbeddedCluster:
        if self._embedded is None:
            self._embedded = _EmbeddedCluster(self.base)
        return self._embedded

    def kafka(self) -> str:
        if self.base.uses_external_kafka:
            return self.base.kafka_bootstrap()
        if self.docker():
            try:
                from testcontainers.community.kafka import KafkaContainer
            except ImportError:
                from testcontainers.kafka import KafkaContainer
            container = KafkaContainer().with_kraft()
            container.start()
            self._containers.append(container)
            return str(container.get_bootstrap_server())
        embedded = self.embedded()
        embedded.start("kafka")
        return embedded.cluster.kafka_bootstrap

    def cassandra(self) -> tuple[str, int]:
        if self.base.uses_external_cassandra:
            hosts, port = self.base.cassandra_endpoint()
            return hosts[0], port
        if self.docker():
            try:
                from testcontainers.community.cassandra import CassandraContainer
            except ImportError:
                from testcontainers.cassandra import CassandraContainer
            container = CassandraContainer("cassandra:5.0")
            container.start()
            self._containers.append(container)
            host, port = container.get_contact_points()[0]
            return str(host), int(port)
        embedded = self.embedded()
        embedded.start("cassandra")
        return embedded.cluster.cassandra_contact

    def close(self) -> None:
        for container in self._containers:
            with contextlib.suppress(Exception):
                container.stop()
        if self._embedded is not None:
            self._embedded.release()


@pytest.fixture(scope="session")
def _base_settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        pytest.fail(f"QuStream settings are invalid, so no test cluster can be chosen: {exc}")


@pytest.fixture(scope="session")
def _servers(_base_settings: Settings) -> Iterator[_Servers]:
    servers = _Servers(_base_settings)
    try:
        yield servers
    finally:
        servers.close()


def _fail_to_start(what: str, exc: Exception) -> NoReturn:
    pytest.fail(
        f"{what} could not be started for the tests, and tests never skip for missing "
        f"infrastructure. Set QUSTREAM_KAFKA_BOOTSTRAP_SERVERS / QUSTREAM_CASSANDRA_CONTACT_POINTS "
        f"for an external cluster, or install Java 17 and Maven for the embedded one.\n"
        f"{type(exc).__name__}: {exc}",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def kafka_bootstrap(_servers: _Servers) -> str:
    """Bootstrap servers of the session's Kafka (started on first use)."""
    try:
        return _servers.kafka()
    except Exception as exc:  # InfraError, Docker errors, bad settings: all fail the test
        _fail_to_start("Kafka", exc)


@pytest.fixture(scope="session")
def cassandra_contact(_servers: _Servers) -> tuple[str, int]:
    """(host, native port) of the session's Cassandra (started on first use)."""
    try:
        return _servers.cassandra()
    except Exception as exc:  # InfraError, Docker errors, bad settings: all fail the test
        _fail_to_start("Cassandra", exc)


@pytest.fixture(scope="session")
def embedded_state_dir() -> Path:
    """The embedded test cluster's state dir (its resolved jars can be reused by other
    embedded clusters a test starts with ``LocalCluster(..., jars_from=...)``)."""
    return TEST_CLUSTER_DIR


@pytest.fixture
def settings(_base_settings: Settings, kafka_bootstrap: str, tmp_path: Path) -> Settings:
    """Settings for one test: the session Kafka, fresh topic names, a private state dir.

    Cassandra is left as configured (and not started): use ``cassandra_settings`` for it.
    """
    return _base_settings.model_copy(update={
        "state_dir": tmp_path,
        "topic_prefix": f"t{_uuid8()}.",
        "kafka": _base_settings.kafka.model_copy(update={"bootstrap_servers": kafka_bootstrap}),
        # The test cluster's ports, so a stray use of the embedded defaults can never reach a
        # developer's own `qustream infra up` cluster.
        "infra": _base_settings.infra.model_copy(update=TEST_PORTS),
    })


@pytest.fixture
def cassandra_settings(settings: Settings, cassandra_contact: tuple[str, int]) -> Settings:
    """Like ``settings``, plus the session Cassandra and a fresh keyspace name (not created)."""
    host, port = cassandra_contact
    return settings.model_copy(update={
        "cassandra": settings.cassandra.model_copy(update={
            "contact_points": host, "port": port, "keyspace": f"ks_{_uuid8()}"}),
    })


@pytest.fixture(scope="session")
def cassandra_session(_base_settings: Settings,
                      cassandra_contact: tuple[str, int]) -> Iterator[Any]:
    """A connected ``cassandra.cluster.Session`` with no keyspace set."""
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy

    host, port = cassandra_contact
    options = _base_settings.cassandra
    auth = (PlainTextAuthProvider(options.username, options.password)
            if options.username else None)
    # Schema changes on two busy cores can exceed the driver's 10 s default.
    profile = ExecutionProfile(request_timeout=60, load_balancing_policy=DCAwareRoundRobinPolicy(
        local_dc=options.local_datacenter))
    cluster = Cluster([host], port=port, auth_provider=auth,
                      execution_profiles={EXEC_PROFILE_DEFAULT: profile})
    try:
        session = cluster.connect()
    except Exception as exc:
        cluster.shutdown()
        pytest.fail(f"cannot connect to Cassandra at {host}:{port}: {exc}", pytrace=False)
    try:
        yield session
    finally:
        cluster.shutdown()


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """``unique_name("group")`` -> ``"group-<uuid8>"``: fresh consumer groups, ids, names."""
    return lambda base: f"{base}-{_uuid8()}"
