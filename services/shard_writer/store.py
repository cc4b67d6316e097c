"""Cassandra for the user projection: connection, schema and prepared statements.

Tables are partitioned by user id (``users``, ``records``, ``devices``): one user = one
Cassandra partition per table, so a user's rows live on the same replicas and one unlogged
batch per user is a single mutation. ``positions`` holds, per ``users.events`` partition, the
next offset to apply; it is written after the rows it covers (see ``projection``).

Every write carries ``USING TIMESTAMP`` = the per-user event version (positions: the offset), so
a write is idempotent and order-free: replaying any prefix of the log, in any order, leaves the
cell written by the highest version. Driver errors are translated into ``StoreError``.

Consistency (docs/replicated-cluster.md): every statement is LOCAL_QUORUM, set on the statement
itself so that no session default can weaken it. Rows and positions are written at
LOCAL_QUORUM and read at LOCAL_QUORUM, so a read that sees a position also sees the rows written
before it (two quorums of a replica set always share a replica): that is the read-your-writes
the gateway promises. ONE is never used. Since every statement is idempotent, a statement is
retried on another coordinator when a node dies under it (``IdempotentRetryPolicy``).

The block store (``services.block_store.store``) keeps its tables in the same keyspace and
shares the connection, the keyspace statement and ``prepare_idempotent``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cassandra import ConsistencyLevel, DriverException
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    Session,
)
from cassandra.policies import DCAwareRoundRobinPolicy, RetryPolicy, TokenAwarePolicy
from cassandra.query import BatchStatement, BatchType, PreparedStatement

from protocol.errors import OperationError
from streams.settings import Settings

_KEYSPACE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
CONSISTENCY = ConsistencyLevel.LOCAL_QUORUM  # reads and writes; see the module docstring
# What the driver raises: NoHostAvailable (no coordinator took the request) is not one of its
# DriverExceptions.
CASSANDRA_ERRORS: tuple[type[Exception], ...] = (DriverException, NoHostAvailable)


class StoreError(OperationError):
    """A Cassandra operation of the user projection failed; says which and why."""


def _connection_class() -> Any:
    # libev keeps the driver's I/O in C and is markedly faster than the asyncio/asyncore
    # reactors on small machines; fall back when the extension is not built.
    try:
        from cassandra.io.libevreactor import LibevConnection
    except ImportError:
        return None
    return LibevConnection


class IdempotentRetryPolicy(RetryPolicy):
    """Retry what is safe to repeat, at the same consistency level (never a weaker one).

    A statement marked idempotent (all of the projection's: writes are stamped with the event
    version, reads change nothing) is retried on the next coordinator of the query plan after
    a read or write timeout, an "unavailable" answer or a broken connection — what a replica or
    a coordinator dying mid-request looks like — up to ``max_retries`` times. Other statements
    get the driver's default decisions.
    """

    def __init__(self, max_retries: int = 3) -> None:
        self.max_retries = max_retries

    def _again(self, query: Any, consistency: Any, retry_num: int) -> tuple[int, Any] | None:
        if getattr(query, "is_idempotent", False) and retry_num < self.max_retries:
            return self.RETRY_NEXT_HOST, consistency
        return None

    def on_read_timeout(self, query: Any, consistency: Any, required_responses: int,
                        received_responses: int, data_retrieved: bool,
                        retry_num: int) -> tuple[int, Any]:
        return self._again(query, consistency, retry_num) or super().on_read_timeout(
            query, consistency, required_responses, received_responses, data_retrieved,
            retry_num)

    def on_write_timeout(self, query: Any, consistency: Any, write_type: Any,
                         required_responses: int, received_responses: int,
                         retry_num: int) -> tuple[int, Any]:
        return self._again(query, consistency, retry_num) or super().on_write_timeout(
            query, consistency, write_type, required_responses, received_responses, retry_num)

    def on_unavailable(self, query: Any, consistency: Any, required_replicas: int,
                       alive_replicas: int, retry_num: int) -> tuple[int, Any]:
        return self._again(query, consistency, retry_num) or super().on_unavailable(
            query, consistency, required_replicas, alive_replicas, retry_num)

    def on_request_error(self, query: Any, consistency: Any, error: Exception,
                         retry_num: int) -> tuple[int, Any]:
        return self._again(query, consistency, retry_num) or super().on_request_error(
            query, consistency, error, retry_num)


RETRY_POLICY = IdempotentRetryPolicy()


def unlogged_batch() -> BatchStatement:
    """A single-partition batch with the projection's consistency and retry behaviour."""
    batch = BatchStatement(batch_type=BatchType.UNLOGGED, consistency_level=CONSISTENCY,
                           retry_policy=RETRY_POLICY)
    batch.is_idempotent = True
    return batch


