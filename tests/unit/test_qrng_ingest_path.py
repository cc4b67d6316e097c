"""The single-lane ingest fast path: the payload's SHA-256 is computed once, off the main
thread (next to the health tests), and what is chained with it is exactly what ``extend``
computes by itself."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.entropy.chain import (
    ChainHead,
    Chunk,
    ChunkFormatError,
    HealthSummary,
    extend,
    payload_sha256,
)
from services.qrng_ingest.core.pacing import Placement
from services.qrng_ingest.publisher import PublisherStats
from services.qrng_ingest.service import IngestConfig, IngestService


@settings(max_examples=100, deadline=None)
@given(payload=st.binary(max_size=5000), seq=st.integers(0, 2**40), private=st.booleans(),
       produced=st.integers(0, 2**50), simulated=st.booleans())
def test_a_precomputed_digest_gives_the_same_chunk(
    payload: bytes, seq: int, private: bool, produced: int, simulated: bool,
) -> None:
    head = ChainHead(seq, hashlib.sha256(payload[:7]).digest())
    fields: dict[str, Any] = {"source_id": "qd-1", "private": private, "payload": payload,
                              "produced_at_ms": produced, "simulated": simulated,
                              "health": HealthSummary(3, 9, 1)}
    assert (extend(head, payload_digest=payload_sha256(payload), **fields)
            == extend(head, **fields))


@pytest.mark.parametrize("digest", [b"", bytes(31), bytes(33)])
def test_a_digest_of_the_wrong_size_is_refused(digest: bytes) -> None:
    with pytest.raises(ChunkFormatError):
        extend(ChainHead(), source_id="qd-1", private=False, payload=b"x" * 64,
               produced_at_ms=1, simulated=True, health=HealthSummary(),
               payload_digest=digest)


class _Blocks:
    """A source handing out prepared blocks, then nothing (a stall)."""

    simulated = True

    def __init__(self, blocks: list[bytes]) -> None:
        self._blocks = list(blocks)

    def read(self, size: int) -> bytes:
        return self._blocks.pop(0) if self._blocks else b""

    def describe(self) -> str:
        return "prepared blocks"

    def close(self) -> None:
        pass


class _ChainingPublisher:
    """Chains like ``ChunkPublisher.offer`` (through ``extend``), without Kafka and without
    holding one ahead (``tests/unit/test_qrng_pacing.py`` covers that)."""

    def __init__(self) -> None:
        self.head = ChainHead()
        self.chunks: list[Chunk] = []
        self.digests: list[bytes | None] = []
        self.stats = PublisherStats()
        self.heads = {False: ChainHead(), True: ChainHead()}

    def offer(self, payload: bytes, *, simulated: bool, health: HealthSummary,
              payload_digest: bytes | None = None) -> tuple[Placement, Chunk]:
        self.digests.append(payload_digest)
        chunk, self.head = extend(self.head, source_id="qd-1", private=False, payload=payload,
                                  produced_at_ms=1, simulated=simulated, health=health,
                                  payload_digest=payload_digest)
        self.heads[False] = self.head
        self.chunks.append(chunk)
        return Placement.PUBLIC, chunk

    def maybe_checkpoint(self) -> None:
        pass

    def poll(self, timeout_s: float = 0.0) -> None:
        pass

    def close(self) -> list[Chunk]:
        return []


class _Silent:
    def alert(self, *args: object) -> None:
        pass

    def heartbeat(self, *args: object) -> None:
        pass


def test_the_service_hashes_every_published_block_once_off_the_main_thread() -> None:
    size = 4096
    healthy = [os.urandom(size) for _ in range(6)]
    stuck = bytes(size)  # fails the repetition count test: dropped, never hashed
    publisher = _ChainingPublisher()
    service = IngestService(IngestConfig("qd-1", chunk_size=size, recovery_windows=1,
                                         heartbeat_ms=10**6),
                            _Blocks([*healthy[:3], stuck, *healthy[3:]]),
                            publisher,  # type: ignore[arg-type]
                            _Silent(), None)  # type: ignore[arg-type]
    report = service.run(max_bytes=7 * size, duration_s=20)
    assert report.dropped_bytes >= size
    assert stuck not in [chunk.payload for chunk in publisher.chunks]
    assert publisher.chunks, "nothing was published"
    for chunk, digest in zip(publisher.chunks, publisher.digests, strict=True):
        assert digest == hashlib.sha256(chunk.payload).digest() == chunk.payload_digest
    assert [chunk.seq for chunk in publisher.chunks] == list(range(len(publisher.chunks)))
