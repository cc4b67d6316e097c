"""``qustream export``: the audited topics (and the live user projection) as files.

Layout of an export directory::

    manifest.json          what is in it: per topic and partition the file, record count,
                           first/last offset and SHA-256; the genesis file; the projection rows
                           and its positions (read before its rows, and before the topics)
    manifest.sha256        SHA-256 of manifest.json (hand it to the auditor out of band)
    genesis.json           the chain's genesis file
    topics/<topic>/<p>.log records of one partition in offset order
    projection.jsonl       the live projection's rows, one JSON object per row

A ``.log`` file is the magic ``QSEXPORT1\\n`` then per record: ``>qqii`` (offset, timestamp ms,
key length, value length; -1 for a null key/value) followed by the key and value bytes. Offsets
are Kafka's, so findings of an offline audit name the same offsets as an online one.
``ExportSource`` checks the manifest hash and every file's hash before reading anything.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from services.audit.core.rows import LiveProjection
from services.audit.sources import AUDITED_TOPICS, LogRecord, LogSource, SourceError

MAGIC = b"QSEXPORT1\n"
FRAME = struct.Struct(">qqii")
FORMAT = "qustream-export/1"


class ExportError(SourceError):
    """An export directory cannot be read as one (no manifest, unknown format)."""


class ExportTamperedError(ExportError):
    """An export does not match its manifest or the manifest hash given out of band: what was
    handed over is not what was exported (the audit reports it as a divergence, exit 1)."""


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encode_value(value: Any) -> Any:
    """JSON form of a projection cell (bytes as ``{"b64": ...}``)."""
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    return value


def decode_value(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    return value


def write_export(
    source: LogSource,
    directory: Path,
    genesis: Path | None,
    projection_rows: Mapping[str, list[dict[str, Any]]] | None,
    *,
    projection_positions: Mapping[int, int] | None = None,
    topics: tuple[str, ...] = AUDITED_TOPICS,
    on_record: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write the export (see module doc); returns the manifest. ``directory`` must be empty or
    absent."""
    if directory.exists() and any(directory.iterdir()):
        raise ExportError(f"{directory} is not empty")
    (directory / "topics").mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"format": FORMAT, "created_at_ms": int(time.time() * 1000),
                                "source": source.describe(), "topics": {}}
    for topic in topics:
        folder = directory / "topics" / topic
        folder.mkdir()
        handles: dict[int, Any] = {}
        stats: dict[int, dict[str, Any]] = {}
        try:
            for record in source.read(topic):
                handle = handles.get(record.partition)
                if handle is None:
                    handle = (folder / f"{record.partition}.log").open("wb")
                    handle.write(MAGIC)
                    handles[record.partition] = handle
                    stats[record.partition] = {"records": 0, "first_offset": record.offset}
                key, value = record.key, record.value
                handle.write(FRAME.pack(record.offset, record.timestamp_ms,
                                        -1 if key is None else len(key),
                                        -1 if value is None else len(value)))
                handle.write(key or b"")
                handle.write(value or b"")
                entry = stats[record.partition]
                entry["records"] += 1
                entry["last_offset"] = record.offset
                if on_record is not None:
                    on_record(topic)
        finally:
            for handle in handles.values():
                handle.close()
        manifest["topics"][topic] = {"partitions": {
            str(p): {**stats[p], "file": f"topics/{topic}/{p}.log",
                     "sha256": _sha256_file(folder / f"{p}.log")} for p in sorted(stats)}}
    if genesis is not None:
        shutil.copyfile(genesis, directory / "genesis.json")
        manifest["genesis"] = {"file": "genesis.json",
                               "sha256": _sha256_file(directory / "genesis.json")}
    if projection_rows is not None:
        path = directory / "projection.jsonl"
        with path.open("w") as handle:
            for table in sorted(projection_rows):
                for row in projection_rows[table]:
                    handle.write(json.dumps({"table": table, "row": {
                        k: encode_value(v) for k, v in row.items()}}, sort_keys=True) + "\n")
        manifest["projection"] = {"file": "projection.jsonl", "sha256": _sha256_file(path)}
        if projection_positions is not None:
            manifest["projection"]["positions"] = {
                str(p): int(o) for p, o in sorted(projection_positions.items())}
    text = json.dumps(manifest, indent=2, sort_keys=True).encode()
    (directory / "manifest.json").write_bytes(text)
    (directory / "manifest.sha256").write_text(hashlib.sha256(text).hexdigest() + "\n")
    return manifest


