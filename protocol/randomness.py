"""Block randomness: HMAC-SHA-512 keyed by the previous block's randomness over the committed
entropy of the block, in canonical order.

    R_0 = HMAC-SHA-512(key = "QuStream/v1/GenesisRandomness", genesis randomness field)
    R_h = HMAC-SHA-512(key = R_{h-1}, canonical(height, [(source, seq, digest) of the block's
          committed refs, sorted]))

Each chunk's digest is SHA-256 of its payload: a vetted conditioning function (SP 800-90B
3.1.5.1.1) that keeps up to 256 bits of the payload's min-entropy; HMAC-SHA-512 (also vetted)
then compresses the chunks of all sources into 512 output bits. Working from digests keeps the
derivation checkable from the block alone (a subscriber never needs the payloads).

Only *committed* refs are mixed (``EntropyRef.committed``): chunks whose payload digest the
source fixed in its previous chunk, which an earlier block included. Nothing chosen when a chunk
is revealed enters the input: not an uncommitted chunk (a source's first, or one after a crash)
and not a chunk's own ``next_digest``. So the last source to reveal cannot grind the output by
trying payloads; ``docs/precommitment.md`` proves what a source and a proposer can still choose.

Bias bound of the proposer: ranges must be contiguous with the previous block and hold at most
one chunk per source, and ``proposal.validate_proposal`` rejects a block that leaves out a
verified chunk older than ``max_entropy_age`` heights. So per source the proposer chooses only
whether to include the one available chunk now or (within the age bound) later: with ``s``
sources at most ``2**s`` candidate outputs (plus letting its round time out, which hands the
block to another proposer). Choosing the best of ``k`` uniform outputs changes the probability
of any event of probability ``p`` to at most ``k * p``, i.e. at most ``s`` bits of influence.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence

from protocol.block import RANDOMNESS_SIZE, EntropyRef
from protocol.canonical import TAG_PREFIX, CanonicalEncodingError, CanonicalWriter
from protocol.errors import InputError

GENESIS_KEY = (TAG_PREFIX + "GenesisRandomness").encode("ascii")
_RANDOMNESS_TAG = CanonicalWriter("BlockRandomness").finish()  # length-prefixed domain tags
_MIXED_CHUNK_TAG = CanonicalWriter("MixedChunk").finish()
_MIXED_CHUNK_FIELDS = struct.Struct(">Q32s")  # seq, digest (EntropyRef checked its length)
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class RandomnessError(InputError):
    """A randomness input has the wrong size."""


def genesis_randomness(genesis_value: bytes) -> bytes:
    """R_0 from the genesis file's randomness field (any length, typically 64 bytes)."""
    return hmac.new(GENESIS_KEY, genesis_value, hashlib.sha512).digest()


def randomness_input(height: int, entropy: Sequence[EntropyRef]) -> bytes:
    """The HMAC message: the height (so even a block without committed entropy gets fresh
    output) and the committed references, sorted by (source id, seq), each as
    ``MixedChunk(text source, u64 seq, raw32 digest)``.

    Written as ``CanonicalWriter("BlockRandomness").u64(height).sequence(ordered, nested
    MixedChunk)`` would write it (tests/unit/test_randomness.py pins the bytes), with one
    pack per reference: a validator and every range client compute it per block."""
    ordered = sorted((ref for ref in entropy if ref.committed),
                     key=lambda ref: (ref.source_id, ref.seq))
    try:
        parts = [_RANDOMNESS_TAG, _U64.pack(height), _U32.pack(len(ordered))]
        for ref in ordered:
            source = ref.source_id.encode("utf-8")
            chunk = b"".join((_MIXED_CHUNK_TAG, _U32.pack(len(source)), source,
                              _MIXED_CHUNK_FIELDS.pack(ref.seq, ref.digest)))
            parts += (_U32.pack(len(chunk)), chunk)
    except struct.error as exc:
        raise CanonicalEncodingError(f"randomness input of height {height}: {exc}") from exc
    return b"".join(parts)


def block_randomness(previous: bytes, height: int, entropy: Sequence[EntropyRef]) -> bytes:
    """R_height from R_(height-1) = ``previous`` and the block's entropy references."""
    if len(previous) != RANDOMNESS_SIZE:
        raise RandomnessError(
            f"previous randomness must be {RANDOMNESS_SIZE} bytes, got {len(previous)}"
        )
    return hmac.new(previous, randomness_input(height, entropy), hashlib.sha512).digest()
