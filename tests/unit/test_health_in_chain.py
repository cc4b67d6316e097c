"""Health transparency in the chain (issue 19 item 4): every entropy reference carries the SP
800-90B summary of its chunk, the block rule refuses any that does not pass, validators refuse
a reference whose summary is not the verified chunk's, and readers get a per-source fold.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from protocol.block import BlockFormatError, Body, EntropyRef, unhealthy_entropy
from protocol.canonical import CanonicalWriter
from protocol.codec import WireError, _entropy_ref, decode_block
from protocol.entropy.chain import (
    U32_MAX,
    U64_MAX,
    ChainHead,
    Chunk,
    ChunkFormatError,
    HealthSummary,
    extend,
)
from protocol.finalized import FinalizedRecord
from protocol.pulse import SourceHealth, health_by_source
from protocol.randomness import block_randomness
from sdk.beacon import verify_pulse_document, verify_pulse_range
from sdk.errors import BlockRejectedError
from sdk.subscriber import BlockSubscriber, TrustedCheckpoint
from sdk.testing import make_local_chain, passing_health
from services.block_builder.core.proposal import InvalidBlockError
from services.block_builder.pool import EntropyPool, UnhealthyChunkError
from services.gateway.chain import compact_pulse, pulse_document
from services.qrng_ingest.core.health import HealthParameters, RctCarry, check_block
from streams.chain_wire import decode_finalized
from tests.unit.test_block import build, pool, tip, validate
from tests.unit.test_fork_verification import _NoSource
from tests.unit.test_qrng_chain import KEY, REGISTRY, _checkpoint

u32 = st.integers(0, U32_MAX)


@st.composite
def summaries(draw: Any) -> HealthSummary:
    """Any summary a test run could produce (``impossible`` is None)."""
    windows = draw(st.integers(0, 1 << 20))
    apt_window = draw(st.sampled_from([0, 512, 1024, draw(u32)]))
    return HealthSummary(
        rct_max_run=draw(u32), apt_max_count=draw(st.integers(0, apt_window)), windows=windows,
        samples=draw(st.one_of(st.just(windows * apt_window), st.integers(0, U64_MAX))),
        rct_cutoff=draw(u32), apt_cutoff=draw(u32), apt_window=apt_window,
        failures=draw(st.one_of(st.just(0), st.integers(0, windows))))


@st.composite
def passing(draw: Any) -> HealthSummary:
    rct_cutoff, apt_cutoff = draw(st.integers(2, 200)), draw(st.integers(2, 1024))
    window = draw(st.sampled_from([512, 1024]))
    windows = draw(st.integers(1, 4096))
    return HealthSummary(draw(st.integers(1, rct_cutoff - 1)),
                         draw(st.integers(1, min(apt_cutoff - 1, window))), windows,
                         windows * window, rct_cutoff, apt_cutoff, window, 0)


def _digest(source: str, seq: int) -> bytes:
    return hashlib.sha256(f"{source}/{seq}".encode()).digest()


# ------------------------------------------------------------------ encoding


def test_the_ref_encoding_by_hand() -> None:
    """The bytes docs/verify-a-pulse.md spells out: source, seq, digest, the precommitment
    (next digest, committed flag), then the summary."""
    health = HealthSummary(24, 560, 8, 8192, 31, 609, 1024, 0)
    ref = EntropyRef("qrng-0", 7, bytes(range(32)), health, bytes(range(32, 64)), True)
    tag = b"QuStream/v1/EntropyRef"
    expected = (struct.pack(">H", len(tag)) + tag + struct.pack(">I", 6) + b"qrng-0"
                + struct.pack(">Q", 7) + bytes(range(32)) + bytes(range(32, 64)) + b"\x01"
                + struct.pack(">IIIQIIII", 24, 560, 8, 8192, 31, 609, 1024, 0))
    assert ref.canonical() == expected


@settings(max_examples=200, deadline=None)
@given(health=summaries(), seq=st.integers(0, 2**63 - 1))
def test_ref_and_chunk_encodings_round_trip(health: HealthSummary, seq: int) -> None:
    ref = EntropyRef("qrng-a", seq, _digest("a", seq), health)
    assert _entropy_ref(ref.canonical()) == ref
    assert HealthSummary.from_json(health.to_json()) == health
    chunk, _ = extend(ChainHead(), source_id="qrng-a", private=False, payload=b"x" * 64,
                      produced_at_ms=5, simulated=True, health=health)
    assert Chunk.from_record(chunk.to_record()) == chunk
    # the chunk digest covers every field of the summary
    for name in ("samples", "rct_cutoff", "apt_cutoff", "apt_window", "failures"):
        value = getattr(health, name)
        changed = dataclasses.replace(health, **{name: value - 1 if value else 1})
        assume(changed.impossible() is None)
        other, _ = extend(ChainHead(), source_id="qrng-a", private=False, payload=b"x" * 64,
                          produced_at_ms=5, simulated=True, health=changed)
        assert other.chunk_digest != chunk.chunk_digest


@pytest.mark.parametrize("health", [
    HealthSummary(windows=2, failures=3),
    HealthSummary(apt_max_count=513, apt_window=512),
    HealthSummary(rct_max_run=-1),
    HealthSummary(windows=U32_MAX + 1),
    HealthSummary(samples=U64_MAX + 1),
])
def test_impossible_summaries_are_refused_everywhere(health: HealthSummary) -> None:
    with pytest.raises(BlockFormatError):
        EntropyRef("qrng-a", 0, bytes(32), health)
    good = EntropyRef("qrng-a", 0, bytes(32), passing_health())
    record = {**_chunk_record(), **{f"health_{k}": v for k, v in health.to_json().items()}}
    with pytest.raises(ChunkFormatError):
        Chunk.from_record(record)
    if health.impossible() and "u32" not in str(health.impossible()) and (
            "u64" not in str(health.impossible())):
        encoded = health.write(CanonicalWriter("EntropyRef").text("qrng-a").u64(0)
                               .raw(bytes(32), 32)).finish()
        with pytest.raises(WireError):
            decode_block(_block_bytes_with_ref(good, encoded))


def _chunk_record() -> dict[str, Any]:
    chunk, _ = extend(ChainHead(), source_id="qrng-a", private=False, payload=b"x" * 64,
                      produced_at_ms=5, simulated=True, health=passing_health())
    return chunk.to_record()


def _block_bytes_with_ref(ref: EntropyRef, replacement: bytes) -> bytes:
    """A valid block's bytes with ``ref``'s encoding swapped for ``replacement``."""
    chain_tip = tip()
    block = build(chain_tip, pool(3, {"a": range(0, 1), "b": range(0, 1)}))
    body = Body(entropy=(ref,), txs=block.body.txs)
    encoded = dataclasses.replace(block, body=body).canonical()
    assert ref.canonical() in encoded
    return encoded.replace(ref.canonical(), replacement)


# ------------------------------------------------------------------ the block rule


def _failing_variants(health: HealthSummary) -> list[HealthSummary]:
    return [
        dataclasses.replace(health, failures=1),
        dataclasses.replace(health, rct_max_run=health.rct_cutoff),
        dataclasses.replace(health, apt_max_count=health.apt_cutoff),
        dataclasses.replace(health, windows=0, samples=0),
        dataclasses.replace(health, samples=health.samples + 1),
    ]


@settings(max_examples=300, deadline=None)
@given(health=summaries())
def test_a_summary_passes_exactly_when_the_rule_holds(health: HealthSummary) -> None:
    holds = (health.failures == 0 and health.rct_max_run < health.rct_cutoff
             and health.apt_max_count < health.apt_cutoff and health.windows > 0
             and health.samples == health.windows * health.apt_window)
    assert (health.failing() is None) == holds


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(health=passing(), variant=st.integers(0, 4), which=st.sampled_from(["a", "b"]))
def test_any_failing_summary_in_a_block_is_refused(health: HealthSummary, variant: int,
                                                   which: str) -> None:
    """A block otherwise valid in every respect (roots, ranges and randomness rebuilt over the
    doctored ref) is refused by the context-free rule, under the name ``entropy_health``."""
    failing = _failing_variants(health)[variant]
    if failing.impossible() is not None:
        return  # e.g. an APT count of the cutoff above a window smaller than the cutoff
    chain_tip = tip()
    entropy = pool(3, {"a": range(0, 2), "b": range(0, 2)})
    block = _rebuilt(build(chain_tip, entropy), lambda r: dataclasses.replace(r, health=failing)
                     if r.source_id == which and r.seq == 1 else r)
    problem = block.structural_problem()
    assert problem is not None and problem.check == "entropy_health"
    assert f"'{which}'/1 did not pass its health tests" in problem.reason
    with pytest.raises(InvalidBlockError, match="did not pass its health tests"):
        validate(block, chain_tip, entropy)


def _rebuilt(block: Any, change: Any) -> Any:
    """``block`` with its entropy refs changed by ``change`` and every header field that
    depends on them (root, randomness) recomputed: only the changed values differ."""
    previous = tip()
    entropy = tuple(change(r) for r in block.body.entropy)
    body = dataclasses.replace(block.body, entropy=entropy)
    header = dataclasses.replace(
        block.header, entropy_root=body.entropy_root(),
        randomness=block_randomness(previous.previous_randomness, block.header.height, entropy))
    return type(block)(header, body)


def test_a_validator_refuses_a_ref_whose_health_is_not_the_verified_chunks() -> None:
    """Passing, well-formed, but not what the source signed: the pool's ref equality makes it
    an unverified chunk."""
    chain_tip = tip()
    entropy = pool(3, {"a": range(0, 2), "b": range(0, 2)})
    honest = build(chain_tip, entropy)
    validate(honest, chain_tip, entropy)
    doctored = _rebuilt(honest, lambda r: dataclasses.replace(
        r, health=dataclasses.replace(r.health, rct_max_run=r.health.rct_max_run - 1))
        if r.source_id == "a" and r.seq == 1 else r)
    assert doctored != honest
    assert doctored.structural_problem() is None  # nothing wrong from the block alone
    with pytest.raises(InvalidBlockError, match="chunk 'a'/1 is not verified"):
        validate(doctored, chain_tip, entropy)


def test_the_builder_carries_the_verified_chunks_health_and_refuses_unhealthy_chunks() -> None:
    """Through the real pool: refs carry the signed summary; a chunk whose summary fails is
    never pooled, nor anything after it, and the source is reported."""
    summaries_ = [passing_health(1, rct_max_run=3 + i) for i in range(3)]
    summaries_.append(dataclasses.replace(passing_health(1), failures=1))
    summaries_.append(passing_health(1))
    head, chunks = ChainHead(), []
    for health in summaries_:
        chunk, head = extend(head, source_id="qd-1", private=False, payload=bytes(128),
                             produced_at_ms=1, simulated=True, health=health)
        chunks.append(chunk)
    entropy_pool = EntropyPool(REGISTRY)
    for chunk in chunks:
        entropy_pool.accept_chunk(chunk)
    with pytest.raises(UnhealthyChunkError, match="qd-1#3 did not pass its health tests"):
        entropy_pool.accept_checkpoint(_checkpoint(0, head, KEY))
    refs = entropy_pool.proposer_view(0).verified_after("qd-1", -1)
    assert [r.seq for r in refs] == [0, 1, 2]
    assert [r.health for r in refs] == summaries_[:3]
    assert "qd-1" in entropy_pool.unjoinable
    assert entropy_pool.known(refs[0])
    assert not entropy_pool.known(dataclasses.replace(refs[0], health=passing_health(2)))


# ------------------------------------------------------------------ the ingest fills it


def test_the_ingest_summary_is_what_the_tests_saw() -> None:
    params = HealthParameters.derive(1, 30, binary=True)
    block = np.random.default_rng(7).integers(0, 256, 128 * 16, dtype=np.uint8).tobytes()
    health, _ = check_block(params, RctCarry(), block)
    summary = health.summary(params)
    assert summary == HealthSummary(health.rct_max_run, health.apt_max_count, 16, 16 * 1024,
                                    31, 609, 1024, 0)
    assert summary.failing() is None
    stuck, _ = check_block(params, RctCarry(), bytes(128 * 4))
    failed = stuck.summary(params)
    assert failed.failures == 4 and failed.failing() is not None


# ------------------------------------------------------------------ the per-source fold


def _naive_fold(entropy: Sequence[EntropyRef]) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[HealthSummary]] = {}
    for ref in entropy:
        h = ref.health
        groups.setdefault((ref.source_id, h.rct_cutoff, h.apt_cutoff, h.apt_window), []).append(h)
    return [{"source_id": key[0], "rct_cutoff": key[1], "apt_cutoff": key[2],
             "apt_window": key[3], "chunks": len(hs), "windows": sum(h.windows for h in hs),
             "samples": sum(h.samples for h in hs),
             "rct_max_run": max(h.rct_max_run for h in hs),
             "apt_max_count": max(h.apt_max_count for h in hs),
             "failures": sum(h.failures for h in hs)} for key, hs in sorted(groups.items())]


@settings(max_examples=150, deadline=None)
@given(items=st.lists(st.tuples(st.sampled_from(["qrng-a", "qrng-b", "qd.lane-0"]),
                                st.one_of(passing(), summaries())), max_size=12))
def test_the_aggregate_is_the_fold_of_the_refs(items: list[tuple[str, HealthSummary]]) -> None:
    entropy = [EntropyRef(source, seq, _digest(source, seq), health)
               for seq, (source, health) in enumerate(items)]
    folded = health_by_source(entropy)
    assert [s.to_json() for s in folded] == _naive_fold(entropy)
    assert all(SourceHealth.from_json(s.to_json()) == s for s in folded)
    if unhealthy_entropy(entropy) is None:
        assert all(s.failing() is None for s in folded)


# ------------------------------------------------------------------ the SDK refuses


@pytest.fixture(scope="module")
def local_chain(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_local_chain(tmp_path_factory.mktemp("health"), 4, sources=3)


def _range_document(records: Sequence[bytes], first: int, last: int) -> dict[str, Any]:
    decoded: list[FinalizedRecord] = [decode_finalized(raw) for raw in records]
    previous = decoded[first - 2]
    return {
        "previous_header": base64.b64encode(previous.block.header.canonical()).decode(),
        "commit": base64.b64encode(decoded[last - 1].commit.canonical()).decode(),
        "pulses": [compact_pulse(decoded[h - 1]) for h in range(first, last + 1)],
    }


def test_the_sdk_hands_over_the_recomputed_fold(local_chain: Any) -> None:
    anchor = TrustedCheckpoint.from_genesis(local_chain.genesis)
    document = _range_document(local_chain.records, 2, 4)
    pulses = verify_pulse_range(document, anchor.next_validators)
    for pulse, item in zip(pulses, document["pulses"], strict=True):
        assert [s.to_json() for s in pulse.health] == item["health"]
        assert [s.chunks for s in pulse.health] == [1, 1, 1]  # one chunk per source and block
        assert all(s.failing() is None for s in pulse.health)


@pytest.mark.parametrize("change", ["windows", "drop", "failures", "ref"])
def test_the_sdk_refuses_a_summary_that_disagrees(local_chain: Any, change: str) -> None:
    anchor = TrustedCheckpoint.from_genesis(local_chain.genesis)
    document = copy.deepcopy(_range_document(local_chain.records, 2, 4))
    item = document["pulses"][1]
    if change == "windows":
        item["health"][0]["windows"] += 1
    elif change == "drop":
        item["health"].pop()
    elif change == "failures":
        item["health"][0]["failures"] = 1
    else:  # a ref's summary: hashed into the entropy root, so the root no longer matches
        item["entropy"][0][5]["rct_max_run"] -= 1
    with pytest.raises(BlockRejectedError):
        verify_pulse_range(document, anchor.next_validators)


def test_the_sdk_refuses_a_signed_block_with_failing_entropy(tmp_path: Path) -> None:
    """Validators that signed a block with a failing summary do not make it usable: the SDK
    (beacon documents and the subscriber alike) refuses it by the block rule."""
    def health(height: int, source: str, seq: int) -> HealthSummary:
        if height == 3 and source == "qrng-1":
            return dataclasses.replace(passing_health(), rct_max_run=31)
        return passing_health()

    bad = make_local_chain(tmp_path, 4, health=health)
    anchor = TrustedCheckpoint.from_genesis(bad.genesis)
    document = _range_document(bad.records, 2, 4)
    with pytest.raises(BlockRejectedError, match="RCT: a run of 31 reaches the cutoff 31"):
        verify_pulse_range(document, anchor.next_validators)
    subscriber = BlockSubscriber(_NoSource(), genesis=bad.genesis)  # type: ignore[arg-type]
    with pytest.raises(BlockRejectedError, match="did not pass its health tests"):
        for position, raw in enumerate(bad.records):
            subscriber.verify(raw, position)


def test_a_single_pulse_document_checks_its_health(local_chain: Any) -> None:
    anchor = TrustedCheckpoint.from_genesis(local_chain.genesis)
    records = [decode_finalized(raw) for raw in local_chain.records]
    document = pulse_document(records[2].chain_id, records[2], records[1], bytes(64))
    document = json.loads(json.dumps(document))
    pulse = verify_pulse_document(document, anchor.next_validators)
    assert [s.to_json() for s in pulse.health] == document["health"]
    document["health"][0]["apt_max_count"] += 1
    with pytest.raises(BlockRejectedError, match="not the fold"):
        verify_pulse_document(document, anchor.next_validators)
