"""Publisher pieces that need no Kafka: the chunk fast-path encoder and the state file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.entropy.chain import ZERO_DIGEST, ChainHead, Chunk, HealthSummary, extend
from services.qrng_ingest.publisher import (
    IN_FLIGHT_BYTES,
    RECORD_OVERHEAD,
    ChainPosition,
    ChunkEncoder,
    ResumeError,
    StateFile,
    producer_tuning,
)
from streams.codec import default_codec
from streams.topics import MAX_MESSAGE_BYTES


@settings(max_examples=200, deadline=None)
@given(
    source_id=st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
                      max_size=40),
    seq=st.integers(0, 2**63 - 1), payload=st.binary(max_size=3000),
    produced=st.integers(-(2**63), 2**63 - 1), simulated=st.booleans(), private=st.booleans(),
    health=st.tuples(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1),
                     st.integers(0, 2**31 - 1), st.integers(0, 2**63 - 1),
                     st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1),
                     st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)).filter(
        lambda h: HealthSummary(*h).impossible() is None),
    next_digest=st.one_of(st.just(ZERO_DIGEST), st.binary(min_size=32, max_size=32)),
)
def test_fast_encoder_equals_the_codec(
    source_id: str, seq: int, payload: bytes, produced: int, simulated: bool, private: bool,
    health: tuple[int, ...], next_digest: bytes,
) -> None:
    chunk = Chunk(source_id, private, seq, os.urandom(32), os.urandom(32), os.urandom(32),
                  payload, produced, simulated, HealthSummary(*health), next_digest)
    codec = default_codec()
    encoded = ChunkEncoder().encode(chunk)
    assert encoded == codec.encode("EntropyChunkPublished", chunk.to_record())
    assert Chunk.from_record(codec.decode(encoded).record) == chunk


def test_state_file_round_trip_and_owner_check(tmp_path: Path) -> None:
    _, head = extend(ChainHead(), source_id="qd-1", private=False, payload=b"x" * 64,
                     produced_at_ms=1, simulated=True, health=HealthSummary())
    state = StateFile(tmp_path / "qrng" / "qd-1.json", "qd-1")
    assert state.load() == {}
    positions = {False: ChainPosition(head, 0, 3, 41), True: ChainPosition()}
    state.save(positions)
    assert state.load() == positions
    with pytest.raises(ResumeError):
        StateFile(state.path, "someone-else").load()
    state.path.write_text("{not json")
    with pytest.raises(ResumeError):
        state.load()


@settings(max_examples=200, deadline=None)
@given(chunk_size=st.integers(1, MAX_MESSAGE_BYTES - RECORD_OVERHEAD))
def test_producer_tuning_keeps_what_is_in_flight_inside_the_socket_buffer(
    chunk_size: int,
) -> None:
    # More in flight than the socket can take made librdkafka's broker thread spin (4-5 ms of
    # CPU per MB, docs/performance.md); idempotence allows 1 to 5 requests in flight.
    tuning = producer_tuning(chunk_size)
    in_flight = tuning["max.in.flight.requests.per.connection"]
    request = max(tuning["batch.size"], chunk_size + RECORD_OVERHEAD)
    assert 1 <= in_flight <= 5
    assert in_flight == 1 or in_flight * request <= IN_FLIGHT_BYTES
    assert tuning["socket.send.buffer.bytes"] >= IN_FLIGHT_BYTES
    assert tuning["batch.size"] <= MAX_MESSAGE_BYTES
    assert producer_tuning(1 << 20)["max.in.flight.requests.per.connection"] == 2  # default