class ExportSource:
    """Reads an export directory (implements ``LogSource``); verifies it on construction."""

    def __init__(self, directory: Path, *, manifest_sha256: str | None = None) -> None:
        self.directory = directory
        try:
            text = (directory / "manifest.json").read_bytes()
            recorded = (directory / "manifest.sha256").read_text().strip()
        except OSError as exc:
            raise ExportError(f"{directory} is not an export: {exc}") from exc
        actual = hashlib.sha256(text).hexdigest()
        for name, expected in (("manifest.sha256", recorded), ("--manifest-sha256",
                                                               manifest_sha256)):
            if expected is not None and expected != actual:
                raise ExportTamperedError(
                    f"manifest.json hash {actual} differs from {name} {expected}")
        self.manifest_sha256 = actual
        self.manifest: dict[str, Any] = json.loads(text)
        if self.manifest.get("format") != FORMAT:
            raise ExportError(f"unknown export format {self.manifest.get('format')!r}")
        files = [entry for topic in self.manifest["topics"].values()
                 for entry in topic["partitions"].values()]
        files += [self.manifest[k] for k in ("genesis", "projection") if k in self.manifest]
        for entry in files:
            path = directory / entry["file"]
            if not path.exists() or _sha256_file(path) != entry["sha256"]:
                raise ExportTamperedError(
                    f"{entry['file']} is missing or differs from the manifest")

    offline = True  # read from files: the audit needs no cluster (see AuditOptions.rebuild)

    def describe(self) -> str:
        return f"export {self.directory} (manifest sha256 {self.manifest_sha256[:16]}…)"

    @property
    def genesis(self) -> Path | None:
        entry = self.manifest.get("genesis")
        return self.directory / entry["file"] if entry else None

    def size(self, topic: str) -> int:
        partitions = self.manifest["topics"].get(topic, {}).get("partitions", {})
        return sum(int(p["records"]) for p in partitions.values())

    def read(self, topic: str) -> Iterator[LogRecord]:
        partitions = self.manifest["topics"].get(topic, {}).get("partitions", {})
        for partition in sorted(partitions, key=int):
            path = self.directory / partitions[partition]["file"]
            with path.open("rb") as handle:
                if handle.read(len(MAGIC)) != MAGIC:
                    raise ExportError(f"{path} is not an export log file")
                while header := handle.read(FRAME.size):
                    if len(header) != FRAME.size:
                        raise ExportError(f"{path} ends inside a record")
                    offset, timestamp, key_length, value_length = FRAME.unpack(header)
                    key = handle.read(key_length) if key_length >= 0 else None
                    value = handle.read(value_length) if value_length >= 0 else None
                    yield LogRecord(topic, int(partition), offset, timestamp, key, value)

    def projection(self) -> LiveProjection | None:
        """The exported live projection with its positions (None for an export written before
        they were recorded: every row is then compared)."""
        rows = self.projection_rows()
        if rows is None:
            return None
        positions = self.manifest["projection"].get("positions")
        return LiveProjection(rows, None if positions is None else {
            int(p): int(o) for p, o in positions.items()})

    def projection_rows(self) -> dict[str, list[dict[str, Any]]] | None:
        entry = self.manifest.get("projection")
        if entry is None:
            return None
        tables: dict[str, list[dict[str, Any]]] = {}
        with (self.directory / entry["file"]).open() as handle:
            for line in handle:
                item = json.loads(line)
                tables.setdefault(item["table"], []).append(
                    {k: decode_value(v) for k, v in item["row"].items()})
        return tables
