"""A deterministic user-command workload for tests, soak runs, benchmarks and the demo.

Users get seeded keys; commands are mostly record writes (sealed with ``protocol.records``), some
deletes, device links and revocations, key rotations, a few deliberate conflicts (stale
expected version), resent duplicates and erased users. The core's own ``decide`` runs alongside,
so the workload knows which commands must be accepted, per user, in order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from protocol.keys import Algorithm, SigningKey
from protocol.records import RecordKeyPair, seal_record
from services.shard_writer import core


@dataclass
class SimulatedUser:
    signing: SigningKey
    records_key: RecordKeyPair
    user_id: str
    state: core.User | None = None
    devices: list[str] = field(default_factory=list)


@dataclass
class Workload:
    commands: list[core.Command]
    accepted: dict[str, list[str]]  # user id -> accepted command ids, in order
    users: dict[str, SimulatedUser]
    plaintexts: list[bytes]


def make_workload(users: int, commands: int, *, seed: int = 7,
                  algorithm: Algorithm = Algorithm.ED25519, seal: bool = True,
                  marker: bytes = b"", erase_users: int = 2,
                  record_bytes: int = 200) -> Workload:
    """``commands`` commands across ``users`` users (registrations included)."""
    rng = random.Random(seed)
    people: list[SimulatedUser] = []
    for _ in range(users):
        signing = SigningKey.from_seed(rng.randbytes(32), algorithm)
        records_key = RecordKeyPair.from_seed(rng.randbytes(64))
        people.append(SimulatedUser(signing, records_key,
                                    core.user_id_for(signing.public_key.to_text())))
    out: list[core.Command] = []
    accepted: dict[str, list[str]] = {p.user_id: [] for p in people}
    plaintexts: list[bytes] = []
    clock = 1_700_000_000_000

    def issue(person: SimulatedUser, body: core.CommandBody, expected: int | None = None,
              rotated_to: SigningKey | None = None) -> None:
        """``expected`` defaults to the user's current version (what a client signs)."""
        nonlocal clock
        clock += 1
        if expected is None:
            expected = 0 if person.state is None else person.state.version
        command = core.signed_command(person.signing, person.user_id, f"c{len(out)}-{seed}",
                                      body, issued_at_ms=clock, expected_version=expected)
        out.append(command)
        decision = core.decide(person.state, command, clock)
        if isinstance(decision, core.Accepted):
            accepted[person.user_id].append(command.command_id)
            for event in decision.events:
                person.state = core.evolve(person.state, event)
        if rotated_to is not None and isinstance(decision, core.Accepted):
            person.signing = rotated_to

    for person in people:
        issue(person, core.RegisterUser(person.signing.public_key.to_text(),
                                        person.records_key.public_key))
    erased = set(rng.sample(range(users), min(erase_users, users)))
    erase_at = commands - commands // 10
    while len(out) < commands:
        index = rng.randrange(users)
        person = people[index]
        state = person.state
        roll = rng.random()
        if index in erased and len(out) >= erase_at and state is not None and not state.deleted:
            issue(person, core.DeleteUser())
        elif roll < 0.02 and len(out) > users:
            out.append(out[rng.randrange(users, len(out))])  # a resent duplicate
        elif roll < 0.04 and state is not None:
            issue(person, core.DeleteRecord(f"r{rng.randrange(8)}"),
                  expected=max(0, state.version - 1))  # stale: a version conflict
        elif roll < 0.06:
            device = f"d{rng.randrange(3)}"
            key = SigningKey.from_seed(rng.randbytes(32), Algorithm.ED25519)
            issue(person, core.LinkDevice(device, key.public_key.to_text()))
        elif roll < 0.07:
            issue(person, core.RevokeDevice(f"d{rng.randrange(3)}"))
        elif roll < 0.075 and state is not None and not state.deleted:
            next_signing = SigningKey.from_seed(rng.randbytes(32), algorithm)
            person.records_key = RecordKeyPair.from_seed(rng.randbytes(64))
            issue(person, core.RotateKeys(next_signing.public_key.to_text(),
                                          person.records_key.public_key),
                  rotated_to=next_signing)
        elif roll < 0.15:
            issue(person, core.DeleteRecord(f"r{rng.randrange(8)}"))
        else:
            record_id = f"r{rng.randrange(8)}"
            current = state.records.get(record_id) if state is not None else None
            version = 1 if current is None else current.record_version + 1
            plaintext = marker + f" record {record_id} v{version} of {person.user_id} ".encode()
            plaintext = plaintext.ljust(record_bytes, b".")
            plaintexts.append(plaintext)
            if seal:
                ciphertext = seal_record(person.records_key, person.user_id,
                                         record_id, version, plaintext)
            else:
                ciphertext = rng.randbytes(len(plaintext) + 1200)
            issue(person, core.PutRecord(record_id, version, ciphertext))
    return Workload(out, accepted, {p.user_id: p for p in people}, plaintexts)
