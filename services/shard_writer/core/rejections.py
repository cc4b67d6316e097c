"""Typed rejections of user commands.

``decide`` *returns* one of these instead of events when a command cannot be applied: a rejection
is an expected outcome (it is recorded on the reply topic and counted), not a crash. They are
exceptions so the shell may also raise them, and they compare by type and reason so decisions can
be checked for determinism.
"""

from __future__ import annotations

from typing import ClassVar

from protocol.errors import InputError, QuStreamError


class CommandRejectedError(QuStreamError):
    """Base: the command was well formed and authentic but cannot be applied to the user."""

    code: ClassVar[str] = "rejected"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.reason == self.reason  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.reason))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r})"


class UnknownUserError(CommandRejectedError):
    code = "unknown_user"


class UserAlreadyExistsError(CommandRejectedError):
    code = "user_exists"


class UserDeletedError(CommandRejectedError):
    code = "user_deleted"


class VersionConflictError(CommandRejectedError):
    code = "version_conflict"


class RecordTooLargeError(CommandRejectedError):
    code = "record_too_large"


class QuotaExceededError(CommandRejectedError):
    code = "quota_exceeded"


class UnknownRecordError(CommandRejectedError):
    code = "unknown_record"


class RecordVersionConflictError(CommandRejectedError):
    code = "record_version_conflict"


class UnknownDeviceError(CommandRejectedError):
    code = "unknown_device"


class DeviceAlreadyLinkedError(CommandRejectedError):
    code = "device_exists"


class InvalidCommandError(CommandRejectedError):
    """A field is out of its domain (bad key, id not derived from the key, bad record id ...)."""

    code = "invalid_command"


class ExpectedVersionRequiredError(InvalidCommandError):
    """A command other than ``RegisterUser`` left ``expected_version`` out: without it a signed
    command could be replayed later (see ``decide``)."""

    code = "expected_version_required"


class IdempotencyKeyReusedError(CommandRejectedError):
    """The idempotency key was already used by a *different* command of this user."""

    code = "idempotency_key_reused"


REJECTIONS: dict[str, type[CommandRejectedError]] = {
    cls.code: cls
    for cls in (
        CommandRejectedError, UnknownUserError, UserAlreadyExistsError, UserDeletedError,
        VersionConflictError, RecordTooLargeError, QuotaExceededError, UnknownRecordError,
        RecordVersionConflictError, UnknownDeviceError, DeviceAlreadyLinkedError,
        InvalidCommandError, ExpectedVersionRequiredError, IdempotencyKeyReusedError,
    )
}


class ForgedSignatureError(InputError):
    """The command's signature does not verify against any key the user authorised."""

    # the code of the rejection reply the handler also sends (the dead letter keeps the class
    # name as its error type)
    reply_code: ClassVar[str] = "forged_signature"
