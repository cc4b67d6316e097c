"""The votes' fast decoding path (``streams.chain_wire._read_vote``) never disagrees with the
generic one (fastavro): on every vote it reads, the same ``Vote``; on anything else it stands
aside, and the generic path decides, error included."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.codec import WireError
from protocol.messages import Vote, VoteType
from streams import chain_wire
from streams.chain_wire import VOTE_HEADER, decode_consensus, encode_consensus
from streams.codec import Codec, default_codec

CHAIN = "qustream-test"
GENERIC = Codec()  # not the default codec's object: never takes the fast path

votes = st.builds(
    Vote,
    st.sampled_from(VoteType),
    st.integers(1, 2**63 - 1),
    st.integers(0, 2**31 - 1),
    st.none() | st.binary(min_size=32, max_size=32),
    st.binary(min_size=20, max_size=20),
    st.binary(min_size=0, max_size=4000),
)


def generic(data: bytes, chain_id: str = CHAIN) -> Vote | str:
    """What fastavro's path makes of ``data``: the message, or the error's text."""
    try:
        return decode_consensus(data, chain_id, GENERIC)
    except WireError as exc:
        return f"WireError: {exc}"


def fast(data: bytes, chain_id: str = CHAIN) -> Vote | str:
    try:
        return decode_consensus(data, chain_id, default_codec())
    except WireError as exc:
        return f"WireError: {exc}"


def test_the_fast_path_reads_the_current_vote_schema() -> None:
    """Should ``schemas/VoteCast.avsc`` change, the fast path would stand aside for good (its
    header is the old schema's): update ``_read_vote`` and its fingerprint together."""
    encoded = encode_consensus(CHAIN, Vote(VoteType.PREVOTE, 1, 0, None, bytes(20), b"s"))
    assert encoded.startswith(VOTE_HEADER)


@settings(max_examples=300, deadline=None)
@given(votes)
def test_every_vote_reads_the_same_both_ways(vote: Vote) -> None:
    data = encode_consensus(CHAIN, vote)
    assert chain_wire._read_vote(data, CHAIN) == vote  # taken, not left to fastavro
    assert fast(data) == generic(data) == vote


@settings(max_examples=500, deadline=None)
@given(votes, st.data())
def test_damaged_votes_get_the_generic_answer(vote: Vote, data: st.DataObject) -> None:
    """Bytes changed, cut or added anywhere after the header, or another chain's vote: the
    fast path answers exactly what the generic path answers (the same vote, or the same
    error), whichever of the two decides."""
    encoded = bytearray(encode_consensus(CHAIN, vote))
    how = data.draw(st.sampled_from(["flip", "cut", "extend", "chain"]))
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 3))):
            at = data.draw(st.integers(len(VOTE_HEADER), len(encoded) - 1))
            encoded[at] = data.draw(st.integers(0, 255))
    elif how == "cut":
        del encoded[data.draw(st.integers(len(VOTE_HEADER), len(encoded) - 1)):]
    elif how == "extend":
        encoded += data.draw(st.binary(min_size=1, max_size=8))
    chain_id = "another-chain" if how == "chain" else CHAIN
    assert fast(bytes(encoded), chain_id) == generic(bytes(encoded), chain_id)


@pytest.mark.parametrize("body", [
    b"\x1a" + CHAIN.encode() + b"\xff" * 11,  # a height longer than ten varint bytes
    b"\x1a" + CHAIN.encode() + b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # height 2**63
    b"\x1a" + CHAIN.encode() + b"\x02" + b"\x80\x80\x80\x80\x10",  # round 2**31
    b"\x1a" + CHAIN.encode() + b"\x02\x00\x04",  # vote type 2 of two
    b"\x1a" + CHAIN.encode() + b"\x02\x00\x00\x04",  # union branch 2 of two
    b"\x1a" + CHAIN.encode() + b"\x02\x00\x00\x00\x01",  # a negative length
    b"\x1a" + CHAIN.encode() + b"\x00\x00\x00\x00" + b"\x28" + bytes(20) + b"\x00",  # height 0
])
def test_edge_bodies_are_left_to_the_generic_path(body: bytes) -> None:
    data = VOTE_HEADER + body
    assert chain_wire._read_vote(data, CHAIN) is None
    assert fast(data) == generic(data)
    assert isinstance(generic(data), str)
