"""Keyed records go where Java's default partitioner puts them (murmur2), not librdkafka's CRC32.

``java_partition`` is written from Kafka's ``Utils.murmur2`` / ``BuiltInPartitioner`` contract
(MurmurHash2, seed 0x9747b28c, little-endian 4-byte blocks, positive part modulo the partition
count) and checked against the vectors of Kafka's own ``UtilsTest.testMurmur2``. The integration
test (tests/integration/test_kafka_conventions.py) checks real deliveries against it, and the
Java interop test against Java's own partitioner.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.kafka import producer_config
from streams.settings import KafkaSettings, Settings, SettingsError, load_settings

M = 0x5BD1E995
MASK32 = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 as a signed 32-bit int (what Java's ``Utils.murmur2`` returns)."""
    length = len(data)
    h = (0x9747B28C ^ length) & MASK32
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * M) & MASK32
        k ^= k >> 24
        k = (k * M) & MASK32
        h = (h * M) & MASK32
        h ^= k
    tail = data[length - length % 4:]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * M) & MASK32
    h ^= h >> 13
    h = (h * M) & MASK32
    h ^= h >> 15
    return h - (1 << 32) if h >> 31 else h


def java_partition(key: bytes, partitions: int) -> int:
    """Java's default partition for a keyed record: ``toPositive(murmur2(key)) % partitions``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@pytest.mark.parametrize(("key", "expected"), [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
])
def test_murmur2_matches_kafkas_own_vectors(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=1000))
def test_java_partition_is_in_range(key: bytes, partitions: int) -> None:
    assert 0 <= java_partition(key, partitions) < partitions


def test_every_producer_is_configured_for_murmur2() -> None:
    config = producer_config(Settings())
    assert config["partitioner"] == "murmur2_random"
    # an override that changes anything else keeps the partitioner
    assert producer_config(Settings(), **{"linger.ms": 1})["partitioner"] == "murmur2_random"


def test_an_unmigrated_deployment_can_keep_the_old_placement(
        monkeypatch: pytest.MonkeyPatch) -> None:
    legacy = Settings(kafka=KafkaSettings(partitioner="consistent_random"))
    assert producer_config(legacy)["partitioner"] == "consistent_random"
    assert legacy.to_env()["QUSTREAM_KAFKA_PARTITIONER"] == "consistent_random"
    monkeypatch.setenv("QUSTREAM_KAFKA_PARTITIONER", "crc32")
    with pytest.raises(SettingsError, match=r"(?i)partitioner"):
        load_settings()
