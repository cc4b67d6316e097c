"""The user aggregate's state and ``evolve``: state + event -> new state.

The state is what ``decide`` needs and nothing more: keys, devices, per-record version and size
(never the ciphertext: the handler keeps the state of many users in memory), the recent
idempotency keys with the digest of their command, and the erasure flag. It is a frozen value;
``evolve`` returns a new one and never mutates its input.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, assert_never

from protocol.errors import InputError
from services.shard_writer.core.events import (
    DeviceLinked,
    DeviceRevoked,
    Event,
    KeysRotated,
    RecordDeleted,
    RecordPut,
    UserDeleted,
    UserRegistered,
)

#: How many recent idempotency keys each user remembers (older keys may be reused). This only
#: decides the answer to a resent command; replay is prevented by expected versions (decide).
COMMAND_WINDOW = 1024

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class EventOrderError(InputError):
    """An event does not follow the state it is applied to (wrong user or version gap)."""


@dataclass(frozen=True, slots=True)
class DeviceState:
    device_key: str
    revoked: bool


@dataclass(frozen=True, slots=True)
class RecordState:
    record_version: int  # versions keep counting across deletes
    size: int
    deleted: bool


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    version: int
    signing_key: str
    encryption_key: bytes
    key_epoch: int = 0
    deleted: bool = False
    devices: Mapping[str, DeviceState] = field(default_factory=lambda: _EMPTY)
    records: Mapping[str, RecordState] = field(default_factory=lambda: _EMPTY)
    # idempotency key -> (digest of the command, version of the event it produced)
    commands: Mapping[str, tuple[bytes, int]] = field(default_factory=lambda: _EMPTY)

    @property
    def live_records(self) -> int:
        return sum(1 for r in self.records.values() if not r.deleted)

    @property
    def stored_bytes(self) -> int:
        return sum(r.size for r in self.records.values() if not r.deleted)


def _with(mapping: Mapping[str, object], key: str, value: object) -> Mapping[str, Any]:
    updated = dict(mapping)
    updated[key] = value
    return MappingProxyType(updated)


def _remember(commands: Mapping[str, tuple[bytes, int]],
              event: Event) -> Mapping[str, tuple[bytes, int]]:
    updated = dict(commands)
    updated[event.command_id] = (event.command_digest, event.version)
    while len(updated) > COMMAND_WINDOW:  # insertion order = version order: drop the oldest
        del updated[next(iter(updated))]
    return MappingProxyType(updated)


def evolve(state: User | None, event: Event) -> User:
    """The state after ``event``; raises ``EventOrderError`` when it does not follow ``state``.

    Events carry the digest of the command that caused them, so the idempotency window is
    rebuilt together with the rest of the state.
    """
    expected = 1 if state is None else state.version + 1
    if event.version != expected or (state is not None and state.user_id != event.user_id):
        raise EventOrderError(
            f"event {event.event_type} v{event.version} of user {event.user_id} does not follow "
            f"state v{0 if state is None else state.version}"
        )
    body = event.body
    if isinstance(body, UserRegistered):
        new = User(event.user_id, event.version, body.signing_key, body.encryption_key)
        return replace(new, commands=_remember(new.commands, event))
    if state is None:
        raise EventOrderError(f"{event.event_type} for unregistered user {event.user_id}")
    commands = _remember(state.commands, event)
    match body:
        case DeviceLinked(device_id, device_key):
            devices = _with(state.devices, device_id, DeviceState(device_key, False))
            return replace(state, version=event.version, devices=devices, commands=commands)
        case DeviceRevoked(device_id):
            devices = _with(state.devices, device_id,
                            replace(state.devices[device_id], revoked=True))
            return replace(state, version=event.version, devices=devices, commands=commands)
        case KeysRotated(signing_key, encryption_key, key_epoch):
            return replace(state, version=event.version, signing_key=signing_key,
                           encryption_key=encryption_key, key_epoch=key_epoch,
                           commands=commands)
        case RecordPut(record_id, record_version, ciphertext):
            records = _with(state.records, record_id,
                            RecordState(record_version, len(ciphertext), False))
            return replace(state, version=event.version, records=records, commands=commands)
        case RecordDeleted(record_id, record_version):
            records = _with(state.records, record_id, RecordState(record_version, 0, True))
            return replace(state, version=event.version, records=records, commands=commands)
        case UserDeleted():
            return replace(state, version=event.version, signing_key="", encryption_key=b"",
                           deleted=True, devices=_EMPTY, records=_EMPTY, commands=commands)
        case _:
            assert_never(body)


def fold(events: Iterable[Event], state: User | None = None) -> User | None:
    """Fold the events of one user, in version order, into its state."""
    for event in events:
        state = evolve(state, event)
    return state
