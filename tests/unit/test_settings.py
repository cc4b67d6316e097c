"""Settings: environment over file over defaults, port validation, external cluster detection."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.settings import Settings, SettingsError, load_settings

_ENV_NAMES = ("QUSTREAM_CONFIG", "QUSTREAM_STATE_DIR", "QUSTREAM_TOPIC_PREFIX",
              "QUSTREAM_KAFKA_BOOTSTRAP_SERVERS", "QUSTREAM_CASSANDRA_CONTACT_POINTS",
              "QUSTREAM_CASSANDRA_PORT", "QUSTREAM_INFRA_KAFKA_PORT", "QUSTREAM_INFRA_JAVA_HOME")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's or CI's QUSTREAM_* variables must not leak into these expectations.
    for name in _ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "qustream.toml"
    path.write_text(text)
    return path


def test_defaults_use_the_embedded_cluster() -> None:
    settings = load_settings()
    assert not settings.uses_external_kafka
    assert not settings.uses_external_cassandra
    assert settings.kafka_bootstrap() == "127.0.0.1:19092"
    assert settings.cassandra_endpoint() == (["127.0.0.1"], 19042)
    assert settings.state_dir == Path(".qustream")


def test_file_values_apply(tmp_path: Path) -> None:
    path = _config(tmp_path, 'topic_prefix = "file."\n[infra]\nkafka_port = 20001\n'
                             '[kafka]\nbootstrap_servers = "file-host:9092"\n')
    settings = load_settings(path)
    assert settings.topic_prefix == "file."
    assert settings.infra.kafka_port == 20001
    assert settings.kafka_bootstrap() == "file-host:9092"


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _config(tmp_path, 'topic_prefix = "file."\nstate_dir = "/from/file"\n'
                             '[infra]\nkafka_port = 20001\n'
                             '[kafka]\nbootstrap_servers = "file-host:9092"\n')
    monkeypatch.setenv("QUSTREAM_TOPIC_PREFIX", "env.")
    monkeypatch.setenv("QUSTREAM_STATE_DIR", "/from/env")
    monkeypatch.setenv("QUSTREAM_INFRA_KAFKA_PORT", "20002")
    monkeypatch.setenv("QUSTREAM_KAFKA_BOOTSTRAP_SERVERS", "env-host:9092")
    settings = load_settings(path)
    assert settings.topic_prefix == "env."
    assert settings.state_dir == Path("/from/env")
    assert settings.infra.kafka_port == 20002
    assert settings.kafka_bootstrap() == "env-host:9092"


def test_config_file_named_by_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUSTREAM_CONFIG", str(_config(tmp_path, 'topic_prefix = "cfg."\n')))
    assert load_settings().topic_prefix == "cfg."


@pytest.mark.parametrize("port", ["80", "0", "70000", "-1"])
def test_bad_port_is_rejected(port: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUSTREAM_INFRA_KAFKA_PORT", port)
    with pytest.raises(SettingsError, match="port"):
        load_settings()


def test_bad_port_in_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(SettingsError):
        load_settings(_config(tmp_path, "[infra]\ncassandra_native_port = 22\n"))


def test_unreadable_or_malformed_file_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path / "missing.toml")
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(_config(tmp_path, "this is = = not toml"))


def test_unknown_key_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(SettingsError):
        load_settings(_config(tmp_path, "[kafka]\nbootstrap_server = 'typo:9092'\n"))


def test_external_cluster_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUSTREAM_KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    settings = load_settings()
    assert settings.uses_external_kafka and not settings.uses_external_cassandra
    assert settings.kafka_config()["bootstrap.servers"] == "k1:9092,k2:9092"

    monkeypatch.setenv("QUSTREAM_CASSANDRA_CONTACT_POINTS", "c1, c2 ,")
    monkeypatch.setenv("QUSTREAM_CASSANDRA_PORT", "9142")
    settings = load_settings()
    assert settings.uses_external_cassandra
    assert settings.cassandra_endpoint() == (["c1", "c2"], 9142)


def test_embedded_kafka_config_resolves_loopback_address() -> None:
    settings = Settings()
    assert settings.kafka_config()["bootstrap.servers"] == "127.0.0.1:19092"
    with pytest.raises(SettingsError):
        settings.kafka.client_config()  # unresolved: nothing configured


def test_topic_names_carry_the_prefix() -> None:
    assert Settings(topic_prefix="t1234abcd.").topic("chain.blocks") == "t1234abcd.chain.blocks"
