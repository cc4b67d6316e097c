"""Canonical encoding for every byte string that is hashed or signed.

Avro is for transport; what is hashed or signed must not depend on a serializer's choices. The
rules, so that another implementation can reproduce every hash:

- a message starts with its domain-separation tag: ``u16`` length + ASCII ``QuStream/v1/<Name>``;
- unsigned integers are big-endian with a fixed width (``u8``, ``u16``, ``u32``, ``u64``), signed
  ones are two's-complement ``i64``; a value out of range is an error, never truncated;
- byte strings and text (UTF-8) are ``u32`` length + the bytes;
- optional values are ``u8`` 0 (absent) or 1 followed by the value;
- sequences are ``u32`` count + the items, in the order the caller gives (callers sort where the
  order is not already meaningful, e.g. validators by address).

``CanonicalReader`` reads the encoding back, strictly: it mirrors the writer field by field and
rejects anything the writer could not have produced (wrong tag, short input, trailing bytes, a
boolean other than 0/1), so that one value has exactly one encoding and hence one hash.

Writer and reader are deliberately hand-written: they are a few lines, need no dependency, and
their output is fixed by the golden vectors in tests/unit/test_canonical.py.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import struct
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from protocol.errors import InputError

T = TypeVar("T")
# The writer has a method named ``bytes``; annotations inside the class use this alias.
Bytes = bytes

TAG_PREFIX = "QuStream/v1/"
HASH_SIZE = 32  # SHA-256: every id, link and Merkle node
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")


class CanonicalEncodingError(InputError):
    """A value cannot be encoded canonically (out of range, wrong type, bad tag)."""


class CanonicalWriter:
    """Appends canonical fields to one message; ``finish()`` returns the bytes."""

    __slots__ = ("_parts",)

    def __init__(self, name: str) -> None:
        if not name or not name.isascii() or "/" in name:
            raise CanonicalEncodingError(f"bad domain tag name {name!r}")
        tag = (TAG_PREFIX + name).encode("ascii")
        self._parts: list[Bytes] = [_U16.pack(len(tag)), tag]

    @classmethod
    def fragment(cls) -> CanonicalWriter:
        """A writer without a tag: fields to splice into a message built elsewhere (a
        sequence's items encoded once and cached, say). ``digest`` of a fragment is not a
        message hash; join fragments into a tagged message first."""
        writer = cls.__new__(cls)
        writer._parts = []
        return writer

    def u8(self, value: int) -> CanonicalWriter:
        return self._fixed(value, 0, 0xFF, lambda v: bytes((v,)))

    def u16(self, value: int) -> CanonicalWriter:
        return self._fixed(value, 0, 0xFFFF, _U16.pack)

    def u32(self, value: int) -> CanonicalWriter:
        return self._fixed(value, 0, 0xFFFF_FFFF, _U32.pack)

    def u64(self, value: int) -> CanonicalWriter:
        return self._fixed(value, 0, 0xFFFF_FFFF_FFFF_FFFF, _U64.pack)

    def i64(self, value: int) -> CanonicalWriter:
        return self._fixed(value, -(2**63), 2**63 - 1, _I64.pack)

    def boolean(self, value: bool) -> CanonicalWriter:
        if not isinstance(value, bool):
            raise CanonicalEncodingError(f"expected bool, got {type(value).__name__}")
        self._parts.append(b"\x01" if value else b"\x00")
        return self

    def raw(self, value: Bytes, length: int) -> CanonicalWriter:
        """A byte string of a length fixed by the format (a hash, say): no length prefix."""
        if not isinstance(value, bytes | bytearray | memoryview) or len(value) != length:
            raise CanonicalEncodingError(f"expected exactly {length} bytes")
        self._parts.append(bytes(value))
        return self

    def bytes(self, value: bytes | bytearray | memoryview) -> CanonicalWriter:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise CanonicalEncodingError(f"expected bytes, got {type(value).__name__}")
        self._parts.append(_U32.pack(len(value)))
        self._parts.append(bytes(value))
        return self

    def text(self, value: str) -> CanonicalWriter:
        if not isinstance(value, str):
            raise CanonicalEncodingError(f"expected str, got {type(value).__name__}")
        return self.bytes(value.encode("utf-8"))

    def optional(
        self, value: T | None, write: Callable[[CanonicalWriter, T], object]
    ) -> CanonicalWriter:
        if value is None:
            self._parts.append(b"\x00")
        else:
            self._parts.append(b"\x01")
            write(self, value)
        return self

    def sequence(
        self, items: Iterable[T], write: Callable[[CanonicalWriter, T], object]
    ) -> CanonicalWriter:
        items = list(items)
        self.u32(len(items))
        for item in items:
            write(self, item)
        return self

    def nested(self, encoded: Bytes) -> CanonicalWriter:
        """Embed another canonical message (its own tag included), length-prefixed."""
        return self.bytes(encoded)

    def finish(self) -> Bytes:
        return b"".join(self._parts)

    def digest(self) -> Bytes:
        """SHA-256 of the finished message: the hash used for ids, links and Merkle leaves."""
        return hashlib.sha256(self.finish()).digest()

    def _fixed(
        self, value: int, low: int, high: int, pack: Callable[[int], Bytes]
    ) -> CanonicalWriter:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CanonicalEncodingError(f"expected int, got {type(value).__name__}")
        if not low <= value <= high:
            raise CanonicalEncodingError(f"{value} is outside {low}..{high}")
        self._parts.append(pack(value))
        return self


def sha256(data: bytes) -> Bytes:
    return hashlib.sha256(data).digest()


class CanonicalDecodeError(InputError):
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

    def fields(self, layout: struct.Struct) -> tuple[Any, ...]:
        """Several fixed-width fields at once, as the single-field readers would read them
        one by one: ``layout`` is big-endian (``>``) integers (``B H I Q q``) and raw byte
        strings of fixed length (``32s``). One unpack instead of a call per field, for the
        decoders an auditor or a range client runs per block; booleans are not among the codes
        (``struct`` reads any byte as one), callers check them."""
        offset = self._offset
        try:
            values = layout.unpack_from(self._data, offset)
        except struct.error as exc:
            raise CanonicalDecodeError("message is truncated") from exc
        self._offset = offset + layout.size
        return values

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

    def i64(self) -> int:
        return self._unpack(_I64)

    def boolean(self) -> bool:
        value = self.u8()
        if value > 1:
            raise CanonicalDecodeError(f"boolean byte must be 0 or 1, got {value}")
        return value == 1

    def raw(self, length: int) -> builtins.bytes:
        return self._take(length)

    def bytes(self) -> builtins.bytes:
        start, end = self._extent()
        self._offset = end
        return self._data[start:end]

    def _extent(self) -> tuple[int, int]:
        """Where the length-prefixed field at the read position starts and ends (every text
        and nested message is one): ``_take(_unpack(_U32))`` without the copy."""
        data, offset = self._data, self._offset
        try:
            (length,) = _U32.unpack_from(data, offset)
        except struct.error as exc:
            raise CanonicalDecodeError("message is truncated") from exc
        start = offset + 4
        end = start + length
        if end > len(data):
            raise CanonicalDecodeError("message is truncated")
        return start, end

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

    def enter(self, name: str) -> tuple[int, int]:
        """Read the nested message ``name`` in place: what ``CanonicalReader(self.nested(),
        name)`` reads, without copying it out or making a reader per message (a range client
        decodes five nested messages a pulse). Its tag is consumed; the message's reads follow
        on this reader, and ``leave(end)`` checks they ended exactly at its end. Returns where
        the message starts (its tag) and ends, so a caller can keep its bytes (``span``)."""
        start, end = self._extent()
        data = self._data
        header = _tag_header(name)
        if not data.startswith(header, start) or start + len(header) > end:
            found = read_tag(data[start:end])  # raises for a malformed tag
            raise CanonicalDecodeError(f"expected a {name} message, found {found}")
        self._offset = start + len(header)
        return start, end

    def leave(self, end: int) -> None:
        """The nested message ``enter`` returned ``end`` for was read exactly to its end (a
        read past it is its truncation, as a reader of its bytes alone would have said)."""
        if self._offset != end:
            raise CanonicalDecodeError(
                "message is truncated" if self._offset > end
                else f"{end - self._offset} trailing bytes")

    def span(self, start: int, end: int) -> builtins.bytes:
        return self._data[start:end]

    def position(self) -> int:
        return self._offset

    def rewind(self, position: int) -> None:
        """Back to ``position`` (from ``position()``): a decoder that tried a shortcut which
        did not fit reads the same bytes again the general way."""
        self._offset = position

    def done(self) -> None:
        if self._offset != len(self._data):
            raise CanonicalDecodeError(f"{len(self._data) - self._offset} trailing bytes")
