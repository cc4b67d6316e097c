"""The history accumulator: every header commits to the hashes of all blocks before it, so one
verified header proves any older block with O(log n) hashes.

The accumulator is a Merkle Mountain Range whose tree hash is exactly the RFC 6962 / RFC 9162
Merkle tree hash (``protocol.merkle``) of the block hashes of heights 1..n, in height order.
The RFC tree of n leaves is the perfect subtrees of n's binary decomposition (the mountains,
largest and leftmost first) joined right to left, so a node keeps only the ``popcount(n)`` peaks
and appends in O(log n); and an inclusion proof is the standard RFC 9162 audit path, checked
by ``merkle.root_from_proof``. Hashing is ``merkle``'s: leaf = SHA-256(0x00 || block hash),
node = SHA-256(0x01 || left || right), the empty tree = SHA-256(""). Distinct leaf and node
prefixes stop a node from passing for a block hash.

The root a header carries binds the size too: SHA-256(0x02 || size as 8 bytes big-endian ||
tree hash), a third prefix no leaf or node uses. An RFC 9162 path alone verifies against the
same tree hash for several sizes (leaf 0 of 257 or of 258 leaves takes the same steps), so
without the size in the root a proof checked with the wrong size could still pass.

A header at height h carries ``history_root`` = the root over heights 1..h-1 (height 1: the
empty root). Leaf index i is the block of height i + 1.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from protocol.merkle import (
    EMPTY_ROOT,
    InclusionProof,
    MerkleProofError,
    leaf_hash,
    node_hash,
    root_from_proof,
)

ROOT_PREFIX = b"\x02"  # the history root; merkle uses 0x00 (leaf) and 0x01 (node)


class HistoryProofError(MerkleProofError):
    """A proof cannot be made: an index outside the range, or a subtree the prover lacks."""


@dataclass(frozen=True, slots=True)
class History:
    """The accumulator over ``size`` block hashes: the roots of its perfect subtrees, largest
    (leftmost) first, one per set bit of ``size``."""

    size: int
    peaks: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if self.size < 0 or len(self.peaks) != self.size.bit_count():
            raise HistoryProofError(f"a history of {self.size} blocks has "
                                    f"{max(self.size, 0).bit_count()} peaks, not "
                                    f"{len(self.peaks)}")
        if any(len(peak) != 32 for peak in self.peaks):
            raise HistoryProofError("history peaks are 32-byte hashes")


EMPTY_HISTORY = History(0, ())


def append(history: History, block_hash: bytes) -> History:
    """``history`` with ``block_hash`` as its next leaf: equal peaks merge, as in binary
    addition."""
    peaks = list(history.peaks)
    carry = leaf_hash(block_hash)
    size = history.size
    while size & 1:
        carry = node_hash(peaks.pop(), carry)
        size >>= 1
    return History(history.size + 1, (*peaks, carry))


def history_of(block_hashes: list[bytes] | tuple[bytes, ...]) -> History:
    history = EMPTY_HISTORY
    for block_hash in block_hashes:
        history = append(history, block_hash)
    return history


def tree_hash(history: History) -> bytes:
    """The RFC 6962 tree hash of the leaves: the peaks joined right to left."""
    if not history.peaks:
        return EMPTY_ROOT
    result = history.peaks[-1]
    for peak in reversed(history.peaks[:-1]):
        result = node_hash(peak, result)
    return result


def sized_root(size: int, tree: bytes) -> bytes:
    """The header's history root of ``size`` leaves with RFC 6962 tree hash ``tree``."""
    return hashlib.sha256(ROOT_PREFIX + size.to_bytes(8, "big") + tree).digest()


def root(history: History) -> bytes:
    """The history root a header carries (module doc)."""
    return sized_root(history.size, tree_hash(history))


Subtree = Callable[[int, int], bytes]
"""``subtree(level, position)``: the root of the perfect subtree over leaves
``position * 2**level`` up to ``(position + 1) * 2**level`` (exclusive)."""


