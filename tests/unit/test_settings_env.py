"""Settings handed to a child process through QUSTREAM_* variables come back identical."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.settings import CassandraSettings, KafkaSettings, Settings, load_settings


def test_to_env_round_trips_through_load_settings(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    original = Settings(
        state_dir=tmp_path, topic_prefix="t1.",
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        cassandra=CassandraSettings(contact_points="127.0.0.1", port=2, keyspace="ks_x"),
    )
    for key, value in original.to_env().items():
        monkeypatch.setenv(key, value)
    loaded = load_settings()
    assert loaded.kafka_bootstrap() == "127.0.0.1:1"
    assert loaded.topic_prefix == "t1." and loaded.state_dir == tmp_path
    assert loaded.cassandra_endpoint() == (["127.0.0.1"], 2)
    assert loaded.cassandra.keyspace == "ks_x"


def test_to_env_without_cassandra_leaves_it_embedded(tmp_path: Path) -> None:
    env = Settings(state_dir=tmp_path).to_env()
    assert "QUSTREAM_CASSANDRA_CONTACT_POINTS" not in env
    assert env["QUSTREAM_KAFKA_BOOTSTRAP_SERVERS"].startswith("127.0.0.1:")
