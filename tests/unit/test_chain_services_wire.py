"""Wire codec and pool units of the chain services (no Kafka)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.block import EntropyRef
from protocol.chain import ChainTip
from protocol.codec import WireError, decode_block, decode_commit
from protocol.finalized import FinalizedRecord
from sdk.testing import passing_health
from services.block_builder.pool import EntropyPool
from streams.chain_wire import decode_finalized, encode_finalized
from tests.support.sim import SimConfig, simulate


@pytest.fixture(scope="module")
def blocks() -> dict[int, object]:
    return dict(simulate(SimConfig(seed=3, heights=4)).blocks)


def test_blocks_round_trip(blocks: dict[int, object]) -> None:
    for block in blocks.values():
        assert decode_block(block.canonical()) == block  # type: ignore[attr-defined]
        commit = block.body.last_commit  # type: ignore[attr-defined]
        if commit is not None:
            assert decode_commit(commit.canonical()) == commit


def test_finalized_record_round_trip_and_tamper(blocks: dict[int, object]) -> None:
    block = blocks[3]
    commit = blocks[4].body.last_commit  # type: ignore[attr-defined]
    record = FinalizedRecord("qustream-sim", block, commit, bytes(32), 7, 1, 2)  # type: ignore[arg-type]
    data = encode_finalized(record)
    assert decode_finalized(data) == record
    with pytest.raises(WireError):
        decode_finalized(data[:-3])
    with pytest.raises(WireError):
        decode_block(block.canonical() + b"\x00")  # type: ignore[attr-defined]


def test_pool_views_settle_and_prune() -> None:
    now = [100.0]
    pool = EntropyPool({}, clock=lambda: now[0])
    pool._registry["s"] = None  # type: ignore[assignment]
    pool._chunks["s"] = {}
    from services.block_builder.pool import PooledChunk

    for seq in range(3):
        ref = EntropyRef("s", seq, bytes([seq]) * 32, passing_health())
        pool._chunks["s"][seq] = PooledChunk(ref, 1, 100.0 - (0.5 if seq < 2 else 0), 8)
    proposer = pool.proposer_view(100)
    assert [r.seq for r in proposer.verified_after("s", -1)] == [0, 1]
    assert pool.validator_view(1000).verified_after("s", -1) == ()
    assert pool.validator_view(1000).age_in_heights(EntropyRef("s", 2, bytes([2]) * 32,
                                                               passing_health())) == 0
    tip = ChainTip("c", 2, bytes(32), 0, bytes(64), (("s", 1),), b"", bytes(32), bytes(32))
    pool.advance(tip)
    assert pool.pending() == {"s": 1}


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.integers(0, 40), st.booleans(), max_size=30), st.integers(-1, 40))
def test_settled_chunks_are_the_contiguous_settled_run_after_seq(
        pooled: dict[int, bool], after: int) -> None:
    """What a proposer may take after ``after``: the chunks after it, in seq order, up to the
    first gap or unsettled one (walked by seq, never sorting the backlog)."""
    from services.block_builder.pool import PooledChunk

    pool = EntropyPool({}, clock=lambda: 100.0)
    pool._registry["s"] = None  # type: ignore[assignment]
    pool._chunks["s"] = {seq: PooledChunk(EntropyRef("s", seq, bytes(32), passing_health()), 1,
                                          99.0 if settled else 100.0, 8)
                         for seq, settled in pooled.items()}
    expected = []
    for seq in sorted(s for s in pooled if s > after):
        if seq != after + 1 + len(expected) or not pooled[seq]:
            break
        expected.append(seq)
    assert [r.seq for r in pool.proposer_view(500).verified_after("s", after)] == expected


def _fresh(value: Any) -> bytes:
    """The canonical encoding of ``value`` computed anew (not the bytes it was decoded from, nor
    those its parts were: a block's header, entropy references and commit keep theirs)."""
    import dataclasses

    from protocol.block import Block, Body

    if isinstance(value, Block):
        body = value.body
        commit = body.last_commit
        return Block(dataclasses.replace(value.header), Body(
            tuple(dataclasses.replace(ref) for ref in body.entropy), body.txs, body.evidence,
            None if commit is None else dataclasses.replace(commit))).canonical()
    return dataclasses.replace(value).canonical()  # type: ignore[no-any-return]


@pytest.mark.parametrize("part", ["header", "commit", "block"])
def test_decoders_accept_only_canonical_bytes(blocks: dict[int, object], part: str) -> None:
    """Decoders keep the bytes they read as the value's encoding (no re-encoding for hashes),
    which is sound only if no other bytes decode to the same value: mutate valid encodings
    every which way, and whatever still decodes must re-encode to exactly the mutated bytes."""
    import random

    from protocol.codec import _block, _commit, _header

    decode: Callable[[bytes], object] = {
        "header": _header, "commit": _commit.__wrapped__, "block": _block,
    }[part]  # type: ignore[assignment]
    block = blocks[4]
    value = {"header": block.header, "commit": block.body.last_commit,  # type: ignore[attr-defined]
             "block": block}[part]
    data = value.canonical()  # type: ignore[union-attr]
    rng = random.Random(part)
    decoded = 0
    for _ in range(3000):
        mutated = bytearray(data)
        for _ in range(rng.randrange(1, 3)):
            kind, at = rng.randrange(3), rng.randrange(len(mutated))
            if kind == 0:
                mutated[at] ^= 1 << rng.randrange(8)
            elif kind == 1:
                mutated.insert(at, rng.randrange(256))
            else:
                del mutated[at]
        try:
            result = decode(bytes(mutated))
        except (WireError, ValueError):
            continue
        decoded += 1
        assert _fresh(result) == bytes(mutated)
    assert decoded > 100  # flips inside hashes and signatures decode, to other values
