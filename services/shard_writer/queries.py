"""The read side of the user database (what the gateway calls): users, records, positions.

Reads go to the Cassandra projection at LOCAL_QUORUM and return the core's view values
(``UserView``, ``RecordView``, ``DeviceView``): ciphertext, sizes and versions only. To read
your own writes, pass the position a command's ``UserCommandAccepted`` reply names:
``wait_for_offset(partition, offset)`` blocks until the projection has applied that event, or
``wait_for_version(user_id, version)`` until the user's row reached that version.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from cassandra.cluster import Session

from services.shard_writer.core import DeviceView, RecordView, UserView
from services.shard_writer.store import CASSANDRA_ERRORS, Statements, StoreError


class ProjectionTimeoutError(TimeoutError):
    """The projection did not reach the requested position within the timeout."""


def _record(row: Any) -> RecordView:
    return RecordView(row.user_id, row.record_id, row.record_version, row.user_version,
                      row.ciphertext, row.size, row.updated_at_ms)


def _device(row: Any) -> DeviceView:
    return DeviceView(row.user_id, row.device_id, row.device_key, row.linked_version,
                      bool(row.revoked))


class UserQueries:
    """Queries over one projection keyspace; ``events_topic`` is the full topic name."""

    def __init__(self, session: Session, keyspace: str, events_topic: str,
                 *, poll_interval_s: float = 0.05) -> None:
        self.session = session
        self.statements = Statements.prepare(session, keyspace)
        self.events_topic = events_topic
        self.poll_interval_s = poll_interval_s

    def _rows(self, statement: Any, params: tuple[Any, ...]) -> list[Any]:
        try:
            return list(self.session.execute(statement, params))
        except CASSANDRA_ERRORS as exc:
            raise StoreError(f"user query failed: {exc}") from exc

    def get_user(self, user_id: str, *, with_records: bool = True,
                 after_offset: tuple[int, int] | None = None,
                 timeout_s: float = 10.0) -> UserView | None:
        """The user's row with its records and devices; ``None`` when never registered.

        ``after_offset=(partition, offset)`` first waits until that event is projected."""
        if after_offset is not None:
            self.wait_for_offset(*after_offset, timeout_s=timeout_s)
        rows = self._rows(self.statements.select_user, (user_id,))
        if not rows:
            return None
        row = rows[0]
        records: Mapping[str, RecordView] = MappingProxyType({})
        if with_records:
            records = MappingProxyType({r.record_id: r for r in self.list_records(user_id)})
        devices = MappingProxyType({
            d.device_id: d for d in map(_device, self._rows(self.statements.select_devices,
                                                            (user_id,)))})
        return UserView(row.user_id, row.version, row.signing_key, row.encryption_key,
                        row.key_epoch, bool(row.deleted), row.registered_at_ms,
                        row.updated_at_ms, records, devices)

    def list_records(self, user_id: str) -> list[RecordView]:
        return [_record(r) for r in self._rows(self.statements.select_records, (user_id,))]

    def get_record(self, user_id: str, record_id: str, *,
                   after_offset: tuple[int, int] | None = None,
                   timeout_s: float = 10.0) -> RecordView | None:
        if after_offset is not None:
            self.wait_for_offset(*after_offset, timeout_s=timeout_s)
        rows = self._rows(self.statements.select_record, (user_id, record_id))
        return _record(rows[0]) if rows else None

    def positions(self) -> dict[int, int]:
        """Per ``users.events`` partition, the next offset the projection will apply."""
        rows = self._rows(self.statements.select_positions, (self.events_topic,))
        return {row.partition: row.next_offset for row in rows}

    def wait_for_offset(self, partition: int, offset: int, *, timeout_s: float = 10.0) -> None:
        """Block until the event at ``(partition, offset)`` is projected."""
        self.wait_for_positions({partition: offset + 1}, timeout_s=timeout_s)

    def wait_for_positions(self, targets: Mapping[int, int], *, timeout_s: float = 10.0) -> None:
        """Block until, for every partition, the projection's next offset >= the target."""
        deadline = time.monotonic() + timeout_s
        while True:
            current = self.positions()
            behind = {p: (current.get(p, 0), o) for p, o in targets.items()
                      if current.get(p, 0) < o}
            if not behind:
                return
            if time.monotonic() >= deadline:
                raise ProjectionTimeoutError(
                    f"projection of {self.events_topic} still behind after {timeout_s}s "
                    f"(partition: (at, wanted)) {behind}")
            time.sleep(self.poll_interval_s)

    def wait_for_version(self, user_id: str, version: int, *, timeout_s: float = 10.0) -> None:
        """Block until the user's projected version is at least ``version``."""
        deadline = time.monotonic() + timeout_s
        while True:
            rows = self._rows(self.statements.select_user, (user_id,))
            at = rows[0].version if rows and rows[0].version is not None else 0
            if at >= version:
                return
            if time.monotonic() >= deadline:
                raise ProjectionTimeoutError(
                    f"user {user_id} projected at v{at}, wanted v{version} within {timeout_s}s")
            time.sleep(self.poll_interval_s)
