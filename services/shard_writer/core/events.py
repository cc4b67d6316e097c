"""Events of the user aggregate (past tense): the facts on ``users.events``.

An ``Event`` is the envelope (user, per-user version from 1, the command that caused it, the time
the handler recorded it); its ``body`` is one of the frozen dataclasses below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class UserRegistered:
    TYPE: ClassVar[str] = "UserRegistered"
    signing_key: str
    encryption_key: bytes


@dataclass(frozen=True, slots=True)
class DeviceLinked:
    TYPE: ClassVar[str] = "DeviceLinked"
    device_id: str
    device_key: str


@dataclass(frozen=True, slots=True)
class DeviceRevoked:
    TYPE: ClassVar[str] = "DeviceRevoked"
    device_id: str


@dataclass(frozen=True, slots=True)
class KeysRotated:
    TYPE: ClassVar[str] = "KeysRotated"
    signing_key: str
    encryption_key: bytes
    key_epoch: int


@dataclass(frozen=True, slots=True)
class RecordPut:
    TYPE: ClassVar[str] = "RecordPut"
    record_id: str
    record_version: int
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class RecordDeleted:
    TYPE: ClassVar[str] = "RecordDeleted"
    record_id: str
    record_version: int


@dataclass(frozen=True, slots=True)
class UserDeleted:
    TYPE: ClassVar[str] = "UserDeleted"


EventBody = UserRegistered | DeviceLinked | DeviceRevoked | KeysRotated | RecordPut \
    | RecordDeleted | UserDeleted

EVENT_TYPES: dict[str, type[EventBody]] = {
    cls.TYPE: cls
    for cls in (UserRegistered, DeviceLinked, DeviceRevoked, KeysRotated, RecordPut,
                RecordDeleted, UserDeleted)
}


@dataclass(frozen=True, slots=True)
class Event:
    user_id: str
    version: int  # per-user, 1, 2, 3 ... without gaps
    command_id: str
    recorded_at_ms: int
    body: EventBody
    command_digest: bytes = b""  # digest of the causing command: rebuilds the idempotency window

    @property
    def event_type(self) -> str:
        return self.body.TYPE
