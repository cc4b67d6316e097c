"""The read model: what the Cassandra projection holds, as a pure fold over events.

The projection must equal ``fold_view`` of the event log user by user (the consistency tests
and ``qustream audit`` check exactly that), and the query module returns these same values.
Nodes hold ciphertext, sizes and versions only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, assert_never

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
from services.shard_writer.core.user import EventOrderError

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RecordView:
    user_id: str
    record_id: str
    record_version: int
    user_version: int  # version of the event that wrote it
    ciphertext: bytes
    size: int
    updated_at_ms: int


@dataclass(frozen=True, slots=True)
class DeviceView:
    user_id: str
    device_id: str
    device_key: str
    linked_version: int
    revoked: bool


@dataclass(frozen=True, slots=True)
class UserView:
    user_id: str
    version: int
    signing_key: str | None
    encryption_key: bytes | None
    key_epoch: int | None
    deleted: bool
    registered_at_ms: int
    updated_at_ms: int
    records: Mapping[str, RecordView] = field(default_factory=lambda: _EMPTY)
    devices: Mapping[str, DeviceView] = field(default_factory=lambda: _EMPTY)


def _with(mapping: Mapping[str, object], key: str, value: object | None) -> Mapping[str, Any]:
    updated = dict(mapping)
    if value is None:
        updated.pop(key, None)
    else:
        updated[key] = value
    return MappingProxyType(updated)


def evolve_view(view: UserView | None, event: Event) -> UserView:
    body = event.body
    v, t = event.version, event.recorded_at_ms
    if isinstance(body, UserRegistered):
        return UserView(event.user_id, v, body.signing_key, body.encryption_key, 0, False, t, t)
    if view is None:
        raise EventOrderError(f"{event.event_type} before UserRegistered for {event.user_id}")
    view = replace(view, version=v, updated_at_ms=t)
    match body:
        case KeysRotated(signing_key, encryption_key, key_epoch):
            return replace(view, signing_key=signing_key, encryption_key=encryption_key,
                           key_epoch=key_epoch)
        case DeviceLinked(device_id, device_key):
            device = DeviceView(event.user_id, device_id, device_key, v, False)
            return replace(view, devices=_with(view.devices, device_id, device))
        case DeviceRevoked(device_id):
            revoked = replace(view.devices[device_id], revoked=True)
            return replace(view, devices=_with(view.devices, device_id, revoked))
        case RecordPut(record_id, record_version, ciphertext):
            record = RecordView(event.user_id, record_id, record_version, v, ciphertext,
                                len(ciphertext), t)
            return replace(view, records=_with(view.records, record_id, record))
        case RecordDeleted(record_id):
            return replace(view, records=_with(view.records, record_id, None))
        case UserDeleted():
            return replace(view, signing_key=None, encryption_key=None, key_epoch=None,
                           deleted=True, records=_EMPTY, devices=_EMPTY)
        case _:
            assert_never(body)


def fold_view(events: Iterable[Event]) -> dict[str, UserView]:
    """Every user's view after the events, which must be in per-user version order."""
    views: dict[str, UserView] = {}
    for event in events:
        views[event.user_id] = evolve_view(views.get(event.user_id), event)
    return views
