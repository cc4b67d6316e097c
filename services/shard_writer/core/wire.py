"""Commands and events <-> the plain records of the Avro schemas (no Avro import here).

Bodies travel in the ``payload`` field as compact JSON with sorted keys; byte fields are base64.
Decoding is strict: any unknown type, missing or extra field, or wrong field type raises
``MalformedCommandError`` (commands) or ``MalformedEventError`` (events).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Mapping
from typing import Any, TypeVar

from services.shard_writer.core.commands import COMMAND_TYPES, Command, CommandBody
from services.shard_writer.core.events import EVENT_TYPES, Event, EventBody
from services.shard_writer.core.rejections import MalformedCommandError

B = TypeVar("B")


class MalformedEventError(ValueError):
    """An event record on ``users.events`` cannot be turned into an ``Event``."""


_FIELDS: dict[type, tuple[tuple[str, str], ...]] = {}


def _fields(cls: Any) -> tuple[tuple[str, str], ...]:
    fields = _FIELDS.get(cls)
    if fields is None:
        fields = _FIELDS[cls] = tuple((f.name, str(f.type)) for f in dataclasses.fields(cls))
    return fields


def encode_body(body: CommandBody | EventBody) -> bytes:
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
