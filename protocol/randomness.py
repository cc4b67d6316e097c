"""Block randomness: HMAC-SHA-512 keyed by the previous block's randomness over the block's
entropy references in canonical order.

    R_0 = HMAC-SHA-512(key = "QuStream/v1/GenesisRandomness", genesis randomness field)
    R_h = HMAC-SHA-512(key = R_{h-1}, canonical(height, [(source, seq, digest) sorted]))

Each chunk's digest is SHA-256 of its payload: a vetted conditioning function (SP 800-90B
3.1.5.1.1) that keeps up to 256 bits of the payload's min-entropy; HMAC-SHA-512 (also vetted)
then compresses the chunks of all sources into 512 output bits. Working from digests keeps the
derivation checkable from the block alone (a subscriber never needs the payloads).

Bias bound. The proposer cannot pick entropy freely: ranges must be contiguous with the
previous block, and ``proposal.validate_proposal`` rejects a block that leaves out a verified
chunk older than ``max_entropy_age`` heights. So for each source the proposer can only choose
where to cut the range among the chunks younger than the bound, at most ``c`` choices per
source where ``c`` is the number of chunks a source delivers in ``max_entropy_age`` heights; with
``s`` sources that is at most ``c**s`` candidate outputs (plus the choice to let its round time
out, which hands the block to another proposer). Choosing the best of ``k`` uniform outputs
changes the probability of any event of probability ``p`` to at most ``k * p``, i.e. at most
``log2(c**s)`` bits of influence. Operators bound it by keeping ``max_entropy_age`` small (the
default of 2 heights with one chunk per source per height gives c <= 3).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from protocol.block import RANDOMNESS_SIZE, EntropyRef
from protocol.canonical import TAG_PREFIX, CanonicalWriter
from protocol.errors import InputError

GENESIS_KEY = (TAG_PREFIX + "GenesisRandomness").encode("ascii")


class RandomnessError(InputError):
    """A randomness input has the wrong size."""


def genesis_randomness(genesis_value: bytes) -> bytes:
    """R_0 from the genesis file's randomness field (any length, typically 64 bytes)."""
    return hmac.new(GENESIS_KEY, genesis_value, hashlib.sha512).digest()


def randomness_input(height: int, entropy: Sequence[EntropyRef]) -> bytes:
    """The HMAC message: the height (so even an empty block gets fresh output) and the
    entropy references sorted by (source id, seq)."""
    ordered = sorted(entropy, key=lambda ref: (ref.source_id, ref.seq))
    return (
        CanonicalWriter("BlockRandomness")
        .u64(height)
        .sequence(ordered, lambda w, r: w.nested(r.canonical()))
        .finish()
    )


def block_randomness(previous: bytes, height: int, entropy: Sequence[EntropyRef]) -> bytes:
    """R_height from R_(height-1) = ``previous`` and the block's entropy references."""
    if len(previous) != RANDOMNESS_SIZE:
        raise RandomnessError(
            f"previous randomness must be {RANDOMNESS_SIZE} bytes, got {len(previous)}"
        )
    return hmac.new(previous, randomness_input(height, entropy), hashlib.sha512).digest()
