"""The replicated embedded cluster on paper: nodes, ports, rendered configs, settings that
follow the cluster size, and the in-sync verdicts (no server is started here)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from infra.local import config
from infra.local.config import ComponentLayout
from infra.local.faults import coordinator_partition, java_string_hash
from infra.local.health import kafka_verdicts
from infra.local.nodes import plan_nodes
from streams.settings import InfraSettings, Settings, load_settings
from streams.topics import CATALOGUE


def _properties(text: str) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in text.splitlines()
             if line and not line.startswith("#")]
    return {key: value for key, value in pairs}


def test_single_node_plan_is_the_historic_layout(tmp_path: Path) -> None:
    plan = plan_nodes(InfraSettings(), tmp_path)
    kafka, cassandra = plan["kafka"], plan["cassandra"]
    assert [n.name for n in kafka] == ["kafka"] and [n.name for n in cassandra] == ["cassandra"]
    assert kafka[0].layout == ComponentLayout.under(tmp_path, "kafka")
    assert cassandra[0].layout == ComponentLayout.under(tmp_path, "cassandra")
    assert (kafka[0].address, kafka[0].internal_port) == ("127.0.0.1:19092", 19093)
    assert (cassandra[0].address, cassandra[0].internal_port) == ("127.0.0.1:19042", 17000)
    assert not kafka[0].replicated and not cassandra[0].replicated


def test_replicated_plan_has_its_own_folders_and_ports(tmp_path: Path) -> None:
    infra = InfraSettings(kafka_brokers=3, cassandra_nodes=3)
    plan = plan_nodes(infra, tmp_path, tmp_path / "jars")
    single = plan_nodes(InfraSettings(), tmp_path)
    kafka, cassandra = plan["kafka"], plan["cassandra"]
    assert [n.name for n in kafka] == ["kafka-1", "kafka-2", "kafka-3"]
    assert [n.host for n in cassandra] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    assert {n.port for n in cassandra} == {19142} and {n.internal_port for n in cassandra} == {
        17100}
    assert [n.role for n in cassandra] == ["cassandra seed", "cassandra node", "cassandra node"]
    used = {(n.host, p) for n in kafka + cassandra for p in (n.port, n.internal_port)}
    assert len(used) == 12  # every listener distinct
    single_ports = {p for nodes in single.values() for n in nodes
                    for p in (n.port, n.internal_port)}
    assert not single_ports & {p for _, p in used}, "shares a port with the single-node cluster"
    for node in kafka + cassandra:
        assert node.layout.home.parent == tmp_path / f"{node.component}-x3"
        assert node.layout.libs == tmp_path / "jars" / node.component / "libs"
        assert node.layout.log_file.name == f"{node.name}.out"
    homes = {n.layout.home for n in kafka + cassandra}
    assert not homes & {n.layout.home for nodes in single.values() for n in nodes}


@given(st.integers(min_value=2, max_value=9))
def test_every_broker_is_a_voter_with_distinct_ports(brokers: int) -> None:
    infra = InfraSettings(kafka_brokers=brokers)
    ports = infra.kafka_broker_ports()
    flat = [p for pair in ports for p in pair]
    assert len(set(flat)) == len(flat) == 2 * brokers
    for node_id in range(1, brokers + 1):
        props = _properties(config.kafka_replicated_properties(
            node_id=node_id, ports=ports, data_dir=Path("/d")))
        assert props["node.id"] == str(node_id)
        assert props["process.roles"] == "broker,controller"
        voters = props["controller.quorum.voters"].split(",")
        assert voters == [f"{i}@127.0.0.1:{c}" for i, (_, c) in enumerate(ports, start=1)]
        assert props["listeners"] == (f"PLAINTEXT://127.0.0.1:{ports[node_id - 1][0]},"
                                      f"CONTROLLER://127.0.0.1:{ports[node_id - 1][1]}")
        replication = int(props["transaction.state.log.replication.factor"])
        min_isr = int(props["transaction.state.log.min.isr"])
        assert replication == int(props["offsets.topic.replication.factor"]) == min(3, brokers)
        assert min_isr == min(2, replication) <= replication
        assert int(props["min.insync.replicas"]) == min_isr == min(2, replication)
        assert props["unclean.leader.election.enable"] == "false"
        for key, value in config.KAFKA_FAILOVER.items():
            assert props[key] == str(value)


def test_failover_settings_bound_the_election() -> None:
    failover = config.KAFKA_FAILOVER
    assert failover["broker.heartbeat.interval.ms"] < failover["broker.session.timeout.ms"]
    assert failover["controller.quorum.election.timeout.ms"] < failover[
        "controller.quorum.fetch.timeout.ms"]
    assert config.kafka_failover_bound_ms() == 6000


@given(st.integers(min_value=2, max_value=9))
def test_ring_tokens_are_distinct_and_evenly_spaced(nodes: int) -> None:
    tokens = [int(config.cassandra_ring_token(i, nodes)) for i in range(1, nodes + 1)]
    assert tokens == sorted(tokens) and len(set(tokens)) == nodes
    assert tokens[0] == -(2**63) and tokens[-1] < 2**63
    gaps = {b - a for a, b in itertools.pairwise(tokens)}
    assert len(gaps) == 1


def test_ring_yaml_seeds_from_node_one_on_its_own_address(tmp_path: Path) -> None:
    for index in (1, 2, 3):
        text = config.cassandra_ring_yaml(cluster_name="ring", node_index=index, nodes=3,
                                          native_port=19142, storage_port=17100,
                                          data_root=tmp_path / str(index))
        parsed = yaml.safe_load(text)
        assert parsed == json.loads(text.split("\n", 1)[1])
        assert parsed["listen_address"] == parsed["rpc_address"] == f"127.0.0.{index}"
        assert parsed["seed_provider"][0]["parameters"][0]["seeds"] == "127.0.0.1:17100"
        assert parsed["initial_token"] == config.cassandra_ring_token(index, 3)
        assert parsed["num_tokens"] == 1 and parsed["auto_bootstrap"] is False
        assert parsed["endpoint_snitch"] == "GossipingPropertyFileSnitch"
        assert parsed["hinted_handoff_enabled"] is True
    assert "dc=datacenter1" in config.cassandra_rackdc_properties()
    layout = ComponentLayout.under(tmp_path, "cassandra-2")
    command = config.cassandra_start_command(Path("java"), heap="768m", layout=layout,
                                             initial_token="5", ring=True)
    assert "-Dcassandra.initial_token=5" in command
    assert any(arg.startswith("-Dcassandra-rackdc.properties=file://") for arg in command)


@pytest.fixture
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in [n for n in os.environ if n.startswith("QUSTREAM_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_replication_follows_the_embedded_cluster_size(_clean_env: pytest.MonkeyPatch) -> None:
    _clean_env.setenv("QUSTREAM_INFRA_KAFKA_BROKERS", "3")
    _clean_env.setenv("QUSTREAM_INFRA_CASSANDRA_NODES", "3")
    settings = load_settings()
    assert settings.kafka_bootstrap() == "127.0.0.1:19192,127.0.0.1:19194,127.0.0.1:19196"
    assert settings.cassandra_endpoint() == (["127.0.0.1", "127.0.0.2", "127.0.0.3"], 19142)
    assert (settings.kafka.replication_factor, settings.cassandra.replication_factor) == (3, 3)
    configs = [spec.configs(settings.kafka.replication_factor) for spec in CATALOGUE]
    assert {c["min.insync.replicas"] for c in configs} == {"2"}

    _clean_env.setenv("QUSTREAM_KAFKA_REPLICATION_FACTOR", "2")
    assert load_settings().kafka.replication_factor == 2  # explicit wins
    _clean_env.setenv("QUSTREAM_INFRA_KAFKA_BROKERS", "1")
    _clean_env.delenv("QUSTREAM_KAFKA_REPLICATION_FACTOR")
    assert load_settings().kafka.replication_factor == 1
    assert Settings().kafka.replication_factor == 1


def test_child_processes_get_the_replicated_cluster(_clean_env: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    parent = Settings(state_dir=tmp_path,
                      infra=InfraSettings(kafka_brokers=3, cassandra_nodes=3))
    env = parent.to_env()
    for key in list(env):
        _clean_env.setenv(key, env[key])
    child = load_settings()
    assert child.uses_external_kafka and child.uses_external_cassandra
    assert child.kafka_bootstrap() == parent.kafka_bootstrap()
    assert child.cassandra_endpoint() == parent.cassandra_endpoint()
    assert child.kafka.replication_factor == child.cassandra.replication_factor == 3


def _partition(leader: int, replicas: list[int], isrs: list[int]) -> SimpleNamespace:
    return SimpleNamespace(leader=leader, replicas=replicas, isrs=isrs)


def test_kafka_verdicts_flag_brokers_out_of_the_isr(tmp_path: Path) -> None:
    nodes = plan_nodes(InfraSettings(kafka_brokers=3), tmp_path)["kafka"]
    metadata = SimpleNamespace(brokers={1: None, 2: None, 3: None}, topics={
        "a": SimpleNamespace(partitions={0: _partition(1, [1, 2, 3], [1, 3]),
                                         1: _partition(3, [3, 1, 2], [3, 1, 2])})})
    verdicts = kafka_verdicts(metadata, nodes)
    assert verdicts["kafka-1"].in_sync and verdicts["kafka-3"].in_sync
    assert not verdicts["kafka-2"].in_sync
    assert verdicts["kafka-2"].detail == "leads 0, 1/2 replicas in ISR"
    del metadata.brokers[2]
    assert kafka_verdicts(metadata, nodes)["kafka-2"].detail.startswith("not registered")


@pytest.mark.parametrize("text, expected", [
    ("", 0), ("hello", 99162322), ("QuStream", -1615691036),
    ("polygenelubricants", -(2**31)),  # Java's famous MIN_VALUE hash
    ("é€😀", 16752006),  # UTF-16 code units, surrogate pair included
])
def test_java_string_hash(text: str, expected: int) -> None:
    assert java_string_hash(text) == expected


@given(st.text(max_size=40), st.integers(min_value=1, max_value=64))
def test_coordinator_partition_is_in_range(key: str, partitions: int) -> None:
    assert 0 <= coordinator_partition(key, partitions) < partitions
    assert coordinator_partition("polygenelubricants", partitions) == 0
