"""Block format, randomness and the proposal validation rules."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest

from protocol.block import Block, BlockFormatError, EntropyRef, SeqRange, ranges_of
from protocol.chain import ChainTip
from protocol.commit import CommitCertificate
from protocol.merkle import inclusion_proof, verify_inclusion
from protocol.mmr import history_of, root
from protocol.randomness import block_randomness, genesis_randomness, randomness_input
from sdk.testing import passing_health
from services.block_builder.core.proposal import (
    EntropyRules,
    InvalidBlockError,
    StaticPool,
    build_block,
    validate_block,
)
from tests.support.sim import sim_keys

PROPOSER = sim_keys(1)[0].address
RULES = EntropyRules(max_entropy_age=2, max_chunks_per_source=4, min_sources=2)


def ref(source: str, seq: int) -> EntropyRef:
    return EntropyRef(source, seq, hashlib.sha256(f"{source}/{seq}".encode()).digest(),
                      passing_health())


def pool(height: int, sources: dict[str, range], healthy: tuple[str, ...] | None = None,
         verified_at: int | None = None) -> StaticPool:
    """Chunk seq s of every source verified at height ``verified_at`` or s + 1."""
    chunks = {
        source: tuple((ref(source, s), s + 1 if verified_at is None else verified_at)
                      for s in seqs)
        for source, seqs in sources.items()
    }
    return StaticPool(height, chunks, frozenset(healthy if healthy is not None else sources))


def tip(height: int = 3, last_seq: tuple[tuple[str, int], ...] = (("a", 0), ("b", 0))
        ) -> ChainTip:
    return ChainTip(
        chain_id="test-chain",
        height=height,
        previous_block_hash=b"\x11" * 32,
        previous_time_ms=1_000,
        previous_randomness=genesis_randomness(b"genesis"),
        last_seq=last_seq,
        app_hash=b"\x22" * 32,
        validators_hash=b"\x33" * 32,
        next_validators_hash=b"\x44" * 32,
        accumulator=history_of([bytes([i]) * 32 for i in range(height - 1)]),
    )


def build(chain_tip: ChainTip, entropy_pool: StaticPool, **changes: object) -> Block:
    kwargs: dict[str, object] = {
        "round": 0, "time_ms": 2_000, "proposer_address": PROPOSER, "pool": entropy_pool,
        "mempool": (b"tx-1", b"bad", b"tx-2"), "evidence": (),
        "last_commit": None if chain_tip.height == 1 else CommitCertificate(
            chain_tip.height - 1, 0, chain_tip.previous_block_hash, ()),
        "rules": RULES, "check_tx": lambda tx: tx.startswith(b"tx"),
        "check_evidence": lambda e: None,
    }
    kwargs.update(changes)
    return build_block(chain_tip, **kwargs)  # type: ignore[arg-type]


def validate(block: Block, chain_tip: ChainTip, entropy_pool: StaticPool) -> None:
    validate_block(block, chain_tip, entropy_pool, RULES, PROPOSER,
                   lambda tx: tx.startswith(b"tx"), lambda e: None, lambda c: None)


def test_built_block_is_valid_deterministic_and_includes_all_fresh_entropy() -> None:
    chain_tip, entropy = tip(height=1, last_seq=()), pool(1, {"a": range(0, 3), "b": range(0, 2)})
    block = build(chain_tip, entropy)
    assert block == build(chain_tip, entropy)
    assert block.canonical() == build(chain_tip, entropy).canonical()
    assert block.body.txs == (b"tx-1", b"tx-2")
    assert block.header.entropy_ranges == (SeqRange("a", 0, 2), SeqRange("b", 0, 1))
    assert block.header.randomness == block_randomness(
        chain_tip.previous_randomness, 1, block.body.entropy
    )
    validate(block, chain_tip, entropy)
    leaves = [r.canonical() for r in block.body.entropy]
    assert verify_inclusion(leaves[3], inclusion_proof(leaves, 3), block.header.entropy_root)


def test_block_hash_covers_every_header_field() -> None:
    block = build(tip(height=1, last_seq=()), pool(1, {"a": range(0, 1), "b": range(0, 1)}))
    for name in ("time_ms", "round"):
        changed = dataclasses.replace(block.header, **{name: getattr(block.header, name) + 1})
        assert Block(changed, block.body).hash != block.hash
    for name in ("app_hash", "history_root"):
        changed = dataclasses.replace(block.header, **{name: b"\x00" * 32})
        assert Block(changed, block.body).hash != block.hash


def test_randomness_depends_on_previous_height_and_entropy_not_on_order() -> None:
    previous = genesis_randomness(b"x")
    refs = [ref("a", 1), ref("b", 1)]
    assert len(previous) == 64
    assert block_randomness(previous, 5, refs) == block_randomness(previous, 5, refs[::-1])
    assert block_randomness(previous, 5, refs) != block_randomness(previous, 6, refs)
    assert block_randomness(previous, 5, refs) != block_randomness(previous, 5, refs[:1])
    assert block_randomness(previous, 5, []) != block_randomness(genesis_randomness(b"y"), 5, [])
    assert randomness_input(5, refs) == randomness_input(5, refs[::-1])


def test_ranges_must_be_contiguous() -> None:
    assert ranges_of([ref("a", 3), ref("a", 4), ref("b", 0)]) == (
        SeqRange("a", 3, 4), SeqRange("b", 0, 0))
    with pytest.raises(BlockFormatError, match="not contiguous"):
        ranges_of([ref("a", 3), ref("a", 5)])


def _tampered(block: Block, **body_changes: Any) -> Block:
    return Block(block.header, dataclasses.replace(block.body, **body_changes))


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b, t: Block(dataclasses.replace(b.header, chain_id="x"), b.body), "chain id"),
        (lambda b, t: Block(dataclasses.replace(b.header, time_ms=t.previous_time_ms),
                            b.body), "not after"),
        (lambda b, t: Block(dataclasses.replace(b.header, app_hash=b"\x00" * 32), b.body),
         "app hash"),
        (lambda b, t: Block(dataclasses.replace(b.header, randomness=bytes(64)), b.body),
         "randomness"),
        (lambda b, t: _tampered(b, txs=(b"tx-9",)), "tx root"),
        (lambda b, t: _tampered(b, entropy=b.body.entropy[::-1]), "sorted"),
        (lambda b, t: Block(dataclasses.replace(b.header, proposer_address=b"\x01" * 20),
                            b.body), "proposer"),
        (lambda b, t: Block(dataclasses.replace(b.header, history_root=bytes(32)), b.body),
         "history root"),
        (lambda b, t: Block(dataclasses.replace(  # the root one block short
            b.header, history_root=root(history_of([bytes([i]) * 32
                                                    for i in range(t.height - 2)]))), b.body),
         "history root"),
    ],
)
def test_tampered_blocks_are_rejected(mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    chain_tip, entropy = tip(), pool(3, {"a": range(0, 3), "b": range(0, 3)})
    block = build(chain_tip, entropy)
    with pytest.raises(InvalidBlockError, match=reason):
        validate(mutate(block, chain_tip), chain_tip, entropy)


def test_entropy_must_continue_the_previous_range() -> None:
    chain_tip, entropy = tip(), pool(3, {"a": range(0, 4), "b": range(0, 4)})
    skipping = build(tip(last_seq=(("a", 1), ("b", 0))), entropy)
    with pytest.raises(InvalidBlockError, match="starts at 2, expected 1"):
        validate(skipping, chain_tip, entropy)


def test_unverified_or_unregistered_entropy_is_rejected() -> None:
    chain_tip = tip()
    block = build(chain_tip, pool(3, {"a": range(0, 3), "b": range(0, 3)}))
    with pytest.raises(InvalidBlockError, match="not verified"):
        validate(block, chain_tip, pool(3, {"a": range(0, 2), "b": range(0, 3)}))
    with pytest.raises(InvalidBlockError, match="not registered"):
        validate(block, chain_tip, pool(3, {"a": range(0, 3)}))


def test_leaving_out_old_verified_entropy_is_rejected() -> None:
    chain_tip = tip(height=6)
    builder_view = pool(6, {"a": range(0, 2), "b": range(0, 2)})  # the proposer "missed" a/2
    validator_view = pool(6, {"a": range(0, 3), "b": range(0, 2)}, verified_at=3)
    block = build(chain_tip, builder_view)
    with pytest.raises(InvalidBlockError, match="leaves out chunk 'a'/2, verified 3 heights ago"):
        validate(block, chain_tip, validator_view)
    fresh = pool(6, {"a": range(0, 3), "b": range(0, 2)}, verified_at=5)
    validate(block, chain_tip, fresh)  # a young chunk may wait for the next block


def test_a_full_block_may_leave_old_entropy_for_the_next() -> None:
    chain_tip = tip(height=9, last_seq=(("a", 0), ("b", 0)))
    entropy = pool(9, {"a": range(0, 8), "b": range(0, 2)}, verified_at=1)
    block = build(chain_tip, entropy)
    assert block.header.entropy_ranges[0] == SeqRange("a", 1, 4)  # capped at 4 per source
    validate(block, chain_tip, entropy)


def test_two_sources_required_when_two_are_healthy() -> None:
    chain_tip = tip()
    entropy = pool(3, {"a": range(0, 3), "b": range(0, 3)}, verified_at=3)
    only_a = build(chain_tip, pool(3, {"a": range(0, 3), "b": range(0, 1)}))
    with pytest.raises(InvalidBlockError, match="mixes entropy of 1 devices while 2 healthy"):
        validate(only_a, chain_tip, entropy)
    one_healthy = pool(3, {"a": range(0, 3), "b": range(0, 3)}, healthy=("a",), verified_at=3)
    validate(only_a, chain_tip, one_healthy)  # b is not healthy: one source is enough


def test_two_lanes_of_one_device_are_not_two_sources() -> None:
    lanes = ("qd.lane-0", "qd.lane-1")
    chain_tip = tip(last_seq=((lanes[0], 0), (lanes[1], 0), ("other", 0)))
    fresh_lanes = {lanes[0]: range(0, 3), lanes[1]: range(0, 3)}
    both_lanes = build(chain_tip, pool(3, {**fresh_lanes, "other": range(0, 1)}))
    assert [r.source_id for r in both_lanes.header.entropy_ranges] == list(lanes)
    assert both_lanes.header.fresh_sources == 1  # one device, however many lanes
    # Only lanes of one device have entropy: one device is all there is, the block is valid.
    validate(both_lanes, chain_tip, pool(3, fresh_lanes))
    # A second device has verified entropy: two lanes of the first do not make two sources.
    with_other = pool(3, {**fresh_lanes, "other": range(0, 3)}, verified_at=3)
    with pytest.raises(InvalidBlockError, match="mixes entropy of 1 devices while 2 healthy"):
        validate(both_lanes, chain_tip, with_other)
    # Two devices do.
    mixed = build(chain_tip, with_other)
    assert mixed.header.fresh_sources == 2
    validate(mixed, chain_tip, with_other)


def test_a_header_counting_lanes_as_sources_is_refused() -> None:
    lanes = {"qd.lane-0": range(0, 3), "qd.lane-1": range(0, 3)}
    chain_tip = tip(last_seq=(("qd.lane-0", 0), ("qd.lane-1", 0)))
    block = build(chain_tip, pool(3, lanes))
    claims_two = dataclasses.replace(block.header, fresh_sources=2)
    forged = Block(claims_two, block.body)
    with pytest.raises(InvalidBlockError, match="says 2 sources contributed fresh entropy"):
        validate(forged, chain_tip, pool(3, lanes))


def test_transactions_must_pass_check_tx() -> None:
    chain_tip, entropy = tip(), pool(3, {"a": range(0, 3), "b": range(0, 3)})
    block = build(chain_tip, entropy, check_tx=lambda tx: True)
    with pytest.raises(InvalidBlockError, match="transaction 1 fails check_tx"):
        validate(block, chain_tip, entropy)


def test_entropy_refs_and_ranges_validate_their_fields() -> None:
    with pytest.raises(BlockFormatError):
        EntropyRef("a", 0, b"short", passing_health())
    with pytest.raises(BlockFormatError):
        SeqRange("a", 3, 2)
