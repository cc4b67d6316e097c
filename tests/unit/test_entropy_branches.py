"""Issue 16, items 4 and 10, and issue 19 item 0 (unjoinable sources): forged unsigned chunks
compete with genuine ones until a signed checkpoint decides; the registry behind the pool
follows the ledger; a source whose chain cannot continue is reported, never silently pending."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.block import EntropyRef
from protocol.chain import ChainTip
from protocol.entropy.chain import ChainHead, Chunk, extend
from protocol.entropy.verifier import (
    MAX_COMPETING,
    ChainVerifier,
    PendingLimitError,
    UnknownSourceError,
)
from sdk.testing import passing_health
from services.block_builder.pool import EntropyPool, UnjoinableChainError
from services.block_builder.runtime import BlockBuilder
from tests.unit.test_qrng_chain import KEY, REGISTRY, _chain, _checkpoint


def _forged(seq: int, previous: bytes, tag: int) -> Chunk:
    chunk, _ = extend(ChainHead(seq, previous), source_id="qd-1", private=False,
                      payload=hashlib.sha256(b"forged %d %d" % (seq, tag)).digest(),
                      produced_at_ms=1, simulated=True, health=passing_health())
    return chunk


@settings(max_examples=40, deadline=None)
@given(data=st.data(), length=st.integers(min_value=1, max_value=10),
       every=st.integers(min_value=1, max_value=4))
def test_a_signed_checkpoint_decides_between_competing_branches(
        data: st.DataObject, length: int, every: int) -> None:
    """Before each genuine chunk, a writer of the topic publishes forged chunks linked to
    the public head, and forged children of those (fewer than MAX_COMPETING per sequence
    number); the genuine chain is verified in full and every forgery is discarded."""
    genuine, _ = _chain(length)
    verifier = ChainVerifier(REGISTRY, allow_mid_stream=False)
    forged: set[bytes] = set()
    per_seq: dict[int, int] = {}
    verified: list[Chunk] = []
    head = ChainHead()
    for index, chunk in enumerate(genuine):
        previous = genuine[index - 1].chunk_digest if index else bytes(32)
        room = MAX_COMPETING - 1 - per_seq.get(chunk.seq, 0)
        count = data.draw(st.integers(min_value=0, max_value=room), "forgeries")
        for tag in range(count):
            fake = _forged(chunk.seq, previous, tag)
            verifier.accept_chunk(fake)
            forged.add(fake.chunk_digest)
            per_seq[chunk.seq] = per_seq.get(chunk.seq, 0) + 1
            if (per_seq.get(chunk.seq + 1, 0) < MAX_COMPETING - 1
                    and data.draw(st.booleans(), "extend the forgery")):
                child = _forged(chunk.seq + 1, fake.chunk_digest, tag)
                verifier.accept_chunk(child)
                forged.add(child.chunk_digest)
                per_seq[chunk.seq + 1] = per_seq.get(chunk.seq + 1, 0) + 1
        verifier.accept_chunk(chunk)
        head = ChainHead(chunk.seq + 1, chunk.chunk_digest)
        if (index + 1) % every == 0 or index == length - 1:
            first = verified[-1].seq + 1 if verified else 0
            verified += verifier.accept_checkpoint(_checkpoint(first, head))
    assert verified == genuine
    assert verifier.verified_seq("qd-1") == length - 1
    discarded = {c.chunk_digest for c in verifier.take_discarded()}
    leftover = verifier.pending_count("qd-1")
    # forged children one past the end still compete for the next sequence number
    assert discarded | {d for d in forged if d not in discarded} == forged
    assert len(discarded) + leftover == len(forged)


def test_one_forged_chunk_no_longer_locks_a_source_out() -> None:
    """The reproduction of the review: a forged chunk links to the public head first."""
    genuine, head = _chain(3)
    verifier = ChainVerifier(REGISTRY, allow_mid_stream=False)
    verifier.accept_chunk(genuine[0])
    verifier.accept_checkpoint(_checkpoint(0, ChainHead(1, genuine[0].chunk_digest)))
    fake = _forged(1, genuine[0].chunk_digest, 0)
    verifier.accept_chunk(fake)
    for chunk in genuine[1:]:
        verifier.accept_chunk(chunk)
    assert verifier.accept_checkpoint(_checkpoint(1, head)) == tuple(genuine[1:])
    assert verifier.take_discarded() == (fake,)


def test_competing_chunks_per_sequence_number_are_bounded() -> None:
    verifier = ChainVerifier(REGISTRY, allow_mid_stream=False)
    for tag in range(MAX_COMPETING):
        verifier.accept_chunk(_forged(0, bytes(32), tag))
    with pytest.raises(PendingLimitError):
        verifier.accept_chunk(_forged(0, bytes(32), MAX_COMPETING))


def _tip(last: dict[str, int]) -> ChainTip:
    return ChainTip("c", 2, bytes(32), 0, bytes(64), tuple(sorted(last.items())), b"",
                    bytes(32), bytes(32), len(last))


@settings(max_examples=15, deadline=None)
@given(start=st.integers(min_value=1, max_value=10_000))
def test_a_source_that_restarted_its_chain_is_reported(start: int) -> None:
    """Issue 19 item 0: chunks that begin after the sequence number the chain expects can
    never be included; the pool drops them and says why instead of holding them for ever."""
    pool = EntropyPool(REGISTRY)
    pool.advance(_tip({}))  # a new chain: qd-1 is expected from #0
    chunks, head = _chain(3, start=ChainHead(start, hashlib.sha256(b"old").digest()))
    for chunk in chunks:
        pool.accept_chunk(chunk)
    with pytest.raises(UnjoinableChainError, match="expects #0 next"):
        pool.accept_checkpoint(_checkpoint(start, head))
    assert pool.pending() == {"qd-1": 0}
    assert "qd-1" in pool.unjoinable
    # the same chunks on a chain that included up to start - 1 join at once
    joined = EntropyPool(REGISTRY)
    joined.advance(_tip({"qd-1": start - 1}))
    for chunk in chunks:
        joined.accept_chunk(chunk)
    assert joined.accept_checkpoint(_checkpoint(start, head)).added == 3
    assert joined.unjoinable == {}


def test_the_registry_follows_the_ledger() -> None:
    """Item 10: a source removed from the registry is refused from then on, its pooled and
    pending chunks are dropped (pending ones handed back to be dead-lettered)."""
    builder = BlockBuilder(EntropyPool(REGISTRY))
    chunks, _ = _chain(4)
    for chunk in chunks[:2]:
        builder.pool.accept_chunk(chunk)
    builder.pool.accept_checkpoint(_checkpoint(0, ChainHead(2, chunks[1].chunk_digest)))
    builder.pool.accept_chunk(chunks[2])
    assert builder.pool.registered_sources() == ("qd-1",)
    builder.pool.set_registry({})
    assert builder.pool.registered_sources() == ()
    assert not builder.pool.known(EntropyRef("qd-1", 0, chunks[0].payload_digest,
                                             chunks[0].health))
    discarded = builder.pool.take_discarded()
    assert [(c.seq, type(e)) for c, e in discarded] == [(2, UnknownSourceError)]
    with pytest.raises(UnknownSourceError):
        builder.pool.accept_chunk(chunks[3])
    builder.pool.set_registry(REGISTRY)  # registered again (by governance): a new chain
    assert builder.pool.registered_sources() == ("qd-1",)
    assert KEY.public_key == REGISTRY["qd-1"].public_key
