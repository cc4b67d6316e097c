"""Following the ledger for the monitor (with a genesis): whose turn each round was, how the
validators' ledger records changed, and which QRNG keys are registered.

``LedgerView`` wraps the chain reader every node uses (``BlockFollower``): each BlockFinalized is
verified and applied, so what the monitor says about validators comes from verified blocks. A
record that does not verify becomes a ``BlockRejected`` fact (and the follower stays where it
was). After a restart the view is rebuilt by reading ``chain.blocks`` up to the position the
monitor's persisted state has reached (``catch_up``), so the facts of later blocks are derived
exactly once.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

from protocol.codec import WireError
from protocol.commit import CommitFlag
from protocol.entropy.registry import SourceRegistryEntry
from protocol.finalized import FinalizedRecord
from protocol.follow import BlockOutcome, FollowError
from protocol.proposer import proposer
from protocol.pulse import pulse_status
from services.ledger.core.chain_spec import ChainSpec, source_registry
from services.ledger.core.state import ValidatorRecord
from services.monitor.core.facts import BlockRejected, BlockSeen, Fact, ValidatorStatusSeen
from streams.chain_wire import decode_finalized
from streams.kafka import Position, make_consumer
from streams.settings import Settings


def block_seen(record: FinalizedRecord, round_proposers: tuple[str, ...] = ()) -> BlockSeen:
    """What a finalized block tells without the ledger: its set, signers and contents."""
    block = record.block
    last_commit = block.body.last_commit
    return BlockSeen(
        height=record.height,
        round=record.commit.round,
        proposer=block.header.proposer_address.hex(),
        block_time_ms=block.header.time_ms,
        proposed_at_ms=record.proposed_at_ms,
        finalized_at_ms=record.finalized_at_ms,
        validators=tuple(s.validator_address.hex() for s in record.commit.signatures),
        signed=tuple(a.hex() for a in record.commit.signed_addresses()),
        previous_signed=tuple(  # a nil precommit is a signature too (the ledger counts it)
            s.validator_address.hex() for s in (last_commit.signatures if last_commit else ())
            if s.flag is not CommitFlag.ABSENT),
        round_proposers=round_proposers,
        double_signers=tuple(dict.fromkeys(e.validator_address.hex()
                                           for e in block.body.evidence)),
        tx_digests=tuple(hashlib.sha256(tx).hexdigest() for tx in block.body.txs),
        pulse_status=int(pulse_status(block.header)),
    )


def _status(record: ValidatorRecord, height: int, at_ms: int) -> ValidatorStatusSeen:
    return ValidatorStatusSeen(record.address.hex(), height, at_ms, record.tokens,
                               record.jailed, record.tombstoned)


class LedgerView:
    """The followed chain (verified from genesis) and what each new block changes."""

    def __init__(self, genesis: Path) -> None:
        self._follower = ChainSpec.load(genesis).follower()
        self.last_offset = -1  # offset on chain.blocks of the last record followed
        self._reported = False
        self._registry: dict[str, SourceRegistryEntry] | None = None

    @property
    def next_height(self) -> int:
        return self._follower.next_height

    def registry(self) -> dict[str, SourceRegistryEntry]:
        """The QRNG sources registered in the ledger at the followed height."""
        if self._registry is None:
            self._registry = source_registry(self._follower.chain.app_state)
        return self._registry

    def follow(self, record: FinalizedRecord, offset: int) -> tuple[Fact, ...]:
        """Verify and apply the record read at ``offset``; the facts it gives the monitor."""
        if offset <= self.last_offset:
            return ()  # followed already (catch-up, or a redelivery)
        self.last_offset = offset
        chain = self._follower.chain
        validators, priorities = chain.validators, self._follower.priorities
        before = dict(chain.app_state.validators)
        try:
            outcome = self._follower.accept(record)
        except FollowError as exc:
            return (BlockRejected(record.height, str(exc), record.finalized_at_ms),)
        if outcome is BlockOutcome.DUPLICATE:
            return ()
        self._registry = None
        rounds = tuple(proposer(priorities, validators, r).hex()
                       for r in range(record.commit.round))
        after = self._follower.chain.app_state.validators
        changed = [r for address, r in sorted(after.items())
                   if not self._reported or before.get(address) != r]
        self._reported = True
        return (block_seen(record, rounds),
                *(_status(r, record.height, record.finalized_at_ms) for r in changed))

    def rejected(self, offset: int, height: int, reason: str, at_ms: int) -> tuple[Fact, ...]:
        """A record that does not even decode still moves the followed position."""
        self.last_offset = max(self.last_offset, offset)
        return (BlockRejected(height, reason, at_ms),)

    def catch_up(self, settings: Settings, until_offset: int,
                 progress: Callable[[int], None] | None = None) -> None:
        """Follow ``chain.blocks`` up to (not including) ``until_offset``, deriving nothing:
        the monitor's persisted state already holds what those blocks told it."""
        if until_offset <= self.last_offset + 1:
            return
        topic = settings.topic("chain.blocks")
        consumer = make_consumer(settings, f"{settings.topic('monitor')}-catch-up-{time.time_ns()}",
                                 **{"fetch.wait.max.ms": 5})
        try:
            _, end = consumer.watermarks(topic)
            until = min(until_offset, end)
            consumer.assign([Position(topic, 0, self.last_offset + 1)])
            while self.last_offset + 1 < until:
                record = consumer.poll(0.5)
                if record is None:
                    if consumer.position(topic, 0) >= until:
                        break  # only transaction markers were left
                    continue
                if record.offset >= until:
                    break
                try:
                    self.follow(decode_finalized(record.value), record.offset)
                except WireError:
                    self.last_offset = record.offset
                if progress is not None:
                    progress(record.offset)
            self.last_offset = max(self.last_offset, until - 1)
            self._reported = False  # the next block reports every validator's record again
        finally:
            consumer.close()
