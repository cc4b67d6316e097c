"""``decide``: state + command -> events, "already applied", or a typed rejection.

Pure: time enters as ``now_ms``, limits as data. The command is assumed authenticated
(``auth.authenticate`` runs first in the shell). Idempotency comes first: a command whose key
this user already used returns the first outcome (``AlreadyApplied``) when it is the same
command, and ``IdempotencyKeyReusedError`` when it is a different one.

Replay, whatever the command's age: every command but ``RegisterUser`` must name the user
version it applies to (``expected_version``, signed), and applies only when the user is at
exactly that version. Every accepted command produces one event, and versions only grow, so a
signed command can apply at most once, ever: after it applied (or after anything else did) the
user is past its version for good. This needs no state beyond the version the aggregate already
has, and the fold of events stays as it was. ``RegisterUser`` applies only to a user id never
seen (an erased user keeps its tombstone), so it may leave the version out. The idempotency
window (``COMMAND_WINDOW``) only decides which *answer* a resent command gets
(``AlreadyApplied`` inside it, ``VersionConflictError`` beyond); it is not what prevents replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_never

from protocol.keys import KeyError_
from protocol.users import (
    Command,
    DeleteRecord,
    DeleteUser,
    LinkDevice,
    PutRecord,
    RegisterUser,
    RevokeDevice,
    RotateKeys,
    command_digest,
    user_id_for,
)
from services.shard_writer.core.events import (
    DeviceLinked,
    DeviceRevoked,
    Event,
    EventBody,
    KeysRotated,
    RecordDeleted,
    RecordPut,
    UserDeleted,
    UserRegistered,
)
from services.shard_writer.core.rejections import (
    CommandRejectedError,
    DeviceAlreadyLinkedError,
    ExpectedVersionRequiredError,
    IdempotencyKeyReusedError,
    InvalidCommandError,
    QuotaExceededError,
    RecordTooLargeError,
    RecordVersionConflictError,
    UnknownDeviceError,
    UnknownRecordError,
    UnknownUserError,
    UserAlreadyExistsError,
    UserDeletedError,
    VersionConflictError,
)
from services.shard_writer.core.user import User

ENCRYPTION_KEY_BYTES = 1184  # ML-KEM-768 encapsulation key
MAX_ID_CHARS = 128


@dataclass(frozen=True, slots=True)
class Limits:
    max_record_bytes: int = 64 * 1024
    max_records: int = 1000
    max_stored_bytes: int = 16 * 1024 * 1024
    max_devices: int = 16


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Accepted:
    events: tuple[Event, ...]


@dataclass(frozen=True, slots=True)
class AlreadyApplied:
    """The same command was applied before; ``version`` is the event it produced then."""

    command_id: str
    version: int


Decision = Accepted | AlreadyApplied | CommandRejectedError


def _valid_id(value: str) -> bool:
    return 0 < len(value) <= MAX_ID_CHARS and value.isprintable()


def _check_keys(signing_key: str, encryption_key: bytes) -> InvalidCommandError | None:
    try:
        user_id_for(signing_key)
    except KeyError_ as exc:
        return InvalidCommandError(f"bad signing key: {exc}")
    if len(encryption_key) != ENCRYPTION_KEY_BYTES:
        return InvalidCommandError(
            f"encryption key must be an ML-KEM-768 key of {ENCRYPTION_KEY_BYTES} bytes, "
            f"got {len(encryption_key)}")
    return None


def decide(state: User | None, command: Command, now_ms: int,
           limits: Limits = DEFAULT_LIMITS) -> Decision:
    digest = command_digest(command)
    if state is not None and command.command_id in state.commands:
        first_digest, version = state.commands[command.command_id]
        if first_digest == digest:
            return AlreadyApplied(command.command_id, version)
        return IdempotencyKeyReusedError(
            f"idempotency key {command.command_id!r} of user {command.user_id} was used by "
            f"another command (v{version})")
    if not _valid_id(command.command_id):
        return InvalidCommandError(f"bad idempotency key {command.command_id!r}")
    outcome = _decide_body(state, command, limits)
    if isinstance(outcome, CommandRejectedError):
        return outcome
    version = 1 if state is None else state.version + 1
    return Accepted((Event(command.user_id, version, command.command_id, now_ms, outcome,
                           digest),))


def _decide_body(state: User | None, command: Command,
                 limits: Limits) -> EventBody | CommandRejectedError:
    body = command.body
    user = command.user_id
    if isinstance(body, RegisterUser):
        if state is not None:
            if state.deleted:
                return UserDeletedError(f"user {user} was deleted; its id cannot be reused")
            return UserAlreadyExistsError(f"user {user} is already registered")
        if command.expected_version not in (None, 0):
            return VersionConflictError(
                f"user {user}: expected version {command.expected_version}, actual 0")
        bad = _check_keys(body.signing_key, body.encryption_key)
        if bad is not None:
            return bad
        if user_id_for(body.signing_key) != user:
            return InvalidCommandError(
                f"user id {user} is not derived from the registered signing key")
        return UserRegistered(body.signing_key, body.encryption_key)
    if state is None:
        return UnknownUserError(f"user {user} is not registered")
    if state.deleted:
        return UserDeletedError(f"user {user} was deleted")
    if command.expected_version is None:
        return ExpectedVersionRequiredError(
            f"user {user}: {body.TYPE} must name the version it applies to (expected_version; "
            f"the user is at {state.version})")
    if command.expected_version != state.version:
        return VersionConflictError(
            f"user {user}: expected version {command.expected_version}, "
            f"actual {state.version}")
    match body:
        case PutRecord():
            return _put_record(state, body, limits)
        case DeleteRecord(record_id):
            record = state.records.get(record_id)
            if record is None or record.deleted:
                return UnknownRecordError(f"user {user} has no record {record_id!r}")
            return RecordDeleted(record_id, record.record_version + 1)
        case LinkDevice(device_id, device_key):
            return _link_device(state, device_id, device_key, limits)
        case RevokeDevice(device_id):
            device = state.devices.get(device_id)
            if device is None or device.revoked:
                return UnknownDeviceError(f"user {user}: no linked device {device_id!r}")
            return DeviceRevoked(device_id)
        case RotateKeys(signing_key, encryption_key):
            bad = _check_keys(signing_key, encryption_key)
            if bad is not None:
                return bad
            return KeysRotated(signing_key, encryption_key, state.key_epoch + 1)
        case DeleteUser():
            return UserDeleted()
        case _:
            assert_never(body)


def _link_device(state: User, device_id: str, device_key: str,
                 limits: Limits) -> EventBody | CommandRejectedError:
    user = state.user_id
    if not _valid_id(device_id):
        return InvalidCommandError(f"bad device id {device_id!r}")
    existing = state.devices.get(device_id)
    if existing is not None and not existing.revoked:
        return DeviceAlreadyLinkedError(f"user {user}: device {device_id!r} is linked")
    active = sum(1 for d in state.devices.values() if not d.revoked)
    if active >= limits.max_devices:
        return QuotaExceededError(f"user {user}: {active} devices, at most "
                                  f"{limits.max_devices}")
    try:
        user_id_for(device_key)
    except KeyError_ as exc:
        return InvalidCommandError(f"bad device key: {exc}")
    return DeviceLinked(device_id, device_key)


def _put_record(state: User, body: PutRecord, limits: Limits) -> EventBody | CommandRejectedError:
    user = state.user_id
    if not _valid_id(body.record_id):
        return InvalidCommandError(f"bad record id {body.record_id!r}")
    size = len(body.ciphertext)
    if size == 0:
        return InvalidCommandError(f"record {body.record_id!r} is empty")
    if size > limits.max_record_bytes:
        return RecordTooLargeError(
            f"record {body.record_id!r} is {size} bytes, at most {limits.max_record_bytes}")
    current = state.records.get(body.record_id)
    next_version = 1 if current is None else current.record_version + 1
    if body.record_version != next_version:
        return RecordVersionConflictError(
            f"record {body.record_id!r} of user {user}: version {body.record_version} given, "
            f"next is {next_version}")
    live = current is not None and not current.deleted
    if not live and state.live_records >= limits.max_records:
        return QuotaExceededError(f"user {user} has {state.live_records} records, at most "
                                  f"{limits.max_records}")
    stored = state.stored_bytes - (current.size if live and current else 0) + size
    if stored > limits.max_stored_bytes:
        return QuotaExceededError(f"user {user} would store {stored} bytes, at most "
                                  f"{limits.max_stored_bytes}")
    return RecordPut(body.record_id, body.record_version, body.ciphertext)
