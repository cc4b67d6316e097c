"""Re-checking what is read back from the block store: Cassandra is trusted no more than Kafka.

The projector verified every block fully before storing it, but anyone who can write the
keyspace can change a row afterwards. So a reader accepts a stored block only on evidence it
can check cheaply, without the application state:

- one block: its certificate verifies against the validator set that governs its height, as
  the reader knows it (``SetHistory``), and its body matches its header (``certified``);
- a run of blocks: consecutive heights whose hashes link (each header names the previous
  block's hash), the last one certified: one certificate vouches for the whole run, as for a
  light client (``linked``);
- the first block at or after a time: certified, and the block before it links to it and is
  earlier than the time (``first_at_or_after``), so a wrong time index is caught;
- the set that governs a height: from the genesis set, each change certified by the set
  before it: block ``h - 1``, signed by the old set, names the new one as the next set
  (``SetHistory.extended``).

What a reader cannot check this way: that the store lists *every* set change. A store that
leaves one out makes the reader hold an older set for later heights; blocks of those heights
then fail the check (their headers name the newer set), unless more than 2/3 of the older set
signed a forged block after they left it. Readers that verified the heights themselves (the
gateway's own set history) use that instead; the store's list is for heights they never saw.

The record's state hash (the application state after the block) is not signed by the block's
own certificate: the next header's app hash commits to it. Each function returns the reason a
read was refused, or None.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from protocol.check import check_commit
from protocol.finalized import FinalizedRecord
from protocol.validators import ValidatorSet


def certified(record: FinalizedRecord, height: int, chain_id: str,
              validators: ValidatorSet) -> str | None:
    """Why ``record`` is not the certified block of ``height`` under ``validators`` (the set
    that governs that height); None when it is."""
    block = record.block
    if record.height != height or record.chain_id != chain_id:
        return (f"the stored record is block {record.height} of {record.chain_id!r}, not "
                f"{height} of {chain_id!r}")
    if block.header.validators_hash != validators.hash():
        return f"block {height} names another validator set than the one of its height"
    mismatch = block.structural_problem()
    if mismatch is not None:
        return f"block {height}: {mismatch.reason}"
    finding = check_commit(chain_id, validators, block, record.commit)
    return None if finding is None else f"block {height}: {finding.reason}"


def linked(records: Sequence[FinalizedRecord]) -> str | None:
    """Why ``records`` are not consecutive blocks joined by hash links with bodies that match
    their headers (the last one's certificate is the caller's to check)."""
    for before, after in pairwise(records):
        if after.height != before.height + 1:
            return f"block {after.height} follows {before.height}"
        if after.block.header.previous_block_hash != before.block.hash:
            return f"block {after.height} does not link to the stored block {before.height}"
    for record in records[:-1]:  # the last one's body is checked with its certificate
        mismatch = record.block.structural_problem()
        if mismatch is not None:
            return f"block {record.height}: {mismatch.reason}"
    return None


def first_at_or_after(record: FinalizedRecord, before: FinalizedRecord | None,
                      time_ms: int) -> str | None:
    """Why (already certified) ``record`` is not the first block at or after ``time_ms``,
    given ``before``, the stored block of the height below it (None at height 1)."""
    if record.block.header.time_ms < time_ms:
        return f"the time index gave block {record.height}, earlier than {time_ms}"
    if record.height == 1:
        return None
    if before is None or linked((before, record)) is not None:
        return f"block {record.height - 1} is not stored, or does not link to the next block"
    if before.block.header.time_ms >= time_ms:
        return f"the time index skipped block {before.height}, which is at or after {time_ms}"
    return None


@dataclass(frozen=True, slots=True)
class SetHistory:
    """The validator set of every height up to ``through``: ``changes`` are ``(first height,
    set)`` in height order, the first at height 1 (the genesis set). Grows by ``extended``."""

    changes: tuple[tuple[int, ValidatorSet], ...]
    through: int

    @classmethod
    def of_genesis(cls, validators: ValidatorSet) -> SetHistory:
        return cls(((1, validators),), 1)

    def set_at(self, height: int) -> ValidatorSet | None:
        """The set governing ``height``; None above ``through`` (not known yet) or below 1."""
        if not 1 <= height <= self.through:
            return None
        index = bisect_right(self.changes, height, key=lambda change: change[0]) - 1
        return self.changes[index][1]

    def extended(self, chain_id: str, first_height: int, validators: ValidatorSet,
                 record_before: FinalizedRecord | None) -> SetHistory | str:
        """The history with ``validators`` governing from ``first_height`` (above ``through``),
        given the stored block ``first_height - 1``; or why that change does not verify."""
        if first_height <= self.through:
            return f"a set change at {first_height}, not above {self.through}"
        previous = self.changes[-1][1]
        if record_before is None:
            return f"block {first_height - 1}, which names the set of {first_height}, is missing"
        problem = certified(record_before, first_height - 1, chain_id, previous)
        if problem is not None:
            return problem
        if record_before.block.header.next_validators_hash != validators.hash():
            return (f"block {first_height - 1} names another next validator set than the one "
                    f"stored for height {first_height}")
        changes = self.changes if validators.hash() == previous.hash() else (
            *self.changes, (first_height, validators))
        return SetHistory(changes, first_height)

    def through_height(self, height: int) -> SetHistory:
        """The history known to hold, unchanged, up to ``height`` (no change listed before)."""
        return self if height <= self.through else SetHistory(self.changes, height)
