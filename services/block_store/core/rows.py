"""What the block store holds for one verified block, as plain values (no Cassandra here).

The shell (``services.block_store.store``) turns these into rows; the projector
(``services.block_store.projector``) makes them from blocks its follower verified. Keys:

- blocks by ``(chain, height bucket)``, clustered by height: a range of heights is one query
  per bucket, and a partition holds at most ``HEIGHTS_PER_PARTITION`` blocks (Cassandra wants
  partitions well under 100 MB; a block signed by a hundred ML-DSA-65 validators is ~350 KB);
- the time index by ``(chain, time bucket)``, clustered by header time, plus one row per
  non-empty time bucket in ``(chain)``: "the first pulse at or after T" is at most four
  queries however long the chain stood still;
- validator sets by ``(chain, set hash)``, and the heights where the governing set changed;
- one position row per chain: the last height stored and the next chain.blocks offset.

``chain`` is ``chain_key``: the chain id and the genesis hash, so two chains that share a name
(a test chain, a re-created network) never mix in one keyspace.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.finalized import FinalizedRecord
from protocol.pulse import is_random, pulse_status
from protocol.validators import ValidatorSet

HEIGHTS_PER_PARTITION = 1000
TIME_BUCKET_MS = 3_600_000  # one hour of header time per time-index partition


def chain_key(chain_id: str, genesis_hash: bytes) -> str:
    """The store's name for one chain: its id and the first 16 hex digits of its genesis hash
    (what block 1 links to)."""
    return f"{chain_id}/{genesis_hash.hex()[:16]}"


def height_bucket(height: int) -> int:
    return height // HEIGHTS_PER_PARTITION


def time_bucket(time_ms: int) -> int:
    return time_ms // TIME_BUCKET_MS


def height_buckets(first: int, last: int) -> list[tuple[int, int, int]]:
    """``(bucket, first, last)`` for each bucket the heights ``first..last`` span, in order."""
    spans = []
    height = first
    while height <= last:
        bucket = height_bucket(height)
        end = min(last, (bucket + 1) * HEIGHTS_PER_PARTITION - 1)
        spans.append((bucket, height, end))
        height = end + 1
    return spans


@dataclass(frozen=True, slots=True)
class BlockRow:
    """One stored block: the ``BlockFinalized`` bytes as they were on chain.blocks, where, and
    the pulse fields a reader of the table wants without decoding them."""

    height: int
    block_hash: bytes
    record: bytes
    kafka_offset: int
    written_at_ms: int  # the Kafka timestamp of the record
    time_ms: int
    randomness: bytes
    status: int  # ``protocol.pulse.PulseStatus``
    random: bool
    fresh_sources: int
    registered_sources: int
    validators_hash: bytes


@dataclass(frozen=True, slots=True)
class SetChange:
    """The validator set that governs heights from ``first_height`` on (until the next)."""

    first_height: int
    validators: ValidatorSet


@dataclass(frozen=True, slots=True)
class StoredBlock:
    """What the projector writes for one verified block: its row, and the set change it
    starts (its signing set differs from the previous height's, or it is height 1)."""

    row: BlockRow
    change: SetChange | None


def stored_block(raw: bytes, record: FinalizedRecord, offset: int, written_at_ms: int,
                 signed_by: ValidatorSet, previous_set_hash: bytes | None) -> StoredBlock:
    """The writes of verified ``record`` (read as ``raw`` at ``offset``), signed by
    ``signed_by``; ``previous_set_hash`` is the hash of the set that signed the height before
    (None at height 1, or when unknown: the change row is then written, which is harmless)."""
    header = record.block.header
    status = pulse_status(header)
    row = BlockRow(record.height, record.block.hash, raw, offset, written_at_ms, header.time_ms,
                   header.randomness, int(status), is_random(status), header.fresh_sources,
                   header.registered_sources, header.validators_hash)
    changed = previous_set_hash is None or previous_set_hash != signed_by.hash()
    return StoredBlock(row, SetChange(record.height, signed_by) if changed else None)
