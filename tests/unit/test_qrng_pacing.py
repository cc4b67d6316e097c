"""Issue 19 item 1, the ingest side: one-ahead chaining (every chunk commits to the next one of
its pool) and pacing (at most one public chunk revealed and not in a finalized block)."""

from __future__ import annotations

import hashlib
import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.block import SeqRange
from protocol.entropy.chain import ZERO_DIGEST, ChainHead, Chunk, HealthSummary, commits_to
from services.qrng_ingest.core.ahead import AheadChain, Held, discard, release, take
from services.qrng_ingest.core.pacing import (
    Placement,
    may_reveal,
    newest_included,
    place,
    public_open,
    settled_at_start,
)


def _held(payload: bytes, at: int = 1) -> Held:
    return Held(payload, hashlib.sha256(payload).digest(), at, True, HealthSummary(1, 2, 3))


def _assert_one_ahead(chunks: list[Chunk], payloads: list[bytes]) -> None:
    """``chunks`` (one pool, in publication order) are ``payloads`` in order, a gapless linked
    chain, each committing to the next; the last commits to nothing."""
    assert [c.payload for c in chunks] == payloads
    assert all(c.payload is p for c, p in zip(chunks, payloads, strict=True)), "payload copied"
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    for previous, chunk in itertools.pairwise(chunks):
        assert chunk.prev_digest == previous.chunk_digest
        assert previous.next_digest == chunk.payload_digest
        assert commits_to(previous, chunk)
    if chunks:
        assert chunks[-1].next_digest == ZERO_DIGEST


@settings(max_examples=100, deadline=None)
@given(share=st.sampled_from([0.0, 0.2, 0.25, 0.5, 1.0]), count=st.integers(0, 40))
def test_every_chunk_commits_to_the_next_chunk_of_its_pool(share: float, count: int) -> None:
    chains = {pool: AheadChain("qd-1", pool) for pool in (False, True)}
    published: dict[bool, list[Chunk]] = {False: [], True: []}
    offered: dict[bool, list[bytes]] = {False: [], True: []}
    credit = 0.0
    for index in range(count):
        placement, credit = place(credit, share, public_open=True)
        private = placement is Placement.PRIVATE
        payload = os.urandom(16) + index.to_bytes(2, "big")
        offered[private].append(payload)
        chains[private], chunk = take(chains[private], _held(payload, index))
        if chunk is not None:
            published[private].append(chunk)
    for pool in (False, True):
        held_back = chains[pool].held
        assert (held_back is None) == (not offered[pool])  # one ahead: the last is held
        assert len(published[pool]) == max(0, len(offered[pool]) - 1)
        chains[pool], last = release(chains[pool])
        if last is not None:
            published[pool].append(last)
        assert chains[pool].held is None
        _assert_one_ahead(published[pool], offered[pool])
        assert all(c.private is pool for c in published[pool])
    assert len(offered[True]) == int(count * share + 1e-9)


def test_after_a_crash_the_chain_continues_with_an_uncommitted_chunk() -> None:
    chain = AheadChain("qd-1", False)
    payloads = [os.urandom(8) for _ in range(6)]
    chunks = []
    for payload in payloads[:3]:
        chain, chunk = take(chain, _held(payload))
        chunks += [chunk] if chunk else []
    # kill -9: the held payload is lost; the restart resumes from the published head only
    chain = AheadChain("qd-1", False, chain.head)
    for payload in payloads[3:]:
        chain, chunk = take(chain, _held(payload))
        chunks += [chunk] if chunk else []
    assert [c.seq for c in chunks] == [0, 1, 2, 3]
    assert [c.payload for c in chunks] == [payloads[0], payloads[1], payloads[3], payloads[4]]
    assert all(b.prev_digest == a.chunk_digest for a, b in itertools.pairwise(chunks))
    assert commits_to(chunks[0], chunks[1])
    assert chunks[1].next_digest == hashlib.sha256(payloads[2]).digest()  # the lost one
    assert not commits_to(chunks[1], chunks[2])  # first after the restart: uncommitted
    assert commits_to(chunks[2], chunks[3])
    # a clean stop that must keep the held payload secret behaves alike
    assert discard(chain) == AheadChain("qd-1", False, chain.head)


def test_release_with_nothing_held_publishes_nothing() -> None:
    chain = AheadChain("qd-1", True, ChainHead(5, bytes(range(32))))
    assert release(chain) == (chain, None)


