"""Rendering of the embedded servers' configuration and command lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from infra.local import config
from infra.local.config import ComponentLayout
from infra.local.jars import maven_command, resolved_version


def _properties(text: str) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in text.splitlines()
             if line and not line.startswith("#")]
    return {key: value for key, value in pairs}


def test_kafka_properties_single_kraft_node_on_loopback(tmp_path: Path) -> None:
    props = _properties(config.kafka_server_properties(
        port=19092, controller_port=19093, data_dir=tmp_path / "data"))
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["log.dirs"] == str(tmp_path / "data")
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "transaction.state.log.min.isr", "offsets.topic.num.partitions"):
        assert props[key] == "1", key
    assert props["group.initial.rebalance.delay.ms"] == "0"
    # retention is enforced within seconds (the topic catalogue's segment rule relies on it)
    assert int(props["log.retention.check.interval.ms"]) <= 5000
    assert int(props["log.initial.task.delay.ms"]) <= 5000


def test_every_listener_is_loopback(tmp_path: Path) -> None:
    props = _properties(config.kafka_server_properties(
        port=1, controller_port=2, data_dir=tmp_path))
    for key in ("listeners", "advertised.listeners"):
        for listener in props[key].split(","):
            assert "//127.0.0.1:" in listener
    yaml_config = yaml.safe_load(config.cassandra_yaml(
        cluster_name="c", native_port=3, storage_port=4, data_root=tmp_path))
    assert yaml_config["listen_address"] == yaml_config["rpc_address"] == "127.0.0.1"


def test_cassandra_yaml_is_a_fast_single_node(tmp_path: Path) -> None:
    text = config.cassandra_yaml(cluster_name="qustream-local", native_port=19042,
                                 storage_port=17000, data_root=tmp_path / "data")
    parsed = yaml.safe_load(text)
    assert parsed == json.loads(text.split("\n", 1)[1])  # JSON body, valid YAML as a whole
    assert parsed["num_tokens"] == 1
    assert parsed["native_transport_port"] == 19042
    assert parsed["storage_port"] == 17000
    assert parsed["seed_provider"][0]["parameters"][0]["seeds"] == "127.0.0.1:17000"
    assert parsed["auto_snapshot"] is False
    assert parsed["concurrent_compactors"] == 1
    assert parsed["data_file_directories"] == [str(tmp_path / "data" / "data")]
    assert parsed["commitlog_directory"] == str(tmp_path / "data" / "commitlog")


def test_cluster_id_is_22_url_safe_characters() -> None:
    cluster_id = config.new_kafka_cluster_id(bytes(range(16)))
    assert len(cluster_id) == 22
    assert cluster_id == "AAECAwQFBgcICQoLDA0ODw"
    with pytest.raises(ValueError):
        config.new_kafka_cluster_id(b"short")


def test_layout_and_shared_jars(tmp_path: Path) -> None:
    own = ComponentLayout.under(tmp_path / "state", "kafka")
    assert own.libs == tmp_path / "state" / "kafka" / "libs"
    assert own.pid_file == tmp_path / "state" / "kafka" / "kafka.pid"
    assert own.log_file == tmp_path / "state" / "kafka" / "logs" / "kafka.out"
    shared = ComponentLayout.under(tmp_path / "state", "kafka", tmp_path / "other")
    assert shared.libs == tmp_path / "other" / "kafka" / "libs"
    assert shared.data == tmp_path / "state" / "kafka" / "data"


def test_kafka_commands(tmp_path: Path) -> None:
    layout = ComponentLayout.under(tmp_path, "kafka")
    java = Path("/jdk/bin/java")
    start = config.kafka_start_command(java, heap="512m", layout=layout)
    assert start[0] == "/jdk/bin/java"
    assert "-Xmx512m" in start and "-Xms512m" in start
    assert start[-2:] == [config.KAFKA_MAIN, str(layout.conf / "server.properties")]
    assert start[start.index("-cp") + 1] == f"{layout.libs}/*"
    fmt = config.kafka_format_command(java, layout=layout, cluster_id="X" * 22)
    assert fmt[fmt.index(config.KAFKA_STORAGE_TOOL) + 1] == "format"
    assert fmt[fmt.index("-t") + 1] == "X" * 22


@pytest.mark.parametrize("gc, flag", [("G1", "-XX:+UseG1GC"), ("Serial", "-XX:+UseSerialGC")])
def test_cassandra_command(tmp_path: Path, gc: str, flag: str) -> None:
    layout = ComponentLayout.under(tmp_path, "cassandra")
    jamm = layout.libs / "jamm-0.4.0.jar"
    command = config.cassandra_start_command(Path("/jdk/bin/java"), heap="1g", layout=layout,
                                             gc=gc, jamm_jar=jamm)
    assert command[-1] == config.CASSANDRA_MAIN
    assert flag in command
    assert "-Dcassandra-foreground=yes" in command
    assert f"-Dcassandra.config=file://{layout.conf / 'cassandra.yaml'}" in command
    assert f"-javaagent:{jamm}" in command
    assert "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED" in command
    no_agent = config.cassandra_start_command(Path("java"), heap="1g", layout=layout)
    assert not any(arg.startswith("-javaagent") for arg in no_agent)


def test_maven_command_pins_the_plugin_and_version(tmp_path: Path) -> None:
    command = maven_command(Path("/usr/bin/mvn"), "kafka", "4.1.1", tmp_path)
    assert command[:3] == ["/usr/bin/mvn", "-B", "-q"]
    assert command[command.index("-f") + 1].endswith("kafka.pom.xml")
    assert Path(command[command.index("-f") + 1]).is_file()
    assert "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies" in command
    assert "-Dkafka.version=4.1.1" in command
    assert f"-DoutputDirectory={tmp_path}" in command


def test_resolved_version_reads_the_marker(tmp_path: Path) -> None:
    assert resolved_version(tmp_path) is None
    (tmp_path / ".resolved").write_text("5.0.8\n")
    assert resolved_version(tmp_path) == "5.0.8"


def test_a_cluster_id_never_starts_with_a_dash() -> None:
    """kafka-storage reads "--cluster-id -x..." as a missing value: such ids are drawn again."""
    draws = iter([b"\xf8" + bytes(15), b"\x01" + bytes(15)])
    from infra.local.config import fresh_kafka_cluster_id, new_kafka_cluster_id

    assert new_kafka_cluster_id(b"\xf8" + bytes(15)).startswith("-")
    cluster_id = fresh_kafka_cluster_id(lambda n: next(draws))
    assert cluster_id == new_kafka_cluster_id(b"\x01" + bytes(15))
