"""Hash chain, checkpoints, the verifier's rejections, quarantine and liveness decisions."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace

import numpy as np
import pytest

from protocol.entropy.chain import (
    ZERO_DIGEST,
    ChainHead,
    Checkpoint,
    CheckpointPolicy,
    Chunk,
    ChunkFormatError,
    HealthSummary,
    extend,
    sign_checkpoint,
)
from protocol.entropy.registry import RegistryError, SourceRegistry, SourceRegistryEntry
from protocol.entropy.verifier import (
    BadSignatureError,
    ChainAnchor,
    ChainVerifier,
    CheckpointRangeError,
    ConflictingChunkError,
    DigestMismatchError,
    DuplicateChunkError,
    PendingLimitError,
    SequenceGapError,
    SimulatedDataError,
    UnknownSourceError,
)
from protocol.keys import SigningKey
from services.qrng_ingest.core.health import BlockHealth, HealthParameters
from services.qrng_ingest.core.liveness import AlertKind, LivenessPolicy, LivenessState, assess
from services.qrng_ingest.core.quarantine import (
    HealthState,
    QuarantinePolicy,
    QuarantineState,
    TransitionKind,
    evolve,
)
from streams.codec import default_codec

KEY = SigningKey.from_seed(bytes(range(32)))
OTHER = SigningKey.from_seed(bytes(32))
REGISTRY = SourceRegistry([SourceRegistryEntry("qd-1", KEY.public_key, simulated=True)])


def _chain(count: int, *, start: ChainHead | None = None, private: bool = False,
           simulated: bool = True) -> tuple[list[Chunk], ChainHead]:
    head = start or ChainHead()
    chunks = []
    for i in range(count):
        chunk, head = extend(head, source_id="qd-1", private=private,
                             payload=hashlib.sha256(bytes([i, head.next_seq % 256])).digest() * 4,
                             produced_at_ms=1_700_000_000_000 + i, simulated=simulated,
                             health=HealthSummary(3, 12, 1, 1024, 31, 609, 1024, 0))
        chunks.append(chunk)
    return chunks, head


def _checkpoint(first: int, head: ChainHead, key: SigningKey = KEY,
                private: bool = False) -> Checkpoint:
    return sign_checkpoint(key, source_id="qd-1", private=private, first_seq=first, head=head,
                           signed_at_ms=1_700_000_000_999)


def test_chain_links_and_golden_digest() -> None:
    chunks, head = _chain(3)
    assert [c.seq for c in chunks] == [0, 1, 2]
    assert chunks[0].prev_digest == ZERO_DIGEST
    assert chunks[1].prev_digest == chunks[0].chunk_digest
    assert head == ChainHead(3, chunks[2].chunk_digest)
    assert chunks[0].payload_digest == hashlib.sha256(chunks[0].payload).digest()
    # Golden vector: changing the canonical chunk encoding must be a conscious decision.
    assert chunks[0].chunk_digest.hex() == GOLDEN_FIRST_DIGEST


# Changed when the health summary grew samples, cutoffs, window and failures (issue 19 item
# 4), and again when chunks gained next_digest (item 1): the digest covers them, so every
# chunk digest changed with them.
GOLDEN_FIRST_DIGEST = "be0b74d63fd7c508cf06165e3c1c187f63cf7b1f1fb5834dc30fab1f8b652644"


def test_records_round_trip_through_avro() -> None:
    codec = default_codec()
    chunks, head = _chain(2)
    decoded = codec.decode(codec.encode("EntropyChunkPublished", chunks[1].to_record()),
                           expected="EntropyChunkPublished")
    assert Chunk.from_record(decoded.record) == chunks[1]
    checkpoint = _checkpoint(0, head)
    decoded = codec.decode(codec.encode("EntropyCheckpointSigned", checkpoint.to_record()))
    assert Checkpoint.from_record(decoded.record) == checkpoint
    with pytest.raises(ChunkFormatError):
        Chunk.from_record({**chunks[0].to_record(), "prev_digest": b"short"})


def test_verifier_accepts_only_checkpointed_chunks_in_order() -> None:
    chunks, head = _chain(5)
    verifier = ChainVerifier(REGISTRY, allow_mid_stream=False)
    for chunk in chunks[:3]:
        assert verifier.accept_chunk(chunk) == ()
    middle = ChainHead(3, chunks[2].chunk_digest)
    assert verifier.accept_checkpoint(_checkpoint(0, middle)) == tuple(chunks[:3])
    for chunk in chunks[3:]:
        verifier.accept_chunk(chunk)
    assert verifier.accept_checkpoint(_checkpoint(3, head)) == tuple(chunks[3:])
    assert verifier.verified_seq("qd-1") == 4
    assert verifier.accept_checkpoint(_checkpoint(3, head)) == ()  # redelivered: harmless
    anchor = verifier.anchor("qd-1")
    assert anchor == ChainAnchor("qd-1", False, 4, chunks[4].chunk_digest)


def test_verifier_rejections_are_typed_and_leave_state_unchanged() -> None:
    chunks, head = _chain(4)
    verifier = ChainVerifier(REGISTRY, allow_mid_stream=False)
    with pytest.raises(SequenceGapError):
        verifier.accept_chunk(chunks[1])
    verifier.accept_chunk(chunks[0])
    with pytest.raises(DuplicateChunkError):
        verifier.accept_chunk(chunks[0])
    forged, _ = extend(ChainHead(), source_id="qd-1", private=False, payload=b"evil" * 8,
                       produced_at_ms=1, simulated=True, health=HealthSummary())
    assert verifier.accept_chunk(forged) == ()  # competes with chunk 0 until a checkpoint
    with pytest.raises(DigestMismatchError):
        verifier.accept_chunk(replace(chunks[1], payload=b"x" * len(chunks[1].payload)))
    with pytest.raises(DigestMismatchError):
        verifier.accept_chunk(replace(chunks[1], produced_at_ms=0))
    with pytest.raises(UnknownSourceError):
        verifier.accept_chunk(replace(chunks[1], source_id="nobody"))
    for chunk in chunks[1:]:
        verifier.accept_chunk(chunk)
    with pytest.raises(BadSignatureError):  # forged checkpoint: wrong key
        verifier.accept_checkpoint(_checkpoint(0, head, key=OTHER))
    bad = _checkpoint(0, head)
    with pytest.raises(BadSignatureError):
        verifier.accept_checkpoint(replace(bad, last_seq=2))
    with pytest.raises(CheckpointRangeError):
        verifier.accept_checkpoint(_checkpoint(0, ChainHead(9, head.digest)))
    with pytest.raises(DigestMismatchError):
        verifier.accept_checkpoint(_checkpoint(0, ChainHead(4, bytes(32))))
    assert verifier.accept_checkpoint(bad) == tuple(chunks)
    assert verifier.take_discarded() == (forged,)  # the checkpoint decided against it
    # a replay of a verified chunk, identical or altered, is still refused
    with pytest.raises(DuplicateChunkError):
        verifier.accept_chunk(chunks[2])
    with pytest.raises(ConflictingChunkError):
        verifier.accept_chunk(_relinked(forged, chunks[1], 2))


def _relinked(template: Chunk, previous: Chunk, seq: int) -> Chunk:
    """A well-formed chunk at ``seq`` after ``previous`` with other bytes (a forged replay)."""
    chunk, _ = extend(ChainHead(seq, previous.chunk_digest), source_id="qd-1", private=False,
                      payload=template.payload, produced_at_ms=5, simulated=True,
                      health=HealthSummary())
    return chunk


def test_chunk_signed_by_an_unregistered_key_never_verifies() -> None:
    chunks, head = _chain(2)
    verifier = ChainVerifier(REGISTRY)
    for chunk in chunks:
        verifier.accept_chunk(chunk)
    with pytest.raises(BadSignatureError):
        verifier.accept_checkpoint(_checkpoint(0, head, key=OTHER))
    assert verifier.pending_count("qd-1") == 2


def test_mid_stream_start_and_anchor_resume() -> None:
    chunks, head = _chain(6)
    verifier = ChainVerifier(REGISTRY)  # joins at seq 2: earlier data expired
    for chunk in chunks[2:]:
        verifier.accept_chunk(chunk)
    assert verifier.accept_checkpoint(_checkpoint(0, head)) == tuple(chunks[2:])
    resumed = ChainVerifier(REGISTRY, anchors=(ChainAnchor("qd-1", False, 3,
                                                           chunks[3].chunk_digest),),
                            allow_mid_stream=False)
    with pytest.raises(DuplicateChunkError):
        resumed.accept_chunk(chunks[3])
    resumed.accept_chunk(chunks[4])
    resumed.accept_chunk(chunks[5])
    assert resumed.accept_checkpoint(_checkpoint(4, head)) == tuple(chunks[4:])


def test_checkpoint_must_not_leave_pending_chunks_uncovered() -> None:
    chunks, head = _chain(4)
    verifier = ChainVerifier(REGISTRY, allow_mid_stream=False)
    verifier.accept_chunk(chunks[0])
    verifier.accept_checkpoint(_checkpoint(0, ChainHead(1, chunks[0].chunk_digest)))
    for chunk in chunks[1:]:
        verifier.accept_chunk(chunk)
    with pytest.raises(CheckpointRangeError):
        verifier.accept_checkpoint(_checkpoint(2, head))


def test_private_pool_is_its_own_chain_and_simulated_needs_registration() -> None:
    public, _ = _chain(2)
    private, private_head = _chain(2, private=True)
    verifier = ChainVerifier(REGISTRY, allow_mid_stream=False)
    for chunk in public + private:
        verifier.accept_chunk(chunk)
    assert verifier.accept_checkpoint(_checkpoint(0, private_head, private=True)) == tuple(
        private)
    assert verifier.verified_seq("qd-1", private=False) == -1
    hardware = SourceRegistry([SourceRegistryEntry("qd-1", KEY.public_key, simulated=False)])
    with pytest.raises(SimulatedDataError):
        ChainVerifier(hardware).accept_chunk(public[0])
    real, _ = _chain(1, simulated=False)
    assert ChainVerifier(hardware).accept_chunk(real[0]) == ()


def test_pending_is_bounded() -> None:
    chunks, _ = _chain(3)
    verifier = ChainVerifier(REGISTRY, max_pending=2)
    verifier.accept_chunk(chunks[0])
    verifier.accept_chunk(chunks[1])
    with pytest.raises(PendingLimitError):
        verifier.accept_chunk(chunks[2])


def test_registry_round_trip_and_checks() -> None:
    text = REGISTRY.to_json()
    assert SourceRegistry.from_json(text)["qd-1"].public_key == KEY.public_key
    entry = REGISTRY["qd-1"].to_json_dict()
    with pytest.raises(RegistryError):
        SourceRegistryEntry.from_json_dict({**entry, "address": "00" * 20})
    with pytest.raises(RegistryError):
        SourceRegistry([REGISTRY["qd-1"], REGISTRY["qd-1"]])
    with pytest.raises(RegistryError):
        SourceRegistryEntry("bad id with spaces", KEY.public_key)


def test_checkpoint_policy() -> None:
    policy = CheckpointPolicy(every_chunks=4, every_ms=100)
    assert not policy.due(0, 10_000)
    assert policy.due(4, 0)
    assert policy.due(1, 100)
    assert not policy.due(3, 99)


def _health(failed: list[bool], test: str = "RCT") -> BlockHealth:
    flags = np.array(failed, dtype=bool)
    none = np.zeros(len(failed), dtype=bool)
    return BlockHealth(len(failed), flags if test == "RCT" else none,
                       flags if test == "APT" else none, 2, 3)


def test_quarantine_state_machine() -> None:
    params = HealthParameters.derive(8, 30, binary=False)
    policy = QuarantinePolicy(params.startup_windows, recovery_windows=5)
    state = QuarantineState()
    state, verdict = evolve(policy, state, _health([False]))
    assert state.health is HealthState.STARTUP and not verdict.publish
    state, verdict = evolve(policy, state, _health([False]))
    assert state.health is HealthState.HEALTHY and not verdict.publish
    assert verdict.transitions[0].kind is TransitionKind.STARTUP_PASSED
    state, verdict = evolve(policy, state, _health([False, False]))
    assert verdict.publish and verdict.transitions == ()
    state, verdict = evolve(policy, state, _health([False, True, False], "APT"))
    assert not verdict.publish and state.health is HealthState.QUARANTINED
    assert verdict.transitions[0].kind is TransitionKind.HEALTH_FAILED
    assert verdict.transitions[0].tests == ("APT",)
    assert state.passing_run == 1
    state, verdict = evolve(policy, state, _health([False, False, True, False]))
    assert state.passing_run == 1 and verdict.transitions == ()  # no repeated alert
    state, verdict = evolve(policy, state, _health([False] * 4))
    assert state.health is HealthState.HEALTHY and not verdict.publish
    assert verdict.transitions[0].kind is TransitionKind.RECOVERED
    state, verdict = evolve(policy, state, _health([False]))
    assert verdict.publish


def test_startup_failure_quarantines() -> None:
    policy = QuarantinePolicy(2, recovery_windows=3)
    state, verdict = evolve(policy, QuarantineState(), _health([True, False]))
    assert state.health is HealthState.QUARANTINED
    assert verdict.transitions[0].kind is TransitionKind.HEALTH_FAILED


def test_liveness_alerts_once_per_condition() -> None:
    policy = LivenessPolicy(rate_floor_bytes_per_s=1000, stall_after_ms=500)
    state = LivenessState()
    state, alerts = assess(policy, state, now_ms=1000, last_data_ms=900, bytes_per_s=10)
    assert [a.kind for a in alerts] == [AlertKind.RATE_BELOW_FLOOR]
    state, alerts = assess(policy, state, now_ms=1100, last_data_ms=1000, bytes_per_s=10)
    assert alerts == ()
    state, alerts = assess(policy, state, now_ms=2000, last_data_ms=1000, bytes_per_s=0)
    assert [a.kind for a in alerts] == [AlertKind.STALLED]
    state, alerts = assess(policy, state, now_ms=2100, last_data_ms=2090, bytes_per_s=5000)
    assert [a.kind for a in alerts] == [AlertKind.RECOVERED]  # the stall superseded the floor
    assert state == LivenessState()


def test_random_payload_chain_is_stable() -> None:
    payload = os.urandom(4096)
    one, _ = extend(ChainHead(), source_id="qd-1", private=False, payload=payload,
                    produced_at_ms=1, simulated=False, health=HealthSummary())
    two, _ = extend(ChainHead(), source_id="qd-1", private=False, payload=payload,
                    produced_at_ms=1, simulated=False, health=HealthSummary())
    assert one == two
