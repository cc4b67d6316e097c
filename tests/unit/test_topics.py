"""The topic catalogue is consistent with the schemas and the design's ordering guarantees."""

from __future__ import annotations

from streams.codec import default_codec
from streams.topics import CATALOGUE, spec


def test_every_schema_named_by_a_topic_exists() -> None:
    known = set(default_codec().schema_names)
    for topic in CATALOGUE:
        assert set(topic.schemas) <= known, topic.name


def test_chain_topics_have_one_partition_for_total_order() -> None:
    assert spec("chain.consensus").partitions == 1
    assert spec("chain.blocks").partitions == 1


def test_user_commands_and_events_are_co_partitioned() -> None:
    assert spec("users.commands").partitions == spec("users.events").partitions


def test_min_insync_replicas_never_exceeds_replication_factor() -> None:
    for topic in CATALOGUE:
        assert topic.configs(1)["min.insync.replicas"] == "1"
        assert topic.configs(3)["min.insync.replicas"] == "2"
        assert topic.configs(3)["unclean.leader.election.enable"] == "false"


def test_names_are_unique() -> None:
    names = [t.name for t in CATALOGUE]
    assert len(names) == len(set(names))
