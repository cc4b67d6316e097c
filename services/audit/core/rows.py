"""Row-by-row comparison of two copies of the user projection (pure).

Rows are given per table as ``{primary key tuple: {column: value}}``. The rebuilt copy (from
``users.events`` into a fresh keyspace) is the truth; each difference of the live copy is a
failure: ``missing`` (in the rebuild, not live), ``extra`` (live, not in the rebuild) or
``different`` (naming the columns). Each finding names the ``users.events`` record that last
wrote the user (partition, offset), so the auditor can look at the event behind the row.

The live copy is read while the shard_writer keeps applying events, so it is compared only where
it is settled (``LiveProjection``, ``unsettled_users``): its positions, the next
``users.events`` offset per partition, are read before its rows, and a row write always precedes
the position that covers it, so the rows hold at least every event before the positions and
perhaps some after. A user with any event at or past the position of its partition may show
part of that later history; such a user's rows are left out on both sides (and counted), every
other user's rows must match exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from services.audit.core.findings import Finding

TOPIC = "users.events"
Rows = Mapping[tuple[Any, ...], Mapping[str, Any]]
Tables = Mapping[str, list[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class LiveProjection:
    """The live projection as read: its rows per table and its positions (``users.events``
    partition -> next offset applied), read before the rows. ``positions`` None: not known
    (rows handed over without them, an export written before they were recorded): every row is
    compared."""

    rows: Tables
    positions: Mapping[int, int] | None = None


def unsettled_users(events: Iterable[tuple[int, int, str]],
                    positions: Mapping[int, int]) -> set[str]:
    """Users with an event ``(partition, offset, user_id)`` at or past the projection's position
    in that partition: their live rows may hold any prefix of their history from the position
    on, so they cannot be compared with the whole log."""
    return {user for partition, offset, user in events if offset >= positions.get(partition, 0)}


def without_users(tables: Tables, users: set[str]) -> dict[str, list[dict[str, Any]]]:
    """``tables`` without the rows of ``users`` (every table's first key column is user_id)."""
    return {table: [row for row in rows if row.get("user_id") not in users]
            for table, rows in tables.items()}


def diff_tables(
    rebuilt: Mapping[str, Rows],
    live: Mapping[str, Rows],
    last_event: Mapping[str, tuple[int, int]],
    limit: int = 1000,
) -> tuple[list[Finding], dict[str, int]]:
    """Findings (at most ``limit``) and per-table counts of rows compared."""
    findings: list[Finding] = []
    compared: dict[str, int] = {}
    for table in sorted(set(rebuilt) | set(live)):
        want, have = rebuilt.get(table, {}), live.get(table, {})
        compared[table] = len(set(want) | set(have))
        for key in sorted(set(want) | set(have), key=repr):
            if len(findings) >= limit:
                break
            expected, actual = want.get(key), have.get(key)
            if expected == actual:
                continue
            if actual is None:
                kind = "missing: in the rebuild from the log but not in the live keyspace"
            elif expected is None:
                kind = "extra: in the live keyspace but not in the rebuild from the log"
            else:
                columns = sorted(c for c in set(expected) | set(actual)
                                 if expected.get(c) != actual.get(c))
                kind = "different: " + ", ".join(
                    f"{c} live={_show(actual.get(c))} rebuilt={_show(expected.get(c))}"
                    for c in columns)
            user = str(key[0])
            partition, offset = last_event.get(user, (0, None))  # type: ignore[assignment]
            findings.append(Finding("users", f"{table} row {_key(key)}: {kind}", TOPIC, offset,
                                    partition))
    return findings, compared


def _key(key: tuple[Any, ...]) -> str:
    return "(" + ", ".join(str(part) for part in key) + ")"


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes {value[:6].hex()}>"
    return repr(value)
