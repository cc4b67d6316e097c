"""Consistency checks of the user database: the truth is the event log.

``read_events`` reads ``users.events`` (read_committed) from offset 0 to its end;
``check_log`` finds duplicates and gaps in every user's versions; ``diff_projection`` compares
the Cassandra projection with ``fold_view`` of the log, user by user. The crash tests, the soak
runs and ``qustream audit`` use these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from services.shard_writer.core import Event, UserView, event_from_record, fold_view
from services.shard_writer.queries import UserQueries
from streams.codec import default_codec
from streams.kafka import read_to_end
from streams.settings import Settings


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    partition: int
    offset: int
    event: Event


def read_events(settings: Settings) -> list[LoggedEvent]:
    """Every committed event of ``users.events``, each partition's in offset order."""
    topic = settings.topic("users.events")
    codec = default_codec()
    return [LoggedEvent(record.partition, record.offset, event_from_record(
                codec.decode(record.value, expected="UserEventRecorded").record))
            for record in read_to_end(settings, topic, f"{topic}.consistency")]


def end_positions(logged: Iterable[LoggedEvent]) -> dict[int, int]:
    """Per partition, the offset after its last event (what the projection must reach)."""
    ends: dict[int, int] = {}
    for item in logged:
        ends[item.partition] = max(ends.get(item.partition, 0), item.offset + 1)
    return ends


def check_log(logged: Iterable[LoggedEvent]) -> list[str]:
    """Problems in the log: a version repeated or skipped, a user on two partitions, a command
    applied twice."""
    problems: list[str] = []
    last: dict[str, int] = {}
    home: dict[str, int] = {}
    seen: set[tuple[str, str]] = set()
    for item in logged:
        event = item.event
        if home.setdefault(event.user_id, item.partition) != item.partition:
            problems.append(f"user {event.user_id} on partitions {home[event.user_id]} and "
                            f"{item.partition}")
        expected = last.get(event.user_id, 0) + 1
        if event.version != expected:
            problems.append(f"user {event.user_id}: v{event.version} after "
                            f"v{expected - 1} at {item.partition}@{item.offset}")
        last[event.user_id] = event.version
        if (event.user_id, event.command_id) in seen:
            problems.append(f"command {event.command_id} of {event.user_id} applied twice")
        seen.add((event.user_id, event.command_id))
    return problems


def expected_views(logged: Iterable[LoggedEvent]) -> dict[str, UserView]:
    return fold_view(item.event for item in logged)


def diff_projection(expected: Mapping[str, UserView], queries: UserQueries) -> list[str]:
    """Users whose projected view differs from the fold of the log (empty list: equal)."""
    problems: list[str] = []
    for user_id, view in sorted(expected.items()):
        actual = queries.get_user(user_id)
        if actual != view:
            problems.append(f"user {user_id}: expected {_summary(view)}, "
                            f"projected {_summary(actual)}")
    return problems


def _summary(view: UserView | None) -> str:
    if view is None:
        return "nothing"
    records = {r.record_id: r.record_version for r in view.records.values()}
    return (f"v{view.version} deleted={view.deleted} epoch={view.key_epoch} records={records} "
            f"devices={ {d.device_id: d.revoked for d in view.devices.values()} }")
