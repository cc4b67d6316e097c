"""Ledger-only additions to the canonical encoding of ``protocol.canonical``."""

from __future__ import annotations

from protocol.canonical import CanonicalEncodingError, CanonicalWriter


def write_big_uint(writer: CanonicalWriter, value: int) -> CanonicalWriter:
    """Unsigned integers wider than u64 (reward ratios): big-endian, minimal length, as bytes.

    Zero is the empty byte string. Used only in state hashing, never in transactions.
    """
    if value < 0:
        raise CanonicalEncodingError(f"big unsigned integer {value} is negative")
    return writer.bytes(value.to_bytes((value.bit_length() + 7) // 8, "big"))
