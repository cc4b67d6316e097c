"""The single-object header is the Avro specification's, byte for byte.

The expected headers are computed here without fastavro: the Parsing Canonical Form and the
table-driven CRC-64-AVRO are written from the Avro specification ("Parsing Canonical Form for
Schemas", "Schema Fingerprints", "Single-object encoding"), and both are checked against the
fingerprints the Avro project publishes for its own test schemas. The Java interop test
(tests/integration/test_interop_java.py) checks the same bytes against Avro's Java library.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastavro.utils import generate_many

from streams.codec import MARKER, SCHEMA_DIR, Codec, default_codec

CODEC = default_codec()

# --- CRC-64-AVRO, as the specification's "Schema Fingerprints" section writes it -------------

EMPTY = 0xC15D213AA4D7A795
MASK = (1 << 64) - 1


def _table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (EMPTY & (-(fp & 1) & MASK))
        table.append(fp)
    return table


FP_TABLE = _table()


def crc64_avro(data: bytes) -> int:
    fp = EMPTY
    for byte in data:
        fp = (fp >> 8) ^ FP_TABLE[(fp ^ byte) & 0xFF]
    return fp


# --- Parsing Canonical Form, as the specification's rules PRIMITIVES ... WHITESPACE state it ----

PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
NAMED = {"record", "enum", "fixed"}


def _fullname(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _canonical(schema: Any, namespace: str, defined: set[str]) -> str:
    if isinstance(schema, list):  # a union
        return "[" + ",".join(_canonical(s, namespace, defined) for s in schema) + "]"
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return json.dumps(schema)
        return json.dumps(_fullname(schema, namespace), ensure_ascii=False)  # a named reference
    kind = schema["type"]
    if not isinstance(kind, str) or kind in PRIMITIVES:  # {"type": ...} wrappers, logicalType
        return _canonical(kind, namespace, defined)
    if kind == "array":
        return '{"type":"array","items":' + _canonical(schema["items"], namespace, defined) + "}"
    if kind == "map":
        return '{"type":"map","values":' + _canonical(schema["values"], namespace, defined) + "}"
    if kind not in NAMED:
        return json.dumps(_fullname(kind, namespace), ensure_ascii=False)
    full = _fullname(schema["name"], schema.get("namespace", namespace))
    inner = full.rpartition(".")[0]
    defined.add(full)
    head = '{"name":' + json.dumps(full, ensure_ascii=False) + ',"type":"' + kind + '"'
    if kind == "record":
        fields = ",".join(
            '{"name":' + json.dumps(f["name"], ensure_ascii=False) + ',"type":'
            + _canonical(f["type"], inner, defined) + "}"
            for f in schema["fields"]
        )
        return head + ',"fields":[' + fields + "]}"
    if kind == "enum":
        return head + ',"symbols":' + json.dumps(schema["symbols"], separators=(",", ":"),
                                                 ensure_ascii=False) + "}"
    return head + ',"size":' + str(int(schema["size"])) + "}"


def parsing_canonical_form(schema: Any) -> str:
    return _canonical(schema, "", set())


def spec_header(schema: Any) -> bytes:
    """C3 01 + the fingerprint as an 8-byte little-endian integer (single-object encoding)."""
    fp = crc64_avro(parsing_canonical_form(schema).encode())
    return MARKER + fp.to_bytes(8, "little")


def _signed(fp: int) -> int:
    return fp - (1 << 64) if fp >> 63 else fp


# Schemas and their fingerprints (as Java longs) from the Avro project's
# share/test/data/schema-tests.txt, which its Java tests cross-check.
AVRO_PUBLISHED = [
    ('"null"', '"null"', 7195948357588979594),
    ('"string"', '"string"', -8142146995180207161),
    ('[ "int" , {"type":"boolean"} ]', '["int","boolean"]', 5392556393470105090),
    ('{"fields":[], "type":"record", "name":"foo", "namespace":"x.y"}',
     '{"name":"x.y.foo","type":"record","fields":[]}', 5916914534497305771),
    ('{"fields":[], "type":"record", "name":"a.b.foo", "namespace":"x.y"}',
     '{"name":"a.b.foo","type":"record","fields":[]}', -4616218487480524110),
    ('{"fields":[{"type":"boolean", "aliases":[], "name":"f1", "default":"true"},'
     '{"order":"descending","name":"f2","doc":"Hello","type":"int"}], "type":"record",'
     ' "name":"foo"}',
     '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"},'
     '{"name":"f2","type":"int"}]}', -4860222112080293046),
    ('{"namespace":"x.y.z", "type":"enum", "name":"foo", "doc":"foo bar", "symbols":["A1", "A2"]}',
     '{"name":"x.y.z.foo","type":"enum","symbols":["A1","A2"]}', -4448647247586288245),
    ('{"namespace":"x.y.z", "type":"fixed", "name":"foo", "doc":"foo bar", "size":32}',
     '{"name":"x.y.z.foo","type":"fixed","size":32}', -3064184465700546786),
    ('{ "items":{"type":"null"}, "type":"array"}', '{"type":"array","items":"null"}',
     -589620603366471059),
    ('{ "values":"string", "type":"map"}', '{"type":"map","values":"string"}',
     -8732877298790414990),
    ('{"name":"PigValue","type":"record",'
     '"fields":[{"name":"value", "type":["null", "int", "long", "PigValue"]}]}',
     '{"name":"PigValue","type":"record","fields":[{"name":"value",'
     '"type":["null","int","long","PigValue"]}]}', -1759257747318642341),
]


@pytest.mark.parametrize(("schema", "canonical", "fingerprint"), AVRO_PUBLISHED)
def test_the_reference_implementation_matches_avros_published_fingerprints(
        schema: str, canonical: str, fingerprint: int) -> None:
    assert parsing_canonical_form(json.loads(schema)) == canonical
    assert _signed(crc64_avro(canonical.encode())) == fingerprint


def _all_schema_files() -> list[Path]:
    return sorted(SCHEMA_DIR.glob("*.avsc")) + sorted((SCHEMA_DIR / "history").glob("*.avsc"))


@pytest.mark.parametrize("path", _all_schema_files(), ids=lambda p: p.name)
def test_every_schema_header_is_the_specifications(path: Path, tmp_path: Path) -> None:
    """Current and released versions: the header we write is C3 01 + LE CRC-64-AVRO(PCF)."""
    raw = json.loads(path.read_text())
    expected = spec_header(raw)
    (tmp_path / f"{raw['name']}.avsc").write_text(path.read_text())
    codec = Codec(tmp_path)
    record = next(iter(generate_many(codec.parsed_schema(raw["name"]), 1)))
    encoded = codec.encode(raw["name"], record)
    assert encoded[:10] == expected
    assert CODEC.decode(encoded).schema == raw["name"]  # every version is known to the reader


def test_block_finalized_header_is_what_java_computes() -> None:
    """The value Avro's Java library gave for BlockFinalized (issue 14), pinned literally."""
    encoded = CODEC.encode("BlockFinalized", next(iter(
        generate_many(CODEC.parsed_schema("BlockFinalized"), 1))))
    assert encoded[:10].hex() == "c301" + "32132b433137d8b3"


@pytest.mark.parametrize("name", CODEC.schema_names)
def test_legacy_reversed_headers_still_decode(name: str) -> None:
    """Data written before the fix (fingerprint bytes reversed) stays readable; never written."""
    for record in generate_many(CODEC.parsed_schema(name), 3):
        encoded = CODEC.encode(name, record)
        legacy = MARKER + encoded[2:10][::-1] + encoded[10:]
        decoded = CODEC.decode(legacy, expected=name)
        assert decoded.schema == name
        assert decoded.record == CODEC.decode(encoded).record
