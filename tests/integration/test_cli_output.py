"""Command output off a terminal (a pipe, a file, a log): tables keep whole names, live views
print instead of staying silent."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from streams.admin import ensure_topics
from streams.settings import Settings
from streams.topics import CATALOGUE

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUSTREAM_", "COLUMNS"))}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def test_topics_list_in_a_pipe_keeps_whole_names(tmp_path: Path) -> None:
    prefix = "a-rather-long-deployment-prefix-for-a-pipe."
    done = subprocess.run([sys.executable, "-m", "streams.cli", "topics", "list"],
                          env=_env(QUSTREAM_TOPIC_PREFIX=prefix), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=True)
    for spec in CATALOGUE:
        assert f"{prefix}{spec.name}" in done.stdout
        assert spec.writer in done.stdout
    assert "…" not in done.stdout


def test_qrng_status_in_a_pipe_prints_its_table(settings: Settings, tmp_path: Path) -> None:
    ensure_topics(settings)
    process = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "qrng", "status", "--refresh", "0.5"],
        env=_env(**settings.to_env()), cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    time.sleep(8)
    process.terminate()
    out, err = process.communicate(timeout=30)
    assert out.count("QRNG sources") >= 2, (out, err)  # printed again every refresh
