"""Commands and events <-> the plain records of the Avro schemas (no Avro import here).

Bodies travel in the ``payload`` field as compact JSON with sorted keys; byte fields are base64.
Decoding is strict: any unknown type, missing or extra field, or wrong field type raises
``MalformedCommandError`` (commands) or ``MalformedEventError`` (events).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from protocol.errors import InputError
from protocol.users import (
    COMMAND_TYPES,
    Command,
    MalformedCommandError,
    decode_body,
    encode_body,
)
from services.shard_writer.core.events import EVENT_TYPES, Event


class MalformedEventError(InputError):
    """An event record on ``users.events`` cannot be turned into an ``Event``."""


def command_to_record(command: Command) -> dict[str, Any]:
    """The ``UserCommandIssued`` record of a command (payload as signed)."""
    return {
        "user_id": command.user_id,
        "command_id": command.command_id,
        "expected_version": -1 if command.expected_version is None else command.expected_version,
        "command_type": command.command_type,
        "payload": command.payload,
        "device_id": command.device_id,
        "signature": command.signature,
        "issued_at_ms": command.issued_at_ms,
    }


def command_from_record(record: Mapping[str, Any]) -> Command:
    """Parse a decoded ``UserCommandIssued`` record; raises ``MalformedCommandError``."""
    kind = record["command_type"]
    cls = COMMAND_TYPES.get(kind)
    if cls is None:
        raise MalformedCommandError(f"unknown command type {kind!r}")
    expected = record["expected_version"]
    if expected < -1:
        raise MalformedCommandError(f"expected_version {expected} < -1")
    body = decode_body(cls, record["payload"], MalformedCommandError)
    return Command(
        user_id=record["user_id"],
        command_id=record["command_id"],
        expected_version=None if expected == -1 else expected,
        body=body,
        payload=record["payload"],
        issued_at_ms=record["issued_at_ms"],
        device_id=record.get("device_id", ""),
        signature=record["signature"],
    )


def event_to_record(event: Event) -> dict[str, Any]:
    """The ``UserEventRecorded`` record of an event."""
    return {
        "user_id": event.user_id,
        "version": event.version,
        "command_id": event.command_id,
        "command_digest": event.command_digest,
        "event_type": event.event_type,
        "payload": encode_body(event.body),
        "recorded_at_ms": event.recorded_at_ms,
    }


def event_from_record(record: Mapping[str, Any]) -> Event:
    """Parse a decoded ``UserEventRecorded`` record; raises ``MalformedEventError``."""
    cls = EVENT_TYPES.get(record["event_type"])
    if cls is None:
        raise MalformedEventError(f"unknown event type {record['event_type']!r}")
    return Event(
        user_id=record["user_id"],
        version=record["version"],
        command_id=record["command_id"],
        recorded_at_ms=record["recorded_at_ms"],
        body=decode_body(cls, record["payload"], MalformedEventError),
        command_digest=record.get("command_digest", b""),
    )
