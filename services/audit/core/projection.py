"""The user projection rebuilt in memory: the rows Cassandra holds after the shard_writer's writes.

For an auditor with an export and no Cassandra. The shard_writer writes every statement
``USING TIMESTAMP`` = the event's per-user version, so the end state does not depend on the
order of writes: it is Cassandra's last-write-wins merge, which this module reproduces per cell:

- a cell keeps the write with the highest timestamp; at equal timestamps a deletion (a null
  write) wins over a value, and of two values the greater one wins;
- ``INSERT`` also writes a row marker, so the row exists even if all its other cells are null;
  ``UPDATE`` writes cells only;
- a row or partition deletion at timestamp t shadows every marker and cell written at t or
  earlier;
- a row is returned by ``SELECT *`` when its marker or any of its cells is live, with every
  column of the table (null ones as None).

The writes themselves are not restated here: the shell runs the shard_writer's own
``rows_for`` with ``OPERATIONS`` in place of prepared statements, so each write arrives as an
``Operation`` and its parameters in the statement's own order. A test replays the same events
into real Cassandra and into this fold and requires identical rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from protocol.errors import InputError


class Kind(Enum):
    INSERT = "insert"  # params: the listed columns, then the timestamp
    UPDATE = "update"  # params: the timestamp, the set columns, then the key columns
    DELETE_ROW = "delete_row"  # params: the timestamp, then the full primary key
    DELETE_PARTITION = "delete_partition"  # params: the timestamp, then the partition key


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    partition_key: tuple[str, ...]
    clustering: tuple[str, ...]
    columns: tuple[str, ...]  # every column, keys included

    @property
    def primary_key(self) -> tuple[str, ...]:
        return self.partition_key + self.clustering


USERS = Table("users", ("user_id",), (), ("user_id", "version", "signing_key", "encryption_key",
                                           "key_epoch", "deleted", "registered_at_ms",
                                           "updated_at_ms"))
RECORDS = Table("records", ("user_id",), ("record_id",),
                ("user_id", "record_id", "record_version", "user_version", "ciphertext", "size",
                 "updated_at_ms"))
DEVICES = Table("devices", ("user_id",), ("device_id",),
                ("user_id", "device_id", "device_key", "linked_version", "revoked"))
TABLES = (USERS, RECORDS, DEVICES)


@dataclass(frozen=True, slots=True)
class Operation:
    """One prepared statement of ``services.shard_writer.store.Statements``, as data."""

    kind: Kind
    table: Table
    columns: tuple[str, ...] = ()  # written from the parameters, in parameter order
    constants: tuple[tuple[str, Any], ...] = ()  # written as literals in the statement


# The shard_writer's statements (store.Statements.prepare), one for one.
OPERATIONS: dict[str, Operation] = {
    "insert_user": Operation(Kind.INSERT, USERS, (
        "user_id", "version", "signing_key", "encryption_key", "key_epoch", "registered_at_ms",
        "updated_at_ms"), (("deleted", False),)),
    "touch_user": Operation(Kind.UPDATE, USERS, ("version", "updated_at_ms")),
    "rotate_keys": Operation(Kind.UPDATE, USERS, ("signing_key", "encryption_key", "key_epoch")),
    "erase_user": Operation(Kind.UPDATE, USERS, (), (
        ("deleted", True), ("signing_key", None), ("encryption_key", None), ("key_epoch", None))),
    "insert_record": Operation(Kind.INSERT, RECORDS, (
        "user_id", "record_id", "record_version", "user_version", "ciphertext", "size",
        "updated_at_ms")),
    "delete_record": Operation(Kind.DELETE_ROW, RECORDS),
    "delete_records": Operation(Kind.DELETE_PARTITION, RECORDS),
    "insert_device": Operation(Kind.INSERT, DEVICES, (
        "user_id", "device_id", "device_key", "linked_version"), (("revoked", False),)),
    "revoke_device": Operation(Kind.UPDATE, DEVICES, (), (("revoked", True),)),
    "delete_devices": Operation(Kind.DELETE_PARTITION, DEVICES),
}


class ProjectionError(InputError):
    """A write the fold cannot apply (wrong parameter count, a key column left null)."""


def _wins(new: tuple[int, Any], old: tuple[int, Any]) -> bool:
    """Cassandra's reconciliation of two writes of one cell: timestamp, then deletion, then
    the greater value."""
    if new[0] != old[0]:
        return new[0] > old[0]
    if (new[1] is None) != (old[1] is None):
        return new[1] is None
    if new[1] is None or type(new[1]) is not type(old[1]):
        return False
    return bool(new[1] > old[1])


@dataclass(slots=True)
class _Row:
    marker: int | None = None  # timestamp of the newest INSERT
    cells: dict[str, tuple[int, Any]] = field(default_factory=dict)
    deleted_at: int | None = None  # newest row deletion


@dataclass(slots=True)
class ProjectionFold:
    """Apply writes with ``apply``; read the tables with ``rows``."""

    rows_by_table: dict[str, dict[tuple[Any, ...], _Row]] = field(default_factory=dict)
    partition_deletions: dict[tuple[str, tuple[Any, ...]], int] = field(default_factory=dict)
    writes: int = 0

    def apply(self, operation: Operation, params: Sequence[Any]) -> None:
        table, kind = operation.table, operation.kind
        self.writes += 1
        if kind is Kind.INSERT:
            expected = len(operation.columns) + 1
            self._check(operation, params, expected)
            values = dict(zip(operation.columns, params[:-1], strict=True))
            timestamp = int(params[-1])
            key = self._key(table, values)
            row = self._row(table, key)
            row.marker = timestamp if row.marker is None else max(row.marker, timestamp)
        elif kind is Kind.UPDATE:
            self._check(operation, params, 1 + len(operation.columns) + len(table.primary_key))
            timestamp = int(params[0])
            values = dict(zip(operation.columns, params[1:1 + len(operation.columns)],
                              strict=True))
            key_values = dict(zip(table.primary_key, params[1 + len(operation.columns):],
                                  strict=True))
            key = self._key(table, key_values)
            row = self._row(table, key)
        elif kind is Kind.DELETE_ROW:
            self._check(operation, params, 1 + len(table.primary_key))
            key = self._key(table, dict(zip(table.primary_key, params[1:], strict=True)))
            row = self._row(table, key)
            timestamp = int(params[0])
            row.deleted_at = timestamp if row.deleted_at is None else max(row.deleted_at,
                                                                          timestamp)
            return
        else:
            self._check(operation, params, 1 + len(table.partition_key))
            partition = (table.name, tuple(params[1:]))
            self.partition_deletions[partition] = max(self.partition_deletions.get(
                partition, int(params[0])), int(params[0]))
            return
        for column, value in (*values.items(), *operation.constants):
            if column in table.primary_key:
                continue
            write = (timestamp, value)
            old = row.cells.get(column)
            if old is None or _wins(write, old):
                row.cells[column] = write

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        """Every live row of every table, as ``SELECT *`` returns it (a dict per row)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for table in TABLES:
            rows = out.setdefault(table.name, [])
            for key, row in self.rows_by_table.get(table.name, {}).items():
                partition = key[:len(table.partition_key)]
                shadow = max(row.deleted_at if row.deleted_at is not None else -1,
                             self.partition_deletions.get((table.name, partition), -1))
                live = {column: value for column, (timestamp, value) in row.cells.items()
                        if timestamp > shadow and value is not None}
                marker = row.marker is not None and row.marker > shadow
                if not marker and not live:
                    continue
                cells: dict[str, Any] = dict.fromkeys(table.columns)
                cells.update(zip(table.primary_key, key, strict=True))
                cells.update(live)
                rows.append(cells)
        return out

    @staticmethod
    def _check(operation: Operation, params: Sequence[Any], expected: int) -> None:
        if len(params) != expected:
            raise ProjectionError(f"{operation.kind.value} on {operation.table.name} takes "
                                  f"{expected} parameters, got {len(params)}")

    @staticmethod
    def _key(table: Table, values: dict[str, Any]) -> tuple[Any, ...]:
        key = tuple(values.get(column) for column in table.primary_key)
        if any(part is None for part in key):
            raise ProjectionError(f"a write to {table.name} leaves a key column null")
        return key

    def _row(self, table: Table, key: tuple[Any, ...]) -> _Row:
        rows = self.rows_by_table.setdefault(table.name, {})
        row = rows.get(key)
        if row is None:
            row = rows[key] = _Row()
        return row


def fold(writes: Iterable[tuple[Operation, Sequence[Any]]]) -> dict[str, list[dict[str, Any]]]:
    """The tables after ``writes`` (order does not matter: every write carries a timestamp)."""
    projection = ProjectionFold()
    for operation, params in writes:
        projection.apply(operation, params)
    return projection.rows()
