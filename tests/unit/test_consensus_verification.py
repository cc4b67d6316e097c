"""A validator node's signature check: answers are remembered only when a signature verifies, a
verification pool gives exactly the inline answers, and a node decides the same blocks with or
without one (``tests.support.peers`` plays the other validators; no Kafka)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from protocol.keys import Algorithm, SigningKey
from protocol.messages import VoteType
from services.consensus.verification import VoteVerifier
from tests.support.peers import (
    Height,
    Peers,
    deliver,
    network_spec,
    node_under_test,
    validator_keys,
)


def _triples(count: int) -> list[tuple]:  # type: ignore[type-arg]
    """(key, message, signature); every third signature is wrong."""
    key = SigningKey.from_seed(bytes(32))
    triples = []
    for i in range(count):
        message = f"vote {i}".encode()
        signature = key.sign(message)
        if i % 3 == 2:
            signature = bytes([signature[0] ^ 1]) + signature[1:]
        triples.append((key.public_key, message, signature))
    return triples


def test_only_signatures_that_verify_are_remembered() -> None:
    good, _, bad = _triples(3)
    with VoteVerifier() as check:
        assert check(*good) and check(*good)
        assert not check(*bad) and not check(*bad)
        assert (check.verified, check.remembered) == (3, 1)


def test_an_own_signature_is_known_only_as_the_exact_triple() -> None:
    good, _, bad = _triples(3)
    key, message, signature = good
    with VoteVerifier() as check:
        check.remember(key, message, signature)
        assert check(key, message, signature) and check.verified == 0
        assert not check(key, message, bad[2])  # another signature of the same message
        other = SigningKey.from_seed(bytes([1]) * 32).public_key
        assert not check(other, message, signature)  # the same bytes under another key
        assert check.verified == 2


@pytest.mark.parametrize("remember", [2, 4, 5])
def test_memory_is_bounded_and_keeps_the_newest(remember: int) -> None:
    """At every step the last ``remember // 2`` triples that verified are known, and never
    more than ``remember``; a known triple with another signature is not."""
    triples = [t for i, t in enumerate(_triples(21)) if i % 3 != 2]
    with VoteVerifier(remember=remember) as check:
        for done, triple in enumerate(triples, start=1):
            assert check(*triple)
            known = [check.knows(*t) for t in triples[:done]]
            assert all(known[-(remember // 2):]) and sum(known) <= remember, known
            key, message, signature = triple
            assert not check.knows(key, message, signature[::-1])
        assert not check.knows(*triples[0])
        verified = check.verified
        assert check(*triples[-1]) and check.verified == verified  # answered from memory


@pytest.mark.parametrize("workers", [1, 2])
def test_a_pool_gives_the_inline_answers(workers: int) -> None:
    triples = _triples(40)
    with VoteVerifier(workers) as pooled, VoteVerifier(0) as inline:
        assert pooled.workers == workers
        pooled.expect(triples, height=1)
        pooled.flush()
        assert [pooled(*t) for t in triples] == [inline(*t) for t in triples]


def _run(tmp_path: Path, workers: int, heights: int, forge_at: int | None = None
         ) -> tuple[list[bytes], dict[str, int]]:
    """Block hashes the node decides (checked against the peers' chain) and its dead letters
    by type."""
    keys = validator_keys(4, Algorithm.ED25519)
    spec = network_spec(keys)
    node, recorder = node_under_test(spec, keys[0], tmp_path / f"guard-{workers}",
                                     verify_workers=workers)
    peers = Peers(spec, keys, keys[0], node.settings)
    try:
        node.tick()
        peers.read(recorder)
        for _ in range(heights):
            height = peers.prepare()
            if height.proposal.height == forge_at:
                height = _with_forged_prevote(peers, height, keys[1])
            deliver(node, height)
            node.settle()
            peers.read(recorder)
            peers.decided(height)
    finally:
        node.close()
    decided = [node.follower.hashes[h] for h in range(1, heights + 1)]
    assert decided == [peers.follower.hashes[h] for h in range(1, heights + 1)]
    return decided, dict(node.dlq_chain.counts)


def _with_forged_prevote(peers: Peers, height: Height, signer: SigningKey) -> Height:
    """A second prevote 'from' ``signer`` for nil, signed by someone else."""
    forged = peers.vote(signer, VoteType.PREVOTE, height.proposal.height, None)
    other = peers.vote(next(k for a, k in peers.keys.items() if a != signer.address),
                       VoteType.PREVOTE, height.proposal.height, None)
    forged = dataclasses.replace(forged, signature=other.signature)
    return dataclasses.replace(height, first=[*height.first, peers.record(forged)])


@pytest.mark.parametrize("workers", [0, 1])
def test_the_node_decides_every_height(tmp_path: Path, workers: int) -> None:
    decided, dead_letters = _run(tmp_path, workers, heights=8)
    assert len(set(decided)) == 8 and not dead_letters


@pytest.mark.parametrize("workers", [0, 1])
def test_a_forged_vote_is_refused_with_or_without_a_pool(tmp_path: Path, workers: int) -> None:
    _, dead_letters = _run(tmp_path, workers, heights=4, forge_at=3)
    assert dead_letters == {"rejected_by_core": 1}


@pytest.mark.parametrize("size", [4, 7])
def test_each_peer_signature_is_verified_once_and_the_nodes_own_never(
        tmp_path: Path, size: int) -> None:
    """Per height the node verifies exactly the signatures its peers sent in it: a peer's
    precommit met again in the next block's last commit is answered from memory, and so is the
    node's own precommit there (it made it; verifying it checked nothing)."""
    keys = validator_keys(size, Algorithm.ED25519)
    spec = network_spec(keys)
    node, recorder = node_under_test(spec, keys[0], tmp_path / "guard")
    peers = Peers(spec, keys, keys[0], node.settings)
    try:
        node.tick()
        peers.read(recorder)
        own_heights = 0
        for _ in range(3 * size):
            height = peers.prepare()
            before = node.verifier.verified
            deliver(node, height)
            assert node.verifier.verified - before == len(height.first) + len(height.second)
            own_heights += height.proposal.proposer_address == keys[0].address
            peers.read(recorder)
            peers.decided(height)
        assert own_heights >= 2  # the node proposed some of them (no proposal to verify then)
    finally:
        node.close()
