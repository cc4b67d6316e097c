"""Merkle tree: RFC 6962 hashing rules and inclusion proofs."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.merkle import (
    EMPTY_ROOT,
    InclusionProof,
    MerkleProofError,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    node_hash,
    root_from_proof,
    verify_inclusion,
)


def test_empty_single_and_pair_follow_rfc6962() -> None:
    assert merkle_root([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert merkle_root([b"a"]) == hashlib.sha256(b"\x00a").digest()
    assert merkle_root([b"a", b"b"]) == hashlib.sha256(
        b"\x01" + leaf_hash(b"a") + leaf_hash(b"b")
    ).digest()


def test_three_leaves_split_at_the_largest_power_of_two() -> None:
    expected = node_hash(node_hash(leaf_hash(b"a"), leaf_hash(b"b")), leaf_hash(b"c"))
    assert merkle_root([b"a", b"b", b"c"]) == expected


def test_rfc6962_reference_root_of_the_test_vector_leaves() -> None:
    # The eight leaves of the certificate-transparency test vectors (RFC 6962 reference code).
    leaves = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243",
                                         "5051525354555657", "606162636465666768696a6b6c6d6e6f")]
    assert merkle_root(leaves).hex() == (
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    )


@given(st.lists(st.binary(max_size=40), min_size=1, max_size=40), st.data())
def test_every_leaf_has_a_valid_proof_and_others_do_not(leaves: list[bytes], data: st.DataObject
                                                       ) -> None:
    root = merkle_root(leaves)
    index = data.draw(st.integers(0, len(leaves) - 1))
    proof = inclusion_proof(leaves, index)
    assert verify_inclusion(leaves[index], proof, root)
    assert not verify_inclusion(leaves[index] + b"x", proof, root)
    if len(leaves) > 1:
        other = (index + 1) % len(leaves)
        if leaves[other] != leaves[index]:
            moved = InclusionProof(other, proof.size, proof.path)
            assert not verify_inclusion(leaves[index], moved, root)


def test_a_node_cannot_pose_as_a_leaf() -> None:
    leaves = [b"a", b"b", b"c", b"d"]
    inner = node_hash(leaf_hash(b"a"), leaf_hash(b"b"))
    forged = InclusionProof(0, 2, (node_hash(leaf_hash(b"c"), leaf_hash(b"d")),))
    assert not verify_inclusion(inner, forged, merkle_root(leaves))


def test_malformed_proofs_are_rejected() -> None:
    leaves = [b"a", b"b", b"c"]
    proof = inclusion_proof(leaves, 2)
    with pytest.raises(MerkleProofError):
        root_from_proof(b"c", InclusionProof(2, 3, (*proof.path, b"\x00" * 32)))
    with pytest.raises(MerkleProofError):
        root_from_proof(b"c", InclusionProof(2, 3, ()))
    with pytest.raises(MerkleProofError):
        inclusion_proof(leaves, 3)
    assert not verify_inclusion(b"c", InclusionProof(5, 3, proof.path), merkle_root(leaves))