def connect(settings: Settings, *, request_timeout_s: float = 30.0) -> tuple[Cluster, Session]:
    """A connected cluster and session: token-aware (a statement goes to a replica of its
    partition), LOCAL_QUORUM, idempotent statements retried on another node."""
    hosts, port = settings.cassandra_endpoint()
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(
            DCAwareRoundRobinPolicy(local_dc=settings.cassandra.local_datacenter)),
        consistency_level=CONSISTENCY,
        retry_policy=RETRY_POLICY,
        request_timeout=request_timeout_s,
    )
    options: dict[str, Any] = {
        "contact_points": hosts,
        "port": port,
        "execution_profiles": {EXEC_PROFILE_DEFAULT: profile},
        "connect_timeout": settings.cassandra.connect_timeout_s,
        "control_connection_timeout": settings.cassandra.connect_timeout_s,
        "protocol_version": 5,  # Cassandra 4.0+; saves the driver's downgrade handshake
    }
    connection_class = _connection_class()
    if connection_class is not None:
        options["connection_class"] = connection_class
    if settings.cassandra.username:
        options["auth_provider"] = PlainTextAuthProvider(
            settings.cassandra.username, settings.cassandra.password or "")
    cluster = Cluster(**options)
    try:
        session = cluster.connect()
    except (DriverException, NoHostAvailable, OSError) as exc:
        cluster.shutdown()
        where = ",".join(f"{host}:{port}" for host in hosts)
        raise StoreError(f"cannot reach Cassandra at {where} ({_reason(exc)}); that address "
                         f"comes from {settings.cassandra_origin()}") from exc
    return cluster, session


def _reason(exc: Exception) -> str:
    """The driver's reason in one line (NoHostAvailable carries one error per host)."""
    errors = getattr(exc, "errors", None)
    if isinstance(errors, dict) and errors:
        return "; ".join(" ".join(str(e).split()) for e in errors.values())
    return " ".join(str(exc).split())


def checked_keyspace(keyspace: str) -> str:
    """``keyspace``, when it is a name that is safe to put into CQL text (it cannot be bound)."""
    if not _KEYSPACE_NAME.match(keyspace):
        raise StoreError(f"bad keyspace name {keyspace!r} (lowercase letters, digits, _)")
    return keyspace


def create_keyspace_statement(keyspace: str, *, replication_factor: int,
                              datacenter: str) -> str:
    """``CREATE KEYSPACE IF NOT EXISTS``, replicated ``replication_factor`` times in
    ``datacenter``: the user projection and the block store share the keyspace."""
    return (f"CREATE KEYSPACE IF NOT EXISTS {checked_keyspace(keyspace)} WITH replication = "
            f"{{'class': 'NetworkTopologyStrategy', '{datacenter}': {int(replication_factor)}}}")


def create_schema(session: Session, keyspace: str, *, replication_factor: int = 1,
                  datacenter: str = "datacenter1") -> None:
    """Create the keyspace and tables if missing (idempotent)."""
    ks = checked_keyspace(keyspace)
    statements = [
        create_keyspace_statement(ks, replication_factor=replication_factor,
                                  datacenter=datacenter),
        f"""CREATE TABLE IF NOT EXISTS {ks}.users (
            user_id text PRIMARY KEY, version bigint, signing_key text, encryption_key blob,
            key_epoch int, deleted boolean, registered_at_ms bigint, updated_at_ms bigint)""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.records (
            user_id text, record_id text, record_version bigint, user_version bigint,
            ciphertext blob, size int, updated_at_ms bigint,
            PRIMARY KEY ((user_id), record_id))""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.devices (
            user_id text, device_id text, device_key text, linked_version bigint,
            revoked boolean, PRIMARY KEY ((user_id), device_id))""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.positions (
            topic text, partition int, next_offset bigint, PRIMARY KEY ((topic), partition))""",
    ]
    try:
        for statement in statements:
            session.execute(statement, timeout=60)
    except CASSANDRA_ERRORS as exc:
        raise StoreError(f"cannot create the user projection schema in {ks}: {exc}") from exc


