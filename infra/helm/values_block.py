"""The generated blocks of the chart's ``values.yaml`` and the command line of their generators.

Each block sits between two marker lines and is written only by its generator
(``generate_topics``, ``generate_rules``); ``--check`` exits non-zero when the block in the file
differs from what the generator would write.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

VALUES_FILE = Path(__file__).resolve().parent / "qustream" / "values.yaml"


def splice(text: str, block: str, begin: str, end: str) -> str | None:
    """``text`` with the lines from marker ``begin`` to marker ``end`` (both included) replaced
    by ``block``; None when the markers are missing or out of order."""
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        return None
    return text[:start] + block + text[text.index("\n", stop) + 1:]


def regenerate(argv: list[str] | None, *, description: str | None, block_name: str,
               module: str, update: Callable[[str], str]) -> int:
    """A generator's ``main``: rewrite the values file (``--values``, default the chart's) as
    ``update`` turns its text, when that changes it; with ``--check`` only say whether it
    would (exit 1, naming ``block_name`` and the ``module`` to run)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help="fail if values.yaml is stale")
    parser.add_argument("--values", type=Path, default=VALUES_FILE)
    args = parser.parse_args(argv)
    text = args.values.read_text()
    updated = update(text)
    if updated == text:
        return 0
    if args.check:
        print(f"{args.values}: the {block_name} block is stale; run `python -m {module}`",
              file=sys.stderr)
        return 1
    args.values.write_text(updated)
    print(f"updated {args.values}")
    return 0
