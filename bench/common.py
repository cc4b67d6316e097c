"""Shared by the benchmarks: the one-JSON-line result every bench prints last."""

from __future__ import annotations

import json
from typing import Any


def emit(record: dict[str, Any]) -> None:
    """Print ``record`` as one compact JSON line (the bench's last line of output)."""
    print(json.dumps(record, sort_keys=False, separators=(", ", ": ")), flush=True)
