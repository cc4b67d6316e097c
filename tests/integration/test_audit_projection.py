"""The in-memory rebuild of the user projection (offline audits) equals what real Cassandra holds
after the shard_writer's writes of the same events: every event type, deletions that shadow
earlier writes, a user erased, devices revoked, records re-put after a delete."""

from __future__ import annotations

import os
import random
from typing import Any

from services.audit.core.rows import diff_tables
from services.audit.replay import TABLE_KEYS, rebuild_in_memory, rebuild_projection
from services.shard_writer.consistency import LoggedEvent
from services.shard_writer.core import events
from streams.settings import Settings


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

