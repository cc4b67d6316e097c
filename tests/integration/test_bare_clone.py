"""A bare clone validates the Helm chart: ``make lint-k8s`` in a fresh clone with nothing beside
it (no ``../shared``) passes, so everything chart validation reads is in the repository.

The clone is of the committed HEAD (uncommitted changes are not part of a clone). To keep the
test bounded it reuses this checkout's virtual environment (``make -o`` keeps make from
reinstalling it) and its pinned helm (``QUSTREAM_TOOLS_BIN``; built once by ``make tools`` if
missing, which ``make test`` has done already).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from infra.k8s.validate import helm_binary

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv"


def test_a_bare_clone_passes_make_lint_k8s(tmp_path: Path) -> None:
    assert shutil.which("git") and shutil.which("make")
    helm = helm_binary()  # this checkout's pinned helm (built on first use)
    clone = tmp_path / "x"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    assert [p.name for p in tmp_path.iterdir()] == ["x"]  # nothing beside the clone
    env = {**os.environ, "QUSTREAM_TOOLS_BIN": str(helm.parent)}
    env.pop("PYTHONPATH", None)

    where = subprocess.run(
        [str(VENV / "bin" / "python"), "-c",
         "import infra.k8s.schemas as s; print(s.CRD_DIR)"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=60, check=True)
    assert Path(where.stdout.strip()).is_relative_to(clone), where.stdout  # the clone's CRDs

    stamp = VENV / ".installed"
    result = subprocess.run(
        ["make", "--no-print-directory", "-o", str(stamp), "lint-k8s", f"VENV={VENV}"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "not found" not in output, output[-4000:]
    for profile in ("values-dev.yaml", "values-prod.yaml"):
        assert f"{profile}: " in output and "): ok" in output, output[-4000:]
