"""The monitor's state pieces as bytes: the values of its Faust table (``monitor.state``).

JSON of the core's frozen dataclasses, field by field, driven by their type hints (so a new
field with a default reads old values). Tuples become lists, integer-keyed mappings get string
keys; nothing else is needed by the core's types.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any, TypeVar, get_args, get_origin

from services.monitor.core import network, sources, traffic
from services.monitor.core.state import DEAD_LETTERS, MEMPOOL, NETWORK, SOURCE_PREFIX, MonitorState

T = TypeVar("T")
FORMAT = 1


class StateFormatError(ValueError):
    """A stored state value cannot be read back (corrupt, or written by an unknown format)."""


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_encode(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _encode(item) for key, item in value.items()}
    return value


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode(hint: Any, data: Any) -> Any:
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        if data is None:
            return None
        return _decode(options[0], data)
    if dataclasses.is_dataclass(hint):
        assert isinstance(hint, type)
        hints = _hints(hint)
        fields = {f.name for f in dataclasses.fields(hint)}
        return hint(**{name: _decode(hints[name], item) for name, item in data.items()
                       if name in fields})
    if origin is tuple:
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], item) for item in data)
        return tuple(_decode(arg, item) for arg, item in zip(args, data, strict=True))
    if origin in (Mapping, dict) or hint in (Mapping, dict):
        key_type, value_type = get_args(hint)
        return {key_type(key): _decode(value_type, item) for key, item in data.items()}
    if hint is float:
        return float(data)
    return data


def dumps(value: Any) -> bytes:
    return json.dumps({"format": FORMAT, "value": _encode(value)},
                      separators=(",", ":"), sort_keys=True).encode()


def loads(cls: type[T], data: bytes) -> T:
    try:
        document = json.loads(data)
        if document.get("format") != FORMAT:
            raise StateFormatError(f"state format {document.get('format')!r}, want {FORMAT}")
        result: T = _decode(cls, document["value"])
        return result
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        if isinstance(exc, StateFormatError):
            raise
        raise StateFormatError(f"cannot read a {cls.__name__}: {exc}") from exc


def piece_bytes(state: MonitorState, key: str) -> bytes:
    """The stored value of one piece (``core.state`` keys)."""
    if key.startswith(SOURCE_PREFIX):
        return dumps(state.sources[key.removeprefix(SOURCE_PREFIX)])
    if key == NETWORK:
        return dumps(state.network)
    if key == MEMPOOL:
        return dumps(state.mempool)
    if key == DEAD_LETTERS:
        return dumps(state.dead_letters)
    raise StateFormatError(f"unknown state key {key!r}")


def with_piece(state: MonitorState, key: str, data: bytes) -> MonitorState:
    """``state`` with one piece replaced by its stored value."""
    if key.startswith(SOURCE_PREFIX):
        source = loads(sources.SourceState, data)
        return dataclasses.replace(state, sources={**state.sources, source.source_id: source})
    if key == NETWORK:
        return dataclasses.replace(state, network=loads(network.NetworkState, data))
    if key == MEMPOOL:
        return dataclasses.replace(state, mempool=loads(traffic.MempoolState, data))
    if key == DEAD_LETTERS:
        return dataclasses.replace(state, dead_letters=loads(traffic.DeadLetterState, data))
    raise StateFormatError(f"unknown state key {key!r}")

