"""Light reads of the chain: the head of ``chain.blocks``, or any height, verified from a trusted
checkpoint in time that does not depend on the chain's length (``qustream chain head|block``).

Nothing on the topic is trusted. A block is accepted by ``protocol.light`` from a checkpoint:
the next block fully (hash link, randomness, +2/3 of the tracked set), a far one by skipping
verification (validators holding more than 1/3 of the trusted power signed it, and +2/3 of its
own set). The checkpoint is the newest block verified before, kept under the state directory
per genesis (``checkpoint_path``), or the genesis itself.

- ``head``: the last records of the topic (``WINDOW`` of them); the highest block among them
  that verifies from the checkpoint is the head. The latest *random* pulse is the head itself
  or found by walking back from the head over hash links (each block's hash is the
  ``previous_block_hash`` of the verified one after it): the cost is the number of unmarked
  pulses at the top of the chain, not its length.
- ``block(H)``: the offset of height H is found by bisection over offsets (heights only grow
  along the topic; a record that breaks the order only costs the search its verification), in
  O(log n) reads. Above the checkpoint, H is verified from it; at or below, by skipping from the
  genesis, or, when that is no longer possible (the genesis set changed, or its trusting period
  is over), by hash links down from the checkpoint (linear in the distance to it).

Whenever light verification cannot decide (the validator set changed since the checkpoint, the
checkpoint outlived the trusting period, no record verifies), ``LightUnavailableError`` says why
and the caller verifies fully from genesis instead; the light path never accepts less.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Protocol

from protocol.codec import WireError
from protocol.commit import TrustLevel
from protocol.errors import QuStreamError
from protocol.finalized import FinalizedRecord
from protocol.light import (
    BlockRejectedError,
    LightVerifier,
    TrustedCheckpoint,
    TrustExpiredError,
    UnknownValidatorSetError,
    wall_clock_ms,
)
from protocol.pulse import is_random, pulse_status
from protocol.validators import ValidatorSet
from streams.chain_wire import decode_finalized
from streams.kafka import Record

WINDOW = 64  # records read at once from the end of the topic, or around a height
MAX_WALK_BACK = 100_000  # blocks walked back over hash links for the latest random pulse


class Span(Protocol):
    """What the light reads need of the topic (``streams.chain_reader.ChainTopic``)."""

    def bounds(self) -> tuple[int, int]: ...

    def read(self, first: int, count: int) -> list[Record]: ...


class LightUnavailableError(QuStreamError):
    """Light verification cannot decide here; verify fully from genesis (the reason says why)."""


@dataclass(frozen=True, slots=True)
class LightBlock:
    """A block verified without re-execution; ``signed_by`` is the validator set its header
    names (for the signed power shown; None when no set known here has that hash)."""

    record: FinalizedRecord
    offset: int
    signed_by: ValidatorSet | None
    how: str  # how it was verified, for the reader


def checkpoint_path(state_dir: Path, genesis: TrustedCheckpoint) -> Path:
    """Where the newest verified block of the chain that starts at ``genesis`` is kept (per
    genesis: a new chain with the same chain id gets its own file)."""
    return state_dir / "chain" / f"checkpoint-{genesis.block_hash.hex()[:16]}.json"


def load_checkpoint(path: Path, genesis: TrustedCheckpoint) -> TrustedCheckpoint:
    """The kept checkpoint, or the genesis when there is none (or it is unreadable, or of
    another chain)."""
    try:
        kept = TrustedCheckpoint.load(path)
    except (OSError, ValueError, KeyError, TypeError):
        return genesis
    return kept if kept.chain_id == genesis.chain_id and kept.height > 0 else genesis


def save_checkpoint(path: Path, checkpoint: TrustedCheckpoint) -> None:
    """Replace the kept checkpoint atomically (a crash leaves the old one or the new one).
    Nodes run with one ``--state-dir`` share the file and may save it at the same instant, so
    each writes its own partial file; the last rename wins, and every candidate is whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=path.name, suffix=".partial", dir=path.parent)
    partial = Path(name)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(checkpoint.to_json())
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