def range_root(subtree: Subtree, start: int, size: int) -> bytes:
    """The RFC 6962 hash of leaves ``start .. start + size - 1``, for a range the RFC tree has
    (``start`` a multiple of the largest power of two below ``size``)."""
    if size & (size - 1) == 0:
        level = size.bit_length() - 1
        return subtree(level, start >> level)
    split = 1 << ((size - 1).bit_length() - 1)
    return node_hash(range_root(subtree, start, split),
                     range_root(subtree, start + split, size - split))


def prove(subtree: Subtree, size: int, index: int) -> InclusionProof:
    """The RFC 9162 audit path of leaf ``index`` in the first ``size`` leaves, from the
    O(log n) subtree roots it needs (``SubtreeRoots`` computes them from the leaves)."""
    if not 0 <= index < size:
        raise HistoryProofError(f"leaf index {index} outside a history of {size} blocks")
    path: list[bytes] = []
    start, width = 0, size
    while width > 1:
        split = 1 << ((width - 1).bit_length() - 1)
        if index < start + split:
            path.append(range_root(subtree, start + split, width - split))
            width = split
        else:
            path.append(range_root(subtree, start, split))
            start, width = start + split, width - split
    return InclusionProof(index, size, tuple(reversed(path)))


def verify_inclusion(history_root: bytes, size: int, index: int, block_hash: bytes,
                     path: tuple[bytes, ...]) -> bool:
    """True when ``block_hash`` is leaf ``index`` (the block of height index + 1) of the
    history of ``size`` blocks whose root is ``history_root``; never raises."""
    if not 0 <= size < 1 << 64:
        return False
    try:
        tree = root_from_proof(block_hash, InclusionProof(index, size, path))
    except MerkleProofError:
        return False
    return sized_root(size, tree) == history_root


class SubtreeRoots:
    """Subtree roots for ``prove`` from what a server holds: the peaks of the history before
    the first block it saw (``start``, e.g. a snapshot's) and a lookup of the block hashes
    from there on. Roots of level ``memo_level`` and above are remembered (a node never
    changes; ``warm`` computes them as blocks arrive), so a proof costs O(log n) hashes, and
    memory stays near one hash per ``2**memo_level`` blocks. A subtree inside one of
    ``start``'s peaks, other than the peak itself, is unknown: ``HistoryProofError``."""

    def __init__(self, start: History, block_hash: Callable[[int], bytes | None],
                 memo_level: int = 4) -> None:
        self._start = start
        self._block_hash = block_hash
        self._memo_level = memo_level
        self._memo: dict[tuple[int, int], bytes] = {}
        self._peaks: dict[tuple[int, int], bytes] = {}
        offset = 0
        for level in reversed(range(start.size.bit_length())):
            if start.size >> level & 1:
                self._peaks[(level, offset >> level)] = start.peaks[len(self._peaks)]
                offset += 1 << level

    def warm(self, size: int) -> None:
        """Remember the subtrees that the leaf ``size - 1`` completes (a server calls this as
        each block arrives: about two hashes a block), so no proof ever makes a pass over the
        history."""
        level = self._memo_level
        while size > self._start.size and size % (1 << level) == 0:
            self(level, (size >> level) - 1)
            level += 1

    def __call__(self, level: int, position: int) -> bytes:
        key = (level, position)
        found = self._peaks.get(key) or self._memo.get(key)
        if found is not None:
            return found
        first, end = position << level, (position + 1) << level
        if end <= self._start.size:
            raise HistoryProofError(f"the subtree of blocks {first + 1}..{end} lies inside the "
                                    "history before this server's first block")
        if level == 0:
            block_hash = self._block_hash(first)
            if block_hash is None:
                raise HistoryProofError(f"the hash of block {first + 1} is not known here")
            return leaf_hash(block_hash)
        value = node_hash(self(level - 1, 2 * position), self(level - 1, 2 * position + 1))
        if level >= self._memo_level:
            self._memo[key] = value
        return value
