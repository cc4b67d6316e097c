"""Longer kill -9 runs of the user database (``make soak``): more commands, more kills."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cassandra.cluster import Session

from streams.settings import Settings
from tests.integration.test_users_pipeline import run_with_kills, users_settings

pytestmark = pytest.mark.integration
__all__ = ["users_settings"]  # the fixture, re-exported for pytest


@pytest.mark.parametrize("seed", [101, 202])
def test_users_survive_many_kills(users_settings: Settings, cassandra_session: Session,
                                  tmp_path: Path, seed: int) -> None:
    kills = int(os.environ.get("QUSTREAM_USERS_SOAK_KILLS", "8"))
    run_with_kills(users_settings, cassandra_session, tmp_path, users=200, commands=30_000,
                   kills=kills, seed=seed)
