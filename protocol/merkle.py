"""Merkle tree hash with inclusion proofs, RFC 6962 / RFC 9162 style.

Leaf hash = SHA-256(0x00 || leaf), node hash = SHA-256(0x01 || left || right), and the root of
the empty list is SHA-256(""). A list of n > 1 leaves splits at k, the largest power of two
smaller than n, so the tree shape depends only on n (no duplicated last leaf: the second
preimage problem of Bitcoin's tree does not arise). The distinct leaf and node prefixes stop a
node from being presented as a leaf.

Blocks use it for the entropy chunk references, the transactions and the evidence; a light
client checks that one item is in a block with ``verify_inclusion`` against the header root.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from protocol.errors import InputError

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


class MerkleProofError(InputError):
    """An inclusion proof is malformed (index out of range, wrong path length)."""


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """The audit path for leaf ``index`` of a tree with ``size`` leaves (bottom-up siblings)."""

    index: int
    size: int
    path: tuple[bytes, ...]


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _root_of_hashes(hashes: Sequence[bytes]) -> bytes:
    if len(hashes) == 1:
        return hashes[0]
    k = _split(len(hashes))
    return node_hash(_root_of_hashes(hashes[:k]), _root_of_hashes(hashes[k:]))


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """Root over ``leaves`` in the given order; ``EMPTY_ROOT`` for none."""
    if not leaves:
        return EMPTY_ROOT
    return _root_of_hashes([leaf_hash(leaf) for leaf in leaves])


def _path(hashes: Sequence[bytes], index: int) -> list[bytes]:
    if len(hashes) <= 1:
        return []
    k = _split(len(hashes))
    if index < k:
        return [*_path(hashes[:k], index), _root_of_hashes(hashes[k:])]
    return [*_path(hashes[k:], index - k), _root_of_hashes(hashes[:k])]


def inclusion_proof(leaves: Sequence[bytes], index: int) -> InclusionProof:
    """Proof that ``leaves[index]`` is in the tree of ``leaves``."""
    if not 0 <= index < len(leaves):
        raise MerkleProofError(f"leaf index {index} outside a tree of {len(leaves)} leaves")
    return InclusionProof(
        index, len(leaves), tuple(_path([leaf_hash(leaf) for leaf in leaves], index))
    )


def root_from_proof(leaf: bytes, proof: InclusionProof) -> bytes:
    """The root that ``proof`` yields for ``leaf`` (RFC 9162 section 2.1.3.2)."""
    if not 0 <= proof.index < proof.size:
        raise MerkleProofError(f"leaf index {proof.index} outside a tree of {proof.size} leaves")
    fn, sn = proof.index, proof.size - 1
    result = leaf_hash(leaf)
    for sibling in proof.path:
        if sn == 0:
            raise MerkleProofError(f"proof path too long for a tree of {proof.size} leaves")
        if fn & 1 or fn == sn:
            result = node_hash(sibling, result)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            result = node_hash(result, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise MerkleProofError(f"proof path too short for a tree of {proof.size} leaves")
    return result


def verify_inclusion(leaf: bytes, proof: InclusionProof, root: bytes) -> bool:
    """True when ``leaf`` is at ``proof.index`` of a tree with root ``root``; never raises."""
    try:
        return root_from_proof(leaf, proof) == root
    except MerkleProofError:
        return False
