"""User commands as clients sign them and the user command handler checks them.

A ``Command`` is the envelope every command shares (who, idempotency key, expected version,
signature); its ``body`` is one of the frozen dataclasses below (imperative names). ``payload``
keeps the exact body bytes the client signed, so authentication never depends on re-encoding:
bodies travel as compact JSON with sorted keys and base64 byte fields (``encode_body``), decoded
strictly (``decode_body``: any unknown, missing or extra field, or wrong field type is an error).

A command is signed (ML-DSA-65 by default, Ed25519 allowed) over its canonical encoding
(``signing_bytes``), which names the user, the idempotency key, the expected version (required
for every command but ``RegisterUser``: a command applies only to that exact version, so never
twice), the type, the payload bytes as sent, the issue time and the signing device. The user's
own key signs with ``device_id == ""``; a linked, not revoked device signs with its id. The SDK
builds commands with ``signed_command``; the handler (``services.shard_writer``) authenticates
and decides them.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from protocol.canonical import CanonicalWriter, sha256
from protocol.errors import InputError
from protocol.keys import Algorithm, PublicKey, SigningKey, write_private_file
from protocol.records import RecordKeyPair

B = TypeVar("B")


@dataclass(frozen=True, slots=True)
class RegisterUser:
    """Create the user. The user id must be the address of ``signing_key`` (pseudonymous)."""

    TYPE: ClassVar[str] = "RegisterUser"
    signing_key: str  # protocol.keys public-key text, "<algorithm>:<base64>"
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
    # The user version the command applies to (signed). Required for every command but
    # RegisterUser: it is what makes a signed command apply at most once, ever.
    expected_version: int | None
    body: CommandBody
    payload: bytes  # the encoded body as signed
    issued_at_ms: int
    device_id: str = ""  # "" = signed by the user's own key, else by this linked device
    signature: bytes = b""

    @property
    def command_type(self) -> str:
        return self.body.TYPE


class MalformedCommandError(InputError):
    """The bytes are not a command at all (bad payload, unknown type, bad field types).

    Not a rejection: such input goes to the dead-letter queue with this reason.
    """


_FIELDS: dict[type, tuple[tuple[str, str], ...]] = {}


def _fields(cls: Any) -> tuple[tuple[str, str], ...]:
    fields = _FIELDS.get(cls)
    if fields is None:
        fields = _FIELDS[cls] = tuple((f.name, str(f.type)) for f in dataclasses.fields(cls))
    return fields


def encode_body(body: Any) -> bytes:
    """The canonical JSON payload of a command or event body."""
    data: dict[str, Any] = {}
    for name, kind in _fields(type(body)):
        value = getattr(body, name)
        data[name] = base64.b64encode(value).decode("ascii") if kind == "bytes" else value
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")


def decode_body(cls: type[B], payload: bytes, error: type[ValueError]) -> B:
    try:
        data = json.loads(payload) if payload else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"{cls.__name__} payload is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise error(f"{cls.__name__} payload is not a JSON object")
    fields = _fields(cls)
    if set(data) != {name for name, _ in fields}:
        raise error(f"{cls.__name__} payload fields {sorted(data)} != "
                    f"{sorted(name for name, _ in fields)}")
    values: dict[str, Any] = {}
    for name, kind in fields:
        value = data[name]
        if kind == "bytes":
            if not isinstance(value, str):
                raise error(f"{cls.__name__}.{name} must be base64 text")
            try:
                values[name] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise error(f"{cls.__name__}.{name} is not base64: {exc}") from exc
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise error(f"{cls.__name__}.{name} must be an integer")
            values[name] = value
        else:
            if not isinstance(value, str):
                raise error(f"{cls.__name__}.{name} must be text")
            values[name] = value
    return cls(**values)


def signing_bytes(command: Command) -> bytes:
    return (
        CanonicalWriter("UserCommand")
        .text(command.user_id)
        .text(command.command_id)
        .i64(-1 if command.expected_version is None else command.expected_version)
        .text(command.command_type)
        .bytes(command.payload)
        .u64(command.issued_at_ms)
        .text(command.device_id)
        .finish()
    )


def command_digest(command: Command) -> bytes:
    """What identifies a command for idempotency: the digest of its signed content."""
    return sha256(signing_bytes(command))


def user_id_for(signing_key: str) -> str:
    """The pseudonymous user id of a public signing key: its address, in hex."""
    return PublicKey.from_text(signing_key).address_hex


def signed_command(
    key: SigningKey,
    user_id: str,
    command_id: str,
    body: CommandBody,
    *,
    issued_at_ms: int,
    expected_version: int | None = None,
    device_id: str = "",
) -> Command:
    """Build and sign a command (what the SDK, the CLI and the gateway call)."""
    unsigned = Command(user_id, command_id, expected_version, body, encode_body(body),
                       issued_at_ms, device_id)
    return Command(user_id, command_id, expected_version, body, unsigned.payload, issued_at_ms,
                   device_id, key.sign(signing_bytes(unsigned)))


class IdentityFileError(InputError):
    """An identity file cannot be read or written (it exists already, or is unreadable)."""


@dataclass(frozen=True, slots=True)
class UserIdentity:
    """A user's private keys: ``signing`` signs commands, ``records`` opens envelopes."""

    signing: SigningKey
    records: RecordKeyPair

    @property
    def user_id(self) -> str:
        return user_id_for(self.signing.public_key.to_text())

    @classmethod
    def generate(cls, algorithm: Algorithm = Algorithm.ML_DSA_65) -> UserIdentity:
        return cls(SigningKey.generate(algorithm), RecordKeyPair.generate())

    def save(self, path: Path | str) -> None:
        """Write the identity (mode 0600; refuses to overwrite an existing file)."""
        text = json.dumps({"algorithm": self.signing.algorithm.value,
                           "signing_seed": base64.b64encode(self.signing.seed).decode(),
                           "record_seed": base64.b64encode(self.records.seed).decode(),
                           "user_id": self.user_id}, indent=2)
        write_private_file(Path(path), text, IdentityFileError, "identity",
                           "an identity holds private keys and is never overwritten: choose "
                           "another file (--out) or move that one away")

    @classmethod
    def load(cls, path: Path | str) -> UserIdentity:
        try:
            data = json.loads(Path(path).read_text())
            return cls(SigningKey(Algorithm.parse(data["algorithm"]),
                                  base64.b64decode(data["signing_seed"])),
                       RecordKeyPair.from_seed(base64.b64decode(data["record_seed"])))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IdentityFileError(f"cannot read identity {path}: {exc}") from exc
