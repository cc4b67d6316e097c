"""The user aggregate, pure: commands, events, state, ``decide``, ``evolve`` and the read model.

No Kafka, Cassandra, Avro or OpenTelemetry here (an import-linter contract enforces it); the
shells in ``services.shard_writer`` wire this core to the topics and tables.
"""

from __future__ import annotations

from protocol.users import (
    COMMAND_TYPES,
    Command,
    CommandBody,
    DeleteRecord,
    DeleteUser,
    LinkDevice,
    MalformedCommandError,
    PutRecord,
    RegisterUser,
    RevokeDevice,
    RotateKeys,
    command_digest,
    encode_body,
    signed_command,
    signing_bytes,
    user_id_for,
)
from services.shard_writer.core.auth import authenticate
from services.shard_writer.core.decide import (
    DEFAULT_LIMITS,
    Accepted,
    AlreadyApplied,
    Decision,
    Limits,
    decide,
)
from services.shard_writer.core.events import (
    EVENT_TYPES,
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
    REJECTIONS,
    CommandRejectedError,
    DeviceAlreadyLinkedError,
    ExpectedVersionRequiredError,
    ForgedSignatureError,
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
from services.shard_writer.core.user import COMMAND_WINDOW, EventOrderError, User, evolve, fold
from services.shard_writer.core.view import (
    DeviceView,
    RecordView,
    UserView,
    evolve_view,
    fold_view,
)
from services.shard_writer.core.wire import (
    MalformedEventError,
    command_from_record,
    command_to_record,
    event_from_record,
    event_to_record,
)

__all__ = [
    "COMMAND_TYPES", "COMMAND_WINDOW", "DEFAULT_LIMITS", "EVENT_TYPES", "REJECTIONS", "Accepted",
    "AlreadyApplied", "Command", "CommandBody", "CommandRejectedError", "Decision",
    "DeleteRecord", "DeleteUser", "DeviceAlreadyLinkedError", "DeviceLinked", "DeviceRevoked",
    "DeviceView", "Event", "EventBody", "EventOrderError", "ExpectedVersionRequiredError",
    "ForgedSignatureError",
    "IdempotencyKeyReusedError", "InvalidCommandError", "KeysRotated", "Limits", "LinkDevice",
    "MalformedCommandError", "MalformedEventError", "PutRecord", "QuotaExceededError",
    "RecordDeleted", "RecordPut", "RecordTooLargeError", "RecordVersionConflictError",
    "RecordView", "RegisterUser", "RevokeDevice", "RotateKeys", "UnknownDeviceError",
    "UnknownRecordError", "UnknownUserError", "User", "UserAlreadyExistsError", "UserDeleted",
    "UserDeletedError", "UserRegistered", "UserView", "VersionConflictError", "authenticate",
    "command_digest", "command_from_record", "command_to_record", "decide", "encode_body",
    "event_from_record", "event_to_record", "evolve", "evolve_view", "fold", "fold_view",
    "signed_command", "signing_bytes", "user_id_for",
]
