"""The read side of the block store: rows as they are in Cassandra, not yet trusted.

Everything here returns what the tables hold; a reader checks it (``services.block_store.core
.checks``) before serving it: the gateway's ``services.gateway.store_archive`` does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cassandra.cluster import Session

from protocol.errors import InputError
from protocol.validators import ValidatorSet, validator_set_from_json
from services.block_store.core import height_buckets, time_bucket
from services.block_store.store import BlockStatements, BlockStoreError
from services.shard_writer.store import CASSANDRA_ERRORS


@dataclass(frozen=True, slots=True)
class RawBlock:
    """A stored block row: the ``BlockFinalized`` bytes and where they were on chain.blocks."""

    height: int
    record: bytes
    kafka_offset: int
    written_at_ms: int


class BlockQueries:
    """Reads of one chain (``chain``: ``core.chain_key``) in ``keyspace``. Raises
    ``BlockStoreError`` on construction while the tables do not exist, and on driver errors."""

    def __init__(self, session: Session, keyspace: str, chain: str) -> None:
        self.session = session
        self.chain = chain
        self.statements = BlockStatements.prepare(session, keyspace)

    def _rows(self, statement: Any, params: tuple[Any, ...]) -> list[Any]:
        try:
            return list(self.session.execute(statement, params))
        except CASSANDRA_ERRORS as exc:
            raise BlockStoreError(f"block store query failed: {exc}") from exc

    def position(self) -> tuple[int, int] | None:
        """(last height stored, next chain.blocks offset), or None before the first batch."""
        rows = self._rows(self.statements.select_position, (self.chain,))
        if not rows or rows[0].height is None:
            return None
        return int(rows[0].height), int(rows[0].next_offset)

    def blocks(self, first: int, last: int) -> list[RawBlock]:
        """The stored rows of heights ``first..last``, in height order (gaps left out)."""
        found: list[RawBlock] = []
        for bucket, low, high in height_buckets(max(1, first), last):
            found += [RawBlock(row.height, row.record, row.kafka_offset, row.written_at_ms)
                      for row in self._rows(self.statements.select_blocks,
                                            (self.chain, bucket, low, high))]
        return found

    def block(self, height: int) -> RawBlock | None:
        rows = self.blocks(height, height)
        return rows[0] if rows else None

    def first_height_at_or_after(self, time_ms: int) -> int | None:
        """The height the time index gives for the first block at or after ``time_ms``: the
        first non-empty time bucket from ``time_ms``'s, then its first time at or after
        ``time_ms``; when that bucket holds only earlier times, the next non-empty bucket's
        first block (at most four queries)."""
        bucket = time_bucket(time_ms)
        for _ in range(2):
            buckets = self._rows(self.statements.select_time_bucket, (self.chain, bucket))
            if not buckets:
                return None
            bucket = int(buckets[0].bucket)
            rows = self._rows(self.statements.select_time, (self.chain, bucket, time_ms))
            if rows:
                return int(rows[0].height)
            bucket += 1
        return None

    def validator_set(self, set_hash: bytes) -> ValidatorSet | None:
        """The stored set named ``set_hash`` (None when missing or unreadable; the caller
        compares its hash)."""
        rows = self._rows(self.statements.select_set, (self.chain, set_hash))
        if not rows:
            return None
        try:
            return validator_set_from_json(json.loads(rows[0].validators))
        except (ValueError, KeyError, TypeError, InputError):
            return None

    def set_changes(self, after: int, through: int) -> Sequence[tuple[int, bytes]]:
        """``(first height, set hash)`` of the set changes in ``after < height <= through``."""
        return [(int(row.first_height), bytes(row.set_hash))
                for row in self._rows(self.statements.select_set_changes,
                                      (self.chain, after, through))]
