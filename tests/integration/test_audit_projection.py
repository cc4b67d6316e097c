"""The in-memory rebuild of the user projection (offline audits) equals what real Cassandra holds
after the shard_writer's writes of the same events: every event type, deletions that shadow
earlier writes, a user erased, devices revoked, records re-put after a delete. A live audit
waits for the projection to apply the events the log holds, and no longer."""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any

from cassandra.cluster import Session

from services.audit.core.rows import LiveProjection, diff_tables
from services.audit.replay import (
    TABLE_KEYS,
    live_projection,
    rebuild_in_memory,
    rebuild_projection,
)
from services.audit.sources import KafkaSource
from services.shard_writer.consistency import LoggedEvent, end_positions, read_events
from services.shard_writer.core import events
from services.shard_writer.handler import CommandHandler
from services.shard_writer.projection import Projector
from services.shard_writer.store import create_schema, drop_keyspace
from streams.admin import ensure_topics
from streams.settings import Settings
from tests.integration.test_users_pipeline import handler_caught_up, produce_commands, wait_until
from tests.support.workload import make_workload


def _history(user: int, rng: random.Random) -> list[events.Event]:
    """A legal event history of one user (versions 1..n) touching every kind of row."""
    user_id = f"{user:040x}"
    bodies: list[Any] = [events.UserRegistered(f"ed25519:key{user}", os.urandom(32))]
    records: dict[str, int] = {}
    devices: set[str] = set()
    for _ in range(rng.randrange(3, 25)):
        roll = rng.random()
        if roll < 0.45:
            record = f"r{rng.randrange(5)}"
            records[record] = records.get(record, 0) + 1
            ciphertext = os.urandom(rng.randrange(0, 40))
            bodies.append(events.RecordPut(record, records[record], ciphertext))
        elif roll < 0.6 and records:
            record = rng.choice(sorted(records))
            bodies.append(events.RecordDeleted(record, records.pop(record)))
        elif roll < 0.72:
            device = f"d{rng.randrange(3)}"
            devices.add(device)
            bodies.append(events.DeviceLinked(device, f"ed25519:dev{device}"))
        elif roll < 0.82 and devices:
            bodies.append(events.DeviceRevoked(devices.pop()))
        else:
            bodies.append(events.KeysRotated(f"ed25519:rot{len(bodies)}", os.urandom(32),
                                             len(bodies)))
    if user % 4 == 0:
        bodies.append(events.UserDeleted())
    return [events.Event(user_id, version, f"c{user}-{version}",
                         1_700_000_000_000 + 1000 * version, body)
            for version, body in enumerate(bodies, start=1)]


def test_in_memory_rebuild_equals_cassandra(cassandra_settings: Settings) -> None:
    rng = random.Random(7)
    history = [e for user in range(60) for e in _history(user, rng)]
    rng.shuffle(history)  # the log interleaves users; per-user order is what matters
    history.sort(key=lambda e: (e.user_id, e.version))
    logged = [LoggedEvent(0, offset, event) for offset, event in enumerate(history)]

    in_cassandra = rebuild_projection(cassandra_settings, logged)
    in_memory = rebuild_in_memory(logged)

    def keyed(tables: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        return {table: {tuple(row[k] for k in TABLE_KEYS[table]): row for row in rows}
                for table, rows in tables.items()}

    findings, compared = diff_tables(keyed(in_memory), keyed(in_cassandra), {})
    assert findings == [], [f.reason for f in findings[:5]]
    assert compared["users"] == 60
    assert compared["records"] > 50 and compared["devices"] > 10
    erased = [row for row in in_memory["users"] if row["deleted"]]
    assert len(erased) == 15 and all(row["signing_key"] is None for row in erased)
    assert not any(row["user_id"] in {e["user_id"] for e in erased}
                   for row in in_memory["records"])


def test_a_live_audit_waits_for_the_projection_to_apply_the_log_and_no_longer(
        cassandra_settings: Settings, cassandra_session: Session) -> None:
    """The handler writes ``users.events`` in transactions, so each partition's high watermark
    is a commit marker past its last event. The audit's read of the live projection waits until
    the events the log holds are applied (the projector starts only after the read began), and
    returns then: not after its whole wait, as it did while it waited for the watermark."""
    settings = cassandra_settings
    ensure_topics(settings)
    create_schema(cassandra_session, settings.cassandra.keyspace)
    handler = CommandHandler.create(settings, instance_id="audit-wait")
    projector = Projector.create(settings, cassandra_session, create_tables=False)
    runners = [threading.Thread(target=handler.run, daemon=True)]
    runners[0].start()
    try:
        produce_commands(settings, make_workload(users=4, commands=40, seed=11).commands)
        wait_until(handler_caught_up(settings), 120, "the handler to apply every command")
        logged = read_events(settings)
        assert logged
        high = {p: end for p, (_, end) in KafkaSource(settings).bounds("users.events").items()}
        assert any(high[p] > end for p, end in end_positions(logged).items())  # the markers

        read: list[LiveProjection] = []
        started = time.monotonic()
        reader = threading.Thread(target=lambda: read.append(
            live_projection(settings, catch_up_s=120)), daemon=True)
        reader.start()
        time.sleep(2)
        runners.append(threading.Thread(target=projector.run, daemon=True))
        runners[1].start()
        reader.join(150)
        took = time.monotonic() - started
        assert read, "the live projection was not read"
        assert read[0].positions == end_positions(logged), "it did not wait for every event"
        assert took < 60, f"it waited {took:.0f}s for a projection that had applied everything"
        assert {row["user_id"] for row in read[0].rows["users"]} == {
            item.event.user_id for item in logged}
    finally:
        handler.stop()
        projector.stop()
        for runner in runners:
            runner.join(30)
        handler.close()
        projector.close()
        drop_keyspace(cassandra_session, settings.cassandra.keyspace)
