"""Commands of the user aggregate: what a client asks for (imperative names).

A ``Command`` is the envelope every command shares (who, idempotency key, expected version,
signature); its ``body`` is one of the frozen dataclasses below. ``payload`` keeps the exact body
bytes the client signed, so authentication never depends on re-encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class RegisterUser:
    """Create the user. The user id must be the address of ``signing_key`` (pseudonymous)."""

    TYPE: ClassVar[str] = "RegisterUser"
    signing_key: str  # streams.keys public-key text, "<algorithm>:<base64>"
    encryption_key: bytes  # ML-KEM-768 encapsulation key (1184 bytes) records are wrapped to


@dataclass(frozen=True, slots=True)
class LinkDevice:
    TYPE: ClassVar[str] = "LinkDevice"
    device_id: str
    device_key: str  # public-key text; the device may sign commands for the user


@dataclass(frozen=True, slots=True)
class RevokeDevice:
    TYPE: ClassVar[str] = "RevokeDevice"
    device_id: str


@dataclass(frozen=True, slots=True)
class RotateKeys:
    """Replace the user's signing and encryption keys (the user id stays)."""

    TYPE: ClassVar[str] = "RotateKeys"
    signing_key: str
    encryption_key: bytes


@dataclass(frozen=True, slots=True)
class PutRecord:
    """Store a client-encrypted record; ``record_version`` must be the record's next version
    (it is bound into the ciphertext's associated data, so an old ciphertext cannot be replayed
    as a newer version)."""

    TYPE: ClassVar[str] = "PutRecord"
    record_id: str
    record_version: int
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class DeleteRecord:
    TYPE: ClassVar[str] = "DeleteRecord"
    record_id: str


@dataclass(frozen=True, slots=True)
class DeleteUser:
    """Erase the user: every record and device is dropped; the id can never be reused."""

    TYPE: ClassVar[str] = "DeleteUser"


CommandBody = RegisterUser | LinkDevice | RevokeDevice | RotateKeys | PutRecord | DeleteRecord \
    | DeleteUser

COMMAND_TYPES: dict[str, type[CommandBody]] = {
    cls.TYPE: cls
    for cls in (RegisterUser, LinkDevice, RevokeDevice, RotateKeys, PutRecord, DeleteRecord,
                DeleteUser)
}


@dataclass(frozen=True, slots=True)
class Command:
    user_id: str
    command_id: str  # idempotency key, chosen by the client
    expected_version: int | None  # None: apply whatever the user's version is
    body: CommandBody
    payload: bytes  # the encoded body as signed
    issued_at_ms: int
    device_id: str = ""  # "" = signed by the user's own key, else by this linked device
    signature: bytes = b""

    @property
    def command_type(self) -> str:
        return self.body.TYPE