class LightChain:
    """Light reads over ``topic`` from ``trusted`` (module doc). ``trusted`` advances to the
    highest block verified; keep it with ``save_checkpoint``."""

    def __init__(self, topic: Span, genesis: TrustedCheckpoint,
                 trusted: TrustedCheckpoint, trusting_period_ms: int, *,
                 clock_ms: Callable[[], int] = wall_clock_ms) -> None:
        self.topic = topic
        self.genesis = genesis
        self.trusted = trusted
        self.trusting_period_ms = trusting_period_ms
        self.clock_ms = clock_ms

    # --- verification ------------------------------------------------------------------------

    def _from(self, checkpoint: TrustedCheckpoint, record: FinalizedRecord
              ) -> tuple[ValidatorSet | None, TrustedCheckpoint]:
        """Verify ``record`` from ``checkpoint``: the set that signed it and the checkpoint it
        becomes. Raises ``BlockRejectedError``."""
        if record.height == checkpoint.height:
            if record.block.hash != checkpoint.block_hash:
                raise BlockRejectedError(record.height, "differs from the trusted block")
            return self._known_set(record), checkpoint
        verifier = LightVerifier(checkpoint, None, TrustLevel(), self.trusting_period_ms,
                                 self.clock_ms)
        if record.height == checkpoint.height + 1:
            verifier.verify(record)
        else:
            verifier.skip_to(record)
        return verifier.sets.get(record.height), verifier.trusted

    def _first_verified(self, candidates: list[tuple[int, FinalizedRecord]],
                        checkpoints: list[tuple[str, TrustedCheckpoint]]) -> LightBlock:
        """The first candidate that verifies from one of ``checkpoints`` (in order)."""
        reasons: list[str] = []
        for offset, record in candidates:
            for name, checkpoint in checkpoints:
                if record.height < checkpoint.height:
                    continue
                try:
                    signed_by, reached = self._from(checkpoint, record)
                except (UnknownValidatorSetError, TrustExpiredError) as exc:
                    # Not shown to be forged (the trusted validators may have signed it): a
                    # lower record must not pass for the head, so the light path stops here.
                    raise LightUnavailableError(
                        f"height {record.height} from {name}: {exc.reason}") from exc
                except BlockRejectedError as exc:
                    reasons.append(f"height {record.height} at offset {offset} from {name}: "
                                   f"{exc.reason}")
                    continue
                if reached.height > self.trusted.height:
                    self.trusted = reached
                how = ("the trusted checkpoint" if record.height == checkpoint.height else
                       f"{'next block' if record.height == checkpoint.height + 1 else 'skipping'}"
                       f" from {name}")
                return LightBlock(record, offset, signed_by, how)
        raise LightUnavailableError("no record verifies light: " + ("; ".join(reasons[:3])
                                                                     or "none found"))

    def _known_set(self, record: FinalizedRecord) -> ValidatorSet | None:
        """The set a block's header names, among the sets known here (the genesis set, the
        checkpoint's next set): for a block reached by its hash rather than its certificate."""
        wanted = record.block.header.validators_hash
        for known in (self.trusted.next_validators, self.genesis.next_validators):
            if known.hash() == wanted:
                return known
        return None

    # --- reads -------------------------------------------------------------------------------

    def _decoded(self, first: int, count: int) -> Iterator[tuple[int, FinalizedRecord]]:
        for message in self.topic.read(first, count):
            try:
                yield message.offset, decode_finalized(message.value)
            except (WireError, TypeError):
                continue  # garbage on the topic: not a block

    def head(self) -> LightBlock:
        """The highest block among the last ``WINDOW`` records that verifies."""
        _, end = self.topic.bounds()
        found = sorted(self._decoded(max(0, end - WINDOW), WINDOW),
                       key=lambda item: (-item[1].height, -item[0]))
        if not found:
            raise LookupError("no finalized block yet")
        return self._first_verified(found, [("the checkpoint", self.trusted)])

    def latest_random(self, head: LightBlock) -> LightBlock | None:
        """The newest random pulse at or below ``head``, over hash links (module doc); None
        when none is within ``MAX_WALK_BACK`` blocks."""
        if is_random(pulse_status(head.record.block.header)):
            return head
        for offset, record in islice(self._linked_below(head.offset, head.record),
                                     MAX_WALK_BACK):
            if is_random(pulse_status(record.block.header)):
                return LightBlock(record, offset, self._known_set(record),
                                  f"hash links down from height {head.record.height}")
        return None

    def below(self, block: LightBlock) -> LightBlock | None:
        """The block under ``block``, verified by its hash link; None at height 1 or when it
        is not on the topic."""
        for offset, record in self._linked_below(block.offset, block.record):
            return LightBlock(record, offset, self._known_set(record),
                              f"hash link from height {block.record.height}")
        return None

    def _linked_below(self, offset: int, top: FinalizedRecord
                      ) -> Iterator[tuple[int, FinalizedRecord]]:
        """The blocks below ``top`` (at ``offset``), newest first, read back ``WINDOW`` records
        at a time: each is the record whose hash the block above it names, so each is verified
        by the hash links from ``top``."""
        low, _ = self.topic.bounds()
        wanted_height, wanted_hash = top.height - 1, top.block.header.previous_block_hash
        end = offset
        while wanted_height >= 1 and end > low:
            start = max(low, end - WINDOW)
            for at, record in sorted(self._decoded(start, end - start), reverse=True,
                                     key=lambda item: item[0]):
                if record.height == wanted_height and record.block.hash == wanted_hash:
                    yield at, record
                    wanted_height -= 1
                    wanted_hash = record.block.header.previous_block_hash
            end = start

    def block(self, height: int) -> LightBlock:
        """Block ``height`` verified light (module doc). ``LookupError``: not on the topic."""
        candidates = self._at_height(height)
        if not candidates:
            raise LookupError(f"no record of height {height} on the topic")
        if height >= self.trusted.height:
            return self._first_verified(candidates, [("the checkpoint", self.trusted)])
        try:
            return self._first_verified(candidates, [("the genesis", self.genesis)])
        except LightUnavailableError:
            return self._linked_down(height)

    def _linked_down(self, height: int) -> LightBlock:
        """Block ``height`` below the checkpoint, over hash links down from it."""
        top = [item for item in self._at_height(self.trusted.height)
               if item[1].block.hash == self.trusted.block_hash]
        if not top:
            raise LightUnavailableError(f"the checkpoint's block {self.trusted.height} is not "
                                        "on the topic")
        for at, candidate in self._linked_below(*top[0]):
            if candidate.height == height:
                return LightBlock(candidate, at, self._known_set(candidate),
                                  "hash links down from the checkpoint at height "
                                  f"{self.trusted.height}")
        raise LightUnavailableError(f"no hash-linked block {height} below the checkpoint")

    def _at_height(self, height: int) -> list[tuple[int, FinalizedRecord]]:
        """Records claiming ``height``: bisection over offsets for the first record at or above
        it, then the records of that height around there."""
        low, high = self.topic.bounds()
        lo, hi = low, high
        while lo < hi:
            mid = (lo + hi) // 2
            first = next(self._decoded(mid, min(WINDOW, hi - mid)), None)
            if first is None:
                hi = mid
            elif first[1].height < height:
                lo = first[0] + 1
            else:
                hi = mid
        return [item for item in self._decoded(lo, WINDOW) if item[1].height == height]