def drop_keyspace(session: Session, keyspace: str) -> None:
    try:
        session.execute(f"DROP KEYSPACE IF EXISTS {checked_keyspace(keyspace)}", timeout=60)
    except CASSANDRA_ERRORS as exc:
        raise StoreError(f"cannot drop keyspace {keyspace}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Statements:
    """The prepared statements of the projection (writes) and the queries (reads)."""

    insert_user: PreparedStatement
    touch_user: PreparedStatement
    rotate_keys: PreparedStatement
    erase_user: PreparedStatement
    insert_record: PreparedStatement
    delete_record: PreparedStatement
    delete_records: PreparedStatement
    insert_device: PreparedStatement
    revoke_device: PreparedStatement
    delete_devices: PreparedStatement
    save_position: PreparedStatement
    select_positions: PreparedStatement
    select_user: PreparedStatement
    select_records: PreparedStatement
    select_record: PreparedStatement
    select_devices: PreparedStatement

    @classmethod
    def prepare(cls, session: Session, keyspace: str) -> Statements:
        ks = checked_keyspace(keyspace)
        cql = {
            "insert_user": f"INSERT INTO {ks}.users (user_id, version, signing_key, "
                           "encryption_key, key_epoch, deleted, registered_at_ms, updated_at_ms) "
                           "VALUES (?, ?, ?, ?, ?, false, ?, ?) USING TIMESTAMP ?",
            "touch_user": f"UPDATE {ks}.users USING TIMESTAMP ? SET version = ?, "
                          "updated_at_ms = ? WHERE user_id = ?",
            "rotate_keys": f"UPDATE {ks}.users USING TIMESTAMP ? SET signing_key = ?, "
                           "encryption_key = ?, key_epoch = ? WHERE user_id = ?",
            "erase_user": f"UPDATE {ks}.users USING TIMESTAMP ? SET deleted = true, "
                          "signing_key = null, encryption_key = null, key_epoch = null "
                          "WHERE user_id = ?",
            "insert_record": f"INSERT INTO {ks}.records (user_id, record_id, record_version, "
                             "user_version, ciphertext, size, updated_at_ms) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
            "delete_record": f"DELETE FROM {ks}.records USING TIMESTAMP ? "
                             "WHERE user_id = ? AND record_id = ?",
            "delete_records": f"DELETE FROM {ks}.records USING TIMESTAMP ? WHERE user_id = ?",
            "insert_device": f"INSERT INTO {ks}.devices (user_id, device_id, device_key, "
                             "linked_version, revoked) VALUES (?, ?, ?, ?, false) "
                             "USING TIMESTAMP ?",
            "revoke_device": f"UPDATE {ks}.devices USING TIMESTAMP ? SET revoked = true "
                             "WHERE user_id = ? AND device_id = ?",
            "delete_devices": f"DELETE FROM {ks}.devices USING TIMESTAMP ? WHERE user_id = ?",
            "save_position": f"UPDATE {ks}.positions USING TIMESTAMP ? SET next_offset = ? "
                             "WHERE topic = ? AND partition = ?",
            "select_positions": f"SELECT partition, next_offset FROM {ks}.positions "
                                "WHERE topic = ?",
            "select_user": f"SELECT * FROM {ks}.users WHERE user_id = ?",
            "select_records": f"SELECT * FROM {ks}.records WHERE user_id = ?",
            "select_record": f"SELECT * FROM {ks}.records WHERE user_id = ? AND record_id = ?",
            "select_devices": f"SELECT * FROM {ks}.devices WHERE user_id = ?",
        }
        return cls(**prepare_idempotent(session, cql, f"the projection statements for {ks}"))


def prepare_idempotent(session: Session, cql: dict[str, str], what: str
                       ) -> dict[str, PreparedStatement]:
    """Prepare every statement of ``cql`` (name -> text) at ``CONSISTENCY``, marked idempotent
    with ``RETRY_POLICY``; ``StoreError`` naming ``what`` when one cannot be (a missing table)."""
    try:
        prepared = {name: session.prepare(text) for name, text in cql.items()}
    except CASSANDRA_ERRORS as exc:
        raise StoreError(f"cannot prepare {what}: {exc}") from exc
    for statement in prepared.values():
        # On the statement, not only the session: any session (a test's, the audit's)
        # reads and writes at the same level, with the same retries.
        statement.consistency_level = CONSISTENCY
        statement.retry_policy = RETRY_POLICY
        statement.is_idempotent = True
    return prepared
