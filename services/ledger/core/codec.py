"""Ledger-only additions to the canonical encoding of ``protocol.canonical``."""

from __future__ import annotations

import struct

from protocol.canonical import CanonicalEncodingError, CanonicalWriter

_U32 = struct.Struct(">I")


def write_big_uint(writer: CanonicalWriter, value: int) -> CanonicalWriter:
    """Unsigned integers wider than u64 (reward ratios): big-endian, minimal length, as bytes.

    Zero is the empty byte string. Used only in state hashing, never in transactions.
    """
    field = big_uint_field(value)
    return writer.raw(field, len(field))


def big_uint_field(value: int) -> bytes:
    """The bytes ``write_big_uint`` appends (length prefix and all), for packed encoders."""
    if value < 0:
        raise CanonicalEncodingError(f"big unsigned integer {value} is negative")
    data = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return _U32.pack(len(data)) + data
