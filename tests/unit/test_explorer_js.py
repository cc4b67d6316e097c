"""The explorer's JavaScript verifier (services/gateway/web/src/core) against the golden vectors
under tests/vectors/, run with Node's test runner: a change of the block format that the Python
vectors pick up fails here until the browser's decoder follows."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

WEB = Path(__file__).resolve().parents[2] / "services" / "gateway" / "web"


def test_javascript_verifier_passes_the_golden_vectors() -> None:
    node = shutil.which("node")
    assert node, "Node.js is required (make install checks for it)"
    assert (WEB / "node_modules" / "@noble" / "post-quantum").is_dir(), (
        "the explorer's npm packages are missing: make install (npm ci in services/gateway/web)")
    done = subprocess.run([node, "--test", "test/"], cwd=WEB, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "# fail 0" in done.stdout and "# pass 0" not in done.stdout
