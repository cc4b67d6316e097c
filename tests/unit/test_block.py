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
RULES = EntropyRules(max_entropy_age=2, min_sources=2)


def digest(source: str, seq: int) -> bytes:
    return hashlib.sha256(f"{source}/{seq}".encode()).digest()


def ref(source: str, seq: int, committed: bool = False) -> EntropyRef:
    """Chunk ``seq`` of ``source``, committing to the digest of chunk ``seq + 1``."""
    return EntropyRef(source, seq, digest(source, seq), passing_health(),
                      digest(source, seq + 1), committed)


def pool(height: int, sources: dict[str, range], healthy: tuple[str, ...] | None = None,
         verified_at: int | None = None) -> StaticPool:
    """Chunk seq s of every source verified at height ``verified_at`` or s + 1."""
    chunks = {
        source: tuple((ref(source, s), s + 1 if verified_at is None else verified_at)
                      for s in seqs)
        for source, seqs in sources.items()
    }
    return StaticPool(height, chunks, frozenset(healthy if healthy is not None else sources))


def tip(height: int = 3, last_seq: tuple[tuple[str, int], ...] = (("a", 0), ("b", 0)),
        previous_sources: tuple[str, ...] | None = None) -> ChainTip:
    """The sources of ``last_seq`` were in the previous block (unless ``previous_sources``
    says otherwise), and each last chunk committed to the next one."""
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
        commitments=tuple((source, digest(source, last + 1)) for source, last in last_seq),
        previous_sources=(previous_sources if previous_sources is not None
                          else tuple(source for source, _ in last_seq)),
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


def test_built_block_is_valid_deterministic_and_takes_one_chunk_per_source() -> None:
    chain_tip, entropy = tip(height=1, last_seq=()), pool(1, {"a": range(0, 3), "b": range(0, 2)})
    block = build(chain_tip, entropy)
    assert block == build(chain_tip, entropy)
    assert block.canonical() == build(chain_tip, entropy).canonical()
    assert block.body.txs == (b"tx-1", b"tx-2")
    assert block.header.entropy_ranges == (SeqRange("a", 0, 0), SeqRange("b", 0, 0))
    # A source's first chunk was committed to by nothing: included, not mixed, not fresh.
    assert [r.committed for r in block.body.entropy] == [False, False]
    assert block.header.fresh_sources == 0
    assert block.header.randomness == block_randomness(
        chain_tip.previous_randomness, 1, block.body.entropy
    )
    validate(block, chain_tip, entropy)
    leaves = [r.canonical() for r in block.body.entropy]
    assert verify_inclusion(leaves[1], inclusion_proof(leaves, 1), block.header.entropy_root)


def test_the_next_block_mixes_the_committed_chunks_and_counts_them_fresh() -> None:
    chain_tip, entropy = tip(), pool(3, {"a": range(0, 3), "b": range(0, 3)})
    block = build(chain_tip, entropy)
    assert block.header.entropy_ranges == (SeqRange("a", 1, 1), SeqRange("b", 1, 1))
    assert [r.committed for r in block.body.entropy] == [True, True]
    assert block.header.fresh_sources == 2
    validate(block, chain_tip, entropy)
    # A source absent from the previous block is committed but not fresh: its commitment was
    # older than the previous block, so its payload may have been public before it.
    late_b = tip(previous_sources=("a",))
    block = build(late_b, entropy)
    assert block.header.fresh_sources == 1
    validate(block, late_b, entropy)


def test_a_block_holds_at_most_one_chunk_per_source() -> None:
    chain_tip, entropy = tip(), pool(3, {"a": range(0, 3), "b": range(0, 3)})
    block = build(chain_tip, entropy)
    two_of_a = (*block.body.entropy[:1], ref("a", 2), *block.body.entropy[1:])
    wide = _with_entropy(block, two_of_a)
    with pytest.raises(InvalidBlockError, match="at most one chunk per source"):
        validate(wide, chain_tip, entropy)


def test_a_committed_flag_must_agree_with_the_chain() -> None:
    chain_tip, entropy = tip(), pool(3, {"a": range(0, 3), "b": range(0, 3)})
    block = build(chain_tip, entropy)
    for index in range(2):  # claim a kept commitment as broken, and the reverse
        flipped = list(block.body.entropy)
        flipped[index] = dataclasses.replace(flipped[index], committed=not flipped[index].committed)
        with pytest.raises(InvalidBlockError, match=r"flagged|contributed fresh"):
            validate(_with_entropy(block, tuple(flipped)), chain_tip, entropy)
    # A chunk whose digest is not what its source committed to is not committed.
    other_commitment = dataclasses.replace(
        chain_tip, commitments=(("a", b"\x99" * 32), ("b", digest("b", 1))))
    with pytest.raises(InvalidBlockError, match="flagged committed"):
        validate(block, other_commitment, entropy)
    rebuilt = build(other_commitment, entropy)
    assert [r.committed for r in rebuilt.body.entropy] == [False, True]
    assert rebuilt.header.fresh_sources == 1
    validate(rebuilt, other_commitment, entropy)


