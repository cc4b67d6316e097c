"""Avro single-object encoding for every QuStream message.

Wire format (Avro 1.11 specification, "Single-object encoding"): the two-byte marker ``C3 01``,
the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form,
then the Avro binary body. Every message so names its schema without a registry, and Java's
``BinaryMessageDecoder`` reads it (``tests/interop`` proves it on a real network's topics).

Releases before issue 14 wrote the fingerprint bytes in reverse (big-endian) order. Topics keep
some of that data forever, so readers accept both orders; only the specification's is written.

The registry of schemas is the ``schemas/`` folder: ``<Name>.avsc`` is the current (reader)
version of each event and ``history/<Name>.v<N>.avsc`` are every version ever released, so data
written by an old version still decodes (resolved into the current schema). Decoding anything
that is not a well-formed message of a known schema raises ``CodecError`` and nothing else.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from protocol.errors import InputError

MARKER = b"\xc3\x01"
HEADER_SIZE = 10
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
_FP = struct.Struct("<Q")


class CodecError(InputError):
    """A message could not be encoded or decoded; says which schema and why."""


class Decoded(NamedTuple):
    """A decoded message. A NamedTuple because decode is on every consumer's hot path."""

    schema: str  # short name, e.g. "BlockFinalized"
    record: dict[str, Any]


# NamedTuple construction through its generated __new__ costs more than the rest of the framing;
# building the tuple directly gives the same object.
_new_decoded = tuple.__new__


@dataclass(frozen=True, slots=True)
class _Writer:
    name: str
    parsed: Any
    header: bytes


class Codec:
    """Encodes and decodes the schemas of one folder. Thread-safe after construction."""

    def __init__(self, schema_dir: Path = SCHEMA_DIR) -> None:
        self._writers: dict[str, _Writer] = {}
        # marker + fingerprint -> (short name, writer schema parsed, reader schema parsed or None)
        self._readers: dict[bytes, tuple[str, Any, Any]] = {}
        current_files = sorted(schema_dir.glob("*.avsc"))
        if not current_files:
            raise CodecError(f"no Avro schemas found in {schema_dir}")
        for path in current_files:
            raw = json.loads(path.read_text())
            name = raw["name"]
            parsed = parse_schema(raw)
            fp = _fingerprint(raw)
            self._writers[name] = _Writer(name, parsed, MARKER + fp)
            self._add_reader(fp, (name, parsed, None))
        for path in sorted((schema_dir / "history").glob("*.avsc")):
            raw = json.loads(path.read_text())
            name = raw["name"]
            fp = _fingerprint(raw)
            if MARKER + fp in self._readers or name not in self._writers:
                continue  # identical to the current version, or a retired event
            self._add_reader(fp, (name, parse_schema(raw), self._writers[name].parsed))

    def _add_reader(self, fp: bytes, entry: tuple[str, Any, Any]) -> None:
        """Register a writer schema under its header, and under the legacy reversed header."""
        self._readers[MARKER + fp] = entry
        # setdefault: should a reversed header ever equal a correct one, the correct one wins.
        self._readers.setdefault(MARKER + fp[::-1], entry)

    @property
    def schema_names(self) -> tuple[str, ...]:
        return tuple(sorted(self._writers))

    def parsed_schema(self, name: str) -> Any:
        return self._writer(name).parsed

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        try:
            writer = self._writers[name]
        except KeyError as exc:
            raise CodecError(f"no schema named {name!r}") from exc
        buffer = io.BytesIO()
        buffer.write(writer.header)
        try:
            fastavro.schemaless_writer(buffer, writer.parsed, record)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise CodecError(f"cannot encode {name}: {exc}") from exc
        return buffer.getvalue()

    def decode(self, data: bytes | None, expected: str | None = None) -> Decoded:
        """Decode one message; ``expected`` rejects messages of any other schema."""
        if data is None:
            raise CodecError("message has no value (tombstone)")
        # Fast path: the whole 10-byte header (marker + fingerprint) is the lookup key.
        entry = self._readers.get(data[:HEADER_SIZE])
        if entry is None:
            if len(data) < HEADER_SIZE or not data.startswith(MARKER):
                raise CodecError("not an Avro single-object message (bad marker or too short)")
            fp = _FP.unpack(data[2:HEADER_SIZE])[0]
            raise CodecError(f"unknown schema fingerprint {fp:#018x}")
        name, writer_schema, reader_schema = entry
        if expected is not None and name != expected:
            raise CodecError(f"expected a {expected} message, got {name}")
        buffer = io.BytesIO(data)
        buffer.seek(HEADER_SIZE)  # cheaper than slicing: BytesIO shares the caller's bytes
        try:
            record = fastavro.schemaless_reader(buffer, writer_schema, reader_schema)
        except Exception as exc:
            # fastavro signals malformed input with many exception types (EOFError,
            # struct.error, UnicodeDecodeError, IndexError, ValueError, MemoryError ...):
            # all of them mean the same thing to a consumer.
            raise CodecError(f"malformed {name} body: {type(exc).__name__}: {exc}") from exc
        if buffer.tell() != len(data):
            raise CodecError(
                f"malformed {name} body: {len(data) - buffer.tell()} trailing bytes or truncated"
            )
        return _new_decoded(Decoded, (name, record))

    def _writer(self, name: str) -> _Writer:
        try:
            return self._writers[name]
        except KeyError as exc:
            raise CodecError(f"no schema named {name!r}") from exc


def _fingerprint(raw: dict[str, Any]) -> bytes:
    """The 8 fingerprint bytes as the header carries them (little-endian, as Java writes them).

    fastavro's hex string already lists the bytes in that order, so it is only unhexed.
    """
    canonical = to_parsing_canonical_form(raw)
    return bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


@cache
def default_codec() -> Codec:
    """The codec over the project's ``schemas/`` folder, built once per process."""
    return Codec()
