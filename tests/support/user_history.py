"""A long user history written straight to ``users.events``, fast, for restart tests and the
handler start-up benchmark.

Going through commands costs a signature check and a transaction per batch; a restart test needs
tens of thousands of events, and only their fold matters. So the events a handler would have
recorded (registrations, then record writes cycling over a few record ids) are produced keyed by
user id, where the handler puts them. Users have seeded Ed25519 keys, so ``probes`` can sign
commands that the handler accepts only if its state of the user is the fold of this history:
the user's version (expected version) and the record's version (next record version).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from protocol.keys import Algorithm, SigningKey
from services.shard_writer.core import (
    Command,
    Event,
    EventBody,
    PutRecord,
    RecordPut,
    UserRegistered,
    event_to_record,
    signed_command,
    user_id_for,
)
from streams.codec import default_codec
from streams.kafka import make_producer
from streams.settings import Settings

RECORD_IDS = 5  # per user: record versions grow, so a put must know the current one
ENCRYPTION_KEY = bytes(1184)  # an ML-KEM-768 public key's size
CIPHERTEXT = b"\x5a" * 48


@dataclass
class History:
    keys: list[SigningKey]
    user_ids: list[str]
    versions: dict[str, int] = field(default_factory=dict)  # user id -> latest version
    # (user id, record id) -> latest record version
    record_versions: dict[tuple[str, str], int] = field(default_factory=dict)
    events: int = 0

    @classmethod
    def create(cls, users: int, *, seed: int = 17) -> History:
        keys = [SigningKey.from_seed(hashlib.sha256(f"{seed}/{u}".encode()).digest(),
                                     Algorithm.ED25519) for u in range(users)]
        return cls(keys, [user_id_for(key.public_key.to_text()) for key in keys])

    def next_event(self, index: int) -> Event:
        """The next event of user ``index`` (its registration first), folded into the counts."""
        user_id = self.user_ids[index]
        version = self.versions.get(user_id, 0) + 1
        body: EventBody
        if version == 1:
            body = UserRegistered(self.keys[index].public_key.to_text(), ENCRYPTION_KEY)
        else:
            record_id = f"r{version % RECORD_IDS}"
            record_version = self.record_versions.get((user_id, record_id), 0) + 1
            self.record_versions[(user_id, record_id)] = record_version
            body = RecordPut(record_id, record_version, CIPHERTEXT)
        self.versions[user_id] = version
        self.events += 1
        command_id = f"h{version}"
        return Event(user_id, version, command_id, 1_700_000_000_000 + self.events, body,
                     hashlib.sha256(f"{user_id}/{command_id}".encode()).digest())

    def write(self, settings: Settings, events: int, *, users: range | None = None) -> None:
        """Produce ``events`` more events, round robin over ``users`` (default: all), as the
        handler would have (keyed by user id, in per-user order), and wait until all are
        acknowledged."""
        chosen = users if users is not None else range(len(self.user_ids))
        tuning: dict[str, Any] = {"linger.ms": 50, "batch.size": 1_000_000}
        producer = make_producer(settings, **tuning)
        codec = default_codec()
        topic = settings.topic("users.events")
        for n in range(events):
            event = self.next_event(chosen[n % len(chosen)])
            producer.produce(topic, codec.encode("UserEventRecorded", event_to_record(event)),
                             event.user_id.encode())
            if n % 1000 == 0:
                producer.poll(0)
        assert producer.flush(120) == 0

    def probes(self, users: range, *, tag: str = "probe") -> list[Command]:
        """One record write per user of ``users`` that the handler accepts only if its state of
        the user is this history's fold (expected version, next record version); the history
        counts it as applied."""
        commands = []
        for index in users:
            user_id = self.user_ids[index]
            version = self.versions[user_id]
            record_id = f"r{(version + 1) % RECORD_IDS}"
            record_version = self.record_versions.get((user_id, record_id), 0) + 1
            commands.append(signed_command(
                self.keys[index], user_id, f"{tag}-{version + 1}",
                PutRecord(record_id, record_version, CIPHERTEXT),
                issued_at_ms=1_800_000_000_000, expected_version=version))
            self.versions[user_id] = version + 1
            self.record_versions[(user_id, record_id)] = record_version
        return commands
