"""The history accumulator: peaks, roots equal to the RFC 6962 tree, O(log n) proofs that fail
on any change."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.merkle import EMPTY_ROOT, inclusion_proof, merkle_root
from protocol.mmr import (
    EMPTY_HISTORY,
    ROOT_PREFIX,
    History,
    HistoryProofError,
    SubtreeRoots,
    append,
    history_of,
    prove,
    root,
    sized_root,
    tree_hash,
    verify_inclusion,
)


def hashes(n: int, salt: int = 0) -> list[bytes]:
    return [hashlib.sha256(f"{salt}/{i}".encode()).digest() for i in range(n)]


def all_known(leaves: list[bytes]) -> SubtreeRoots:
    return SubtreeRoots(EMPTY_HISTORY, lambda i: leaves[i] if i < len(leaves) else None)


def flip(data: bytes, bit: int) -> bytes:
    bit %= len(data) * 8
    return data[:bit // 8] + bytes([data[bit // 8] ^ (1 << bit % 8)]) + data[bit // 8 + 1:]


def test_empty_history_has_a_fixed_root() -> None:
    assert tree_hash(EMPTY_HISTORY) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert root(EMPTY_HISTORY) == hashlib.sha256(
        b"\x02" + bytes(8) + hashlib.sha256(b"").digest()).digest()
    assert ROOT_PREFIX not in (b"\x00", b"\x01")


@pytest.mark.parametrize("n", [*range(0, 40), 255, 256, 257, 1000, 3000])
def test_root_is_the_rfc6962_tree_and_peaks_are_popcount(n: int) -> None:
    leaves = hashes(n)
    history = history_of(leaves)
    assert history.size == n
    assert len(history.peaks) == n.bit_count()
    assert tree_hash(history) == merkle_root(leaves)
    assert root(history) == sized_root(n, merkle_root(leaves))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3000), st.data())
def test_proofs_match_rfc9162_and_verify(n: int, data: st.DataObject) -> None:
    leaves = hashes(n, n)
    subtree = all_known(leaves)
    history_root = root(history_of(leaves))
    for index in data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=8)):
        proof = prove(subtree, n, index)
        assert proof == inclusion_proof(leaves, index)
        assert len(proof.path) <= max(n - 1, 0).bit_length()
        assert verify_inclusion(history_root, n, index, leaves[index], proof.path)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 64, 100])
def test_every_index_verifies(n: int) -> None:
    leaves = hashes(n)
    subtree, history_root = all_known(leaves), root(history_of(leaves))
    for index in range(n):
        assert verify_inclusion(history_root, n, index, leaves[index],
                                prove(subtree, n, index).path)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 2000), st.data())
def test_any_change_fails(n: int, data: st.DataObject) -> None:
    leaves = hashes(n, 7)
    index = data.draw(st.integers(0, n - 1))
    path = prove(all_known(leaves), n, index).path
    history_root = root(history_of(leaves))
    bit = data.draw(st.integers(0, 255))
    assert not verify_inclusion(history_root, n, index, flip(leaves[index], bit), path)
    assert not verify_inclusion(flip(history_root, bit), n, index, leaves[index], path)
    which = data.draw(st.integers(0, len(path) - 1))
    changed = (*path[:which], flip(path[which], bit), *path[which + 1:])
    assert not verify_inclusion(history_root, n, index, leaves[index], changed)
    other = data.draw(st.integers(0, n - 1).filter(lambda i: i != index))
    assert not verify_inclusion(history_root, n, other, leaves[index], path)
    assert not verify_inclusion(history_root, n, index, leaves[other], path)
    wrong_size = data.draw(st.integers(index + 1, 2 * n).filter(lambda s: s != n))
    assert not verify_inclusion(history_root, wrong_size, index, leaves[index], path)
    assert not verify_inclusion(history_root, n, index, leaves[index], path[:-1])
    assert not verify_inclusion(history_root, n, index, leaves[index], (*path, path[0]))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 600), st.integers(0, 600))
def test_append_then_root_equals_root_of_all(first: int, more: int) -> None:
    leaves = hashes(first + more, 3)
    history = history_of(leaves[:first])
    for leaf in leaves[first:]:
        history = append(history, leaf)
    assert history == history_of(leaves)
    assert tree_hash(history) == merkle_root(leaves)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 1500), st.data())
def test_a_server_that_started_late_proves_every_block_it_saw(start: int,
                                                              data: st.DataObject) -> None:
    more = data.draw(st.integers(1, 1500))
    leaves = hashes(start + more, 11)
    subtree = SubtreeRoots(history_of(leaves[:start]),
                           lambda i: leaves[i] if start <= i < len(leaves) else None)
    size = data.draw(st.integers(start + 1, start + more))
    index = data.draw(st.integers(start, size - 1))
    proof = prove(subtree, size, index)
    assert verify_inclusion(root(history_of(leaves[:size])), size, index, leaves[index],
                            proof.path)


def test_a_warm_server_proves_without_reading_old_leaves() -> None:
    leaves = hashes(1000, 5)
    reads: list[int] = []

    def lookup(i: int) -> bytes | None:
        reads.append(i)
        return leaves[i] if i < len(leaves) else None

    subtree = SubtreeRoots(history_of(leaves[:100]), lookup)
    for size in range(101, 1001):
        subtree.warm(size)
    reads.clear()
    proof = prove(subtree, 1000, 123)
    assert verify_inclusion(root(history_of(leaves)), 1000, 123, leaves[123], proof.path)
    assert len(reads) <= 2 * 16 * len(proof.path)  # only the leaves below the memo level


def test_a_block_inside_a_peak_before_the_start_is_not_provable() -> None:
    leaves = hashes(20)
    subtree = SubtreeRoots(history_of(leaves[:16]), lambda i: leaves[i] if i >= 16 else None)
    assert verify_inclusion(root(history_of(leaves)), 20, 17, leaves[17],
                            prove(subtree, 20, 17).path)
    with pytest.raises(HistoryProofError):
        prove(subtree, 20, 3)
    with pytest.raises(HistoryProofError):
        prove(subtree, 20, 20)


def test_history_refuses_the_wrong_number_of_peaks() -> None:
    with pytest.raises(HistoryProofError):
        History(3, (bytes(32),))