# (credit, share, public open) -> (placement, new credit)
PLACEMENTS = [
    ("unpaced, all public", 0.0, 0.0, True, Placement.PUBLIC, 0.0),
    ("share reaches 1: private", 0.75, 0.25, True, Placement.PRIVATE, 0.0),
    ("share below 1: public", 0.25, 0.25, True, Placement.PUBLIC, 0.5),
    ("paced, waiting, share: withheld, counted", 0.25, 0.25, False, Placement.WITHHELD, 0.5),
    ("paced, waiting, private due: private never waits", 0.75, 0.25, False,
     Placement.PRIVATE, 0.0),
    ("paced, waiting, no share: take nothing", 0.0, 0.0, False, Placement.WAIT, 0.0),
    ("all private", 0.0, 1.0, False, Placement.PRIVATE, 0.0),
]


@pytest.mark.parametrize(("case", "credit", "share", "open_", "placement", "after"), PLACEMENTS,
                         ids=[row[0] for row in PLACEMENTS])
def test_place(case: str, credit: float, share: float, open_: bool, placement: Placement,
               after: float) -> None:
    assert place(credit, share, open_) == (placement, after)


# (seq to reveal, settled seq) -> may reveal
REVEALS = [
    (0, -1, True),  # a new chain's first chunk
    (1, -1, False),  # chunk 0 is revealed and not in a block
    (1, 0, True),
    (7, 5, False),
    (7, 6, True),
    (7, 9, True),  # the chain is ahead (a chain restarted from 0 on an older network)
    (0, None, False),  # not known yet
]


@pytest.mark.parametrize(("seq", "settled", "expected"), REVEALS)
def test_may_reveal(seq: int, settled: int | None, expected: bool) -> None:
    assert may_reveal(seq, settled) is expected


def test_public_open() -> None:
    assert public_open(holding=True, next_seq=3, settled_seq=0, paced=False)
    assert public_open(holding=False, next_seq=3, settled_seq=0, paced=True)  # only holds
    assert not public_open(holding=True, next_seq=3, settled_seq=1, paced=True)
    assert public_open(holding=True, next_seq=3, settled_seq=2, paced=True)


def test_settled_at_start() -> None:
    assert settled_at_start(4, 9) == 4  # wait until 5..9 are in blocks
    assert settled_at_start(None, 9) == 9  # nothing found in the look-back: reveal one
    assert settled_at_start(None, -1) == -1  # a new source


def test_newest_included() -> None:
    ranges = (SeqRange("a", 0, 3), SeqRange("b.lane-0", 7, 7), SeqRange("c", 2, 2))
    assert newest_included(ranges, ("b.lane-0", "c", "z")) == {"b.lane-0": 7, "c": 2}
    assert newest_included((), ("a",)) == {}


@settings(max_examples=200, deadline=None)
@given(share=st.sampled_from([0.0, 0.2, 0.5]),
       steps=st.lists(st.sampled_from(["block", "include", "stop"]), max_size=80),
       found=st.one_of(st.none(), st.integers(0, 3)))
def test_paced_ingest_never_reveals_two_public_chunks_outside_finalized_blocks(
    share: float, steps: list[str], found: int | None,
) -> None:
    """A model of the service loop over the pure parts: blocks arrive, the chain includes the
    oldest revealed public chunk now and then, the source stops cleanly. At every moment at
    most one public chunk is revealed and not settled, and the public chunks published still
    form one chain, each committing to the next."""
    start = ChainHead(4, bytes(32))  # resumed: chunks 0..3 published before
    chains = {False: AheadChain("qd-1", False, start), True: AheadChain("qd-1", True)}
    settled = settled_at_start(found, start.last_seq)
    credit = 0.0
    public: list[Chunk] = []

    def open_now() -> bool:
        chain = chains[False]
        return public_open(chain.held is not None, chain.head.next_seq, settled, paced=True)

    def check() -> None:
        revealed = chains[False].head.last_seq
        if revealed > start.last_seq:  # revealed by this run
            assert revealed - settled <= 1

    def reveal(chunk: Chunk) -> None:
        assert chunk.seq - 1 <= settled, f"chunk {chunk.seq} revealed, {settled} settled"
        public.append(chunk)

    for step in steps:
        if step == "block":
            placement, new_credit = place(credit, share, open_now())
            if placement is Placement.WAIT:
                continue  # the service takes no block: the reader waits
            credit = new_credit
            if placement in (Placement.PUBLIC, Placement.PRIVATE):
                private = placement is Placement.PRIVATE
                chains[private], chunk = take(chains[private], _held(os.urandom(8)))
                if chunk is not None and not private:
                    reveal(chunk)
        elif step == "include" and chains[False].head.last_seq > settled:
            settled += 1  # one chunk per source per block
        else:  # stop: publish what is held unless pacing keeps it secret
            chain = chains[False]
            if chain.held is not None and may_reveal(chain.head.next_seq, settled):
                chains[False], chunk = release(chain)
                assert chunk is not None
                reveal(chunk)
            break
        check()
    check()
    for previous, chunk in itertools.pairwise(public):
        assert commits_to(previous, chunk)
    assert [c.seq for c in public] == list(range(4, 4 + len(public)))