def test_a_fresh_count_above_the_chain_s_is_refused() -> None:
    late_b = tip(previous_sources=("a",))
    entropy = pool(3, {"a": range(0, 3), "b": range(0, 3)})
    block = build(late_b, entropy)
    claims_two = Block(dataclasses.replace(block.header, fresh_sources=2), block.body)
    with pytest.raises(InvalidBlockError, match="says 2 sources contributed fresh entropy"):
        validate(claims_two, late_b, entropy)


def test_block_hash_covers_every_header_field() -> None:
    block = build(tip(height=1, last_seq=()), pool(1, {"a": range(0, 1), "b": range(0, 1)}))
    for name in ("time_ms", "round"):
        changed = dataclasses.replace(block.header, **{name: getattr(block.header, name) + 1})
        assert Block(changed, block.body).hash != block.hash
    for name in ("app_hash", "history_root"):
        changed = dataclasses.replace(block.header, **{name: b"\x00" * 32})
        assert Block(changed, block.body).hash != block.hash


def test_randomness_mixes_committed_entropy_only() -> None:
    previous = genesis_randomness(b"x")
    uncommitted = [ref("a", 1), ref("b", 1)]
    assert block_randomness(previous, 5, uncommitted) == block_randomness(previous, 5, [])
    committed = [dataclasses.replace(r, committed=True) for r in uncommitted]
    # a committed chunk's own next digest is chosen when it is revealed: never mixed
    assert block_randomness(previous, 5, committed) == block_randomness(
        previous, 5, [dataclasses.replace(committed[0], next_digest=b"\x07" * 32), committed[1]])


def test_randomness_depends_on_previous_height_and_entropy_not_on_order() -> None:
    previous = genesis_randomness(b"x")
    refs = [ref("a", 1, committed=True), ref("b", 1, committed=True)]
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


def _with_entropy(block: Block, entropy: tuple[EntropyRef, ...]) -> Block:
    """``block`` with other entropy, its header's root and ranges matching (so only the
    rules about what the entropy may be can refuse it)."""
    body = dataclasses.replace(block.body, entropy=entropy)
    header = dataclasses.replace(block.header, entropy_root=body.entropy_root(),
                                 entropy_ranges=ranges_of(entropy),
                                 randomness=block_randomness(
                                     genesis_randomness(b"genesis"), block.height, entropy))
    return Block(header, body)


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
    skipping = build(dataclasses.replace(tip(last_seq=(("a", 1), ("b", 0))),
                                         commitments=chain_tip.commitments), entropy)
    with pytest.raises(InvalidBlockError, match="starts at 2, expected 1"):
        validate(skipping, chain_tip, entropy)


def test_unverified_or_unregistered_entropy_is_rejected() -> None:
    chain_tip = tip()
    block = build(chain_tip, pool(3, {"a": range(0, 3), "b": range(0, 3)}))
    with pytest.raises(InvalidBlockError, match="not verified"):
        validate(block, chain_tip, pool(3, {"a": range(0, 1), "b": range(0, 3)}))
    with pytest.raises(InvalidBlockError, match="not registered"):
        validate(block, chain_tip, pool(3, {"a": range(0, 3)}))


def test_leaving_out_old_verified_entropy_is_rejected() -> None:
    chain_tip = tip(height=6)
    builder_view = pool(6, {"a": range(0, 1), "b": range(0, 2)})  # the proposer "missed" a/1
    validator_view = pool(6, {"a": range(0, 2), "b": range(0, 2)}, verified_at=3)
    block = build(chain_tip, builder_view)
    with pytest.raises(InvalidBlockError, match="leaves out chunk 'a'/1, verified 3 heights ago"):
        validate(block, chain_tip, validator_view)
    # a young chunk may wait for the next block (a is not counted healthy here, or the
    # two-source rule would want it now)
    fresh = pool(6, {"a": range(0, 2), "b": range(0, 2)}, healthy=("b",), verified_at=5)
    validate(block, chain_tip, fresh)


def test_a_block_may_leave_old_entropy_behind_its_one_chunk_of_a_source() -> None:
    chain_tip = tip(height=9, last_seq=(("a", 0), ("b", 0)))
    entropy = pool(9, {"a": range(0, 8), "b": range(0, 2)}, verified_at=1)
    block = build(chain_tip, entropy)
    assert block.header.entropy_ranges[0] == SeqRange("a", 1, 1)  # one chunk per source
    validate(block, chain_tip, entropy)


def test_two_sources_required_when_two_are_healthy() -> None:
    chain_tip = tip()
    entropy = pool(3, {"a": range(0, 3), "b": range(0, 3)}, verified_at=3)
    only_a = build(chain_tip, pool(3, {"a": range(0, 3), "b": range(0, 1)}))
    with pytest.raises(InvalidBlockError, match="includes chunks of 1 devices while 2 healthy"):
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
    with pytest.raises(InvalidBlockError, match="includes chunks of 1 devices while 2 healthy"):
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
