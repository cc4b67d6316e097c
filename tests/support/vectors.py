"""Golden vector files: one JSON file per case, written by a generator and read back by tests.

A vector test module names its directory and a ``build(name)`` function; ``write`` regenerates
every file (``python -m tests.unit.<module>``), ``load`` reads one, and ``generated`` is what the
generator produces now, normalised like a file (so a test compares it with ``load``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

Build = Callable[[str], dict[str, Any]]


def write(directory: Path, names: Iterable[str], build: Build) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = directory / f"{name}.json"
        path.write_text(json.dumps(build(name), indent=1, sort_keys=True) + "\n")
        print(f"wrote {path}")


def load(directory: Path, name: str) -> Any:
    return json.loads((directory / f"{name}.json").read_text())


def generated(build: Build, name: str) -> Any:
    return json.loads(json.dumps(build(name), sort_keys=True))
