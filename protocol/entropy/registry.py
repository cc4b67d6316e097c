"""The source registry: which QRNG sources a consumer trusts, and with which public key.

A registry entry is what an operator hands to every validator (and what a
``RegisterQrngSource`` transaction will carry): the source id and its public key. File format,
JSON, either one entry or a list of entries::

    {"source_id": "qd-eu-1", "public_key": "ml-dsa-65:<base64>", "address": "<hex>",
     "simulated": false}

``address`` (first 20 bytes of the SHA-256 of the canonical public key) is redundant and checked
when present, so a typo in a pasted key is caught. ``simulated`` says whether the source is
allowed to publish simulator output; a consumer may refuse simulated chunks from sources not
registered as simulated.

Lanes: one device may publish as K lanes, each its own hash chain and sequence space, so ingest
grows with cores. Lane ``k`` of device ``D`` is the source ``D.lane-k`` (``lane_source_id``);
it is registered like any source (the lanes may share the device's key: a checkpoint names its
source id, so one lane's chunks never verify as another's). The registry says how many lanes a
device has by which lane ids it holds. The two-source rule counts devices (``device_of``), never
lanes: two lanes of one device are one source of randomness. The device is read from the id, not
from a separate field, so a block header's source counts can be checked from the block alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.errors import InputError
from protocol.keys import KeyFormatError, PublicKey


class RegistryError(InputError):
    """A registry entry or file is malformed, inconsistent or duplicated."""


SOURCE_ID_MAX = 64
_SOURCE_ID_CHARACTERS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:")


def source_id_problem(source_id: object) -> str | None:
    """Why ``source_id`` is not a valid QRNG source id, or None. The one rule for every place
    that takes a source id (the ledger's registration, the genesis file, this registry, the
    ingest CLI): 1..64 ASCII letters, digits and ``- _ . :``. The ledger admitting an id the
    registry refuses would stop every validator at start, so both call this."""
    if (not isinstance(source_id, str) or not 1 <= len(source_id) <= SOURCE_ID_MAX
            or not set(source_id) <= _SOURCE_ID_CHARACTERS):
        return (f"source id {source_id!r} must be 1..{SOURCE_ID_MAX} characters of ASCII "
                "letters, digits and - _ . :")
    return None


LANE_MARK = ".lane-"


def lane_source_id(device: str, lane: int) -> str:
    """The source id of lane ``lane`` (0-based) of ``device``."""
    return f"{device}{LANE_MARK}{lane}"


def lane_source_ids(device: str, lanes: int) -> tuple[str, ...]:
    """The source ids a device registers and publishes as: itself when it has one lane (a
    source without lanes), else its ``lanes`` lane ids. A lane cannot have lanes (its lanes
    would not count as lanes of its device)."""
    if lanes == 1:
        return (device,)
    if device_of(device) != device:
        raise RegistryError(f"{device!r} is a lane of {device_of(device)!r}, not a device")
    return tuple(lane_source_id(device, lane) for lane in range(lanes))


def device_of(source_id: str) -> str:
    """The device a source belongs to: ``D`` for a lane id ``D.lane-k``, else the source itself
    (a source without lanes is its own device)."""
    device, mark, lane = source_id.rpartition(LANE_MARK)
    if mark and device and lane.isascii() and lane.isdigit():
        return device
    return source_id


def count_devices(source_ids: Iterable[str]) -> int:
    """How many independent devices the sources are: what the two-source rule counts."""
    return len({device_of(source_id) for source_id in source_ids})


@dataclass(frozen=True, slots=True)
class SourceRegistryEntry:
    source_id: str
    public_key: PublicKey
    simulated: bool = False

    def __post_init__(self) -> None:
        problem = source_id_problem(self.source_id)
        if problem is not None:
            raise RegistryError(problem)

    def to_json_dict(self) -> dict[str, Any]:
        return {"source_id": self.source_id, "public_key": self.public_key.to_text(),
                "address": self.public_key.address_hex, "simulated": self.simulated}

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> SourceRegistryEntry:
        try:
            entry = cls(str(data["source_id"]), PublicKey.from_text(str(data["public_key"])),
                        bool(data.get("simulated", False)))
        except (KeyError, TypeError, KeyFormatError) as exc:
            raise RegistryError(f"malformed source registry entry {dict(data)!r}: {exc}") from exc
        address = data.get("address")
        if address is not None and address != entry.public_key.address_hex:
            raise RegistryError(
                f"source {entry.source_id}: address {address} does not match its public key "
                f"({entry.public_key.address_hex})"
            )
        return entry


class SourceRegistry(Mapping[str, SourceRegistryEntry]):
    """An immutable mapping source id -> entry."""

    def __init__(self, entries: Iterable[SourceRegistryEntry] = ()) -> None:
        self._entries: dict[str, SourceRegistryEntry] = {}
        for entry in entries:
            if entry.source_id in self._entries:
                raise RegistryError(f"source {entry.source_id} is registered twice")
            self._entries[entry.source_id] = entry

    def __getitem__(self, source_id: str) -> SourceRegistryEntry:
        return self._entries[source_id]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def to_json(self) -> str:
        return json.dumps([self._entries[s].to_json_dict() for s in self], indent=2)

    @classmethod
    def from_json(cls, text: str) -> SourceRegistry:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise RegistryError(f"source registry is not JSON: {exc}") from exc
        items = data if isinstance(data, list) else [data]
        if not all(isinstance(item, dict) for item in items):
            raise RegistryError("a source registry is an entry object or a list of them")
        return cls(SourceRegistryEntry.from_json_dict(item) for item in items)

    @classmethod
    def load(cls, path: Path | str) -> SourceRegistry:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise RegistryError(f"cannot read source registry {path}: {exc}") from exc
        return cls.from_json(text)
