"""Reading the canonical encoding of ``streams.canonical`` back, strictly.

``streams.canonical`` only writes; transactions arrive as bytes and must be parsed. The reader
mirrors the writer field by field and rejects anything the writer could not have produced
(wrong tag, short input, trailing bytes, a boolean other than 0/1), so that one transaction has
exactly one encoding and hence one hash.
"""

from __future__ import annotations

import builtins
import functools
import struct
from collections.abc import Callable
from typing import TypeVar

from streams.canonical import TAG_PREFIX, CanonicalEncodingError, CanonicalWriter

T = TypeVar("T")


class CanonicalDecodeError(ValueError):
    """The bytes are not a canonical encoding of the expected message."""


def read_tag(data: bytes) -> str:
    """The message name of a canonical message (``Transfer`` for ``QuStream/v1/Transfer``)."""
    if len(data) < 2:
        raise CanonicalDecodeError("message too short for a domain tag")
    (length,) = struct.unpack_from(">H", data, 0)
    tag_bytes = data[2 : 2 + length]
    if len(tag_bytes) != length:
        raise CanonicalDecodeError("truncated domain tag")
    try:
        tag = tag_bytes.decode("ascii")
    except UnicodeDecodeError as exc:
        raise CanonicalDecodeError("domain tag is not ASCII") from exc
    if not tag.startswith(TAG_PREFIX):
        raise CanonicalDecodeError(f"domain tag {tag!r} is not a QuStream v1 tag")
    return tag[len(TAG_PREFIX) :]


_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


@functools.lru_cache(maxsize=256)
def _tag_header(name: str) -> builtins.bytes:
    """The exact bytes a message named ``name`` starts with (length-prefixed tag)."""
    tag = (TAG_PREFIX + name).encode("ascii")
    return _U16.pack(len(tag)) + tag


class CanonicalReader:
    """Reads one canonical message whose tag must be ``name``; call ``done()`` at the end.

    Written for speed as well as strictness: an auditor decodes every block of the chain, so the
    integer readers unpack in place rather than slicing first."""

    __slots__ = ("_data", "_offset")

    def __init__(self, data: bytes, name: str) -> None:
        self._data = bytes(data)
        header = _tag_header(name)
        if not self._data.startswith(header):
            found = read_tag(self._data)  # raises for a malformed tag
            raise CanonicalDecodeError(f"expected a {name} message, found {found}")
        self._offset = len(header)

    def _take(self, count: int) -> builtins.bytes:
        start = self._offset
        end = start + count
        if end > len(self._data):
            raise CanonicalDecodeError("message is truncated")
        self._offset = end
        return self._data[start:end]

    def _unpack(self, unpacker: struct.Struct) -> int:
        offset = self._offset
        try:
            (value,) = unpacker.unpack_from(self._data, offset)
        except struct.error as exc:
            raise CanonicalDecodeError("message is truncated") from exc
        self._offset = offset + unpacker.size
        return int(value)

    def u8(self) -> int:
        offset = self._offset
        if offset >= len(self._data):
            raise CanonicalDecodeError("message is truncated")
        self._offset = offset + 1
        return self._data[offset]

    def u16(self) -> int:
        return self._unpack(_U16)

    def u32(self) -> int:
        return self._unpack(_U32)

    def u64(self) -> int:
        return self._unpack(_U64)

    def boolean(self) -> bool:
        value = self.u8()
        if value > 1:
            raise CanonicalDecodeError(f"boolean byte must be 0 or 1, got {value}")
        return value == 1

    def raw(self, length: int) -> builtins.bytes:
        return self._take(length)

    def bytes(self) -> builtins.bytes:
        return self._take(self._unpack(_U32))

    def text(self) -> str:
        try:
            return self.bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CanonicalDecodeError("text field is not UTF-8") from exc

    def optional(self, read: Callable[[CanonicalReader], T]) -> T | None:
        return read(self) if self.boolean() else None

    def sequence(self, read: Callable[[CanonicalReader], T], limit: int) -> tuple[T, ...]:
        """Items written by ``CanonicalWriter.sequence``; more than ``limit`` is an error."""
        count = self.u32()
        if count > limit:
            raise CanonicalDecodeError(f"sequence of {count} items exceeds the limit {limit}")
        return tuple(read(self) for _ in range(count))

    def nested(self) -> builtins.bytes:
        return self.bytes()

    def done(self) -> None:
        if self._offset != len(self._data):
            raise CanonicalDecodeError(f"{len(self._data) - self._offset} trailing bytes")


def write_big_uint(writer: CanonicalWriter, value: int) -> CanonicalWriter:
    """Unsigned integers wider than u64 (reward ratios): big-endian, minimal length, as bytes.

    Zero is the empty byte string. Used only in state hashing, never in transactions.
    """
    if value < 0:
        raise CanonicalEncodingError(f"big unsigned integer {value} is negative")
    return writer.bytes(value.to_bytes((value.bit_length() + 7) // 8, "big"))
