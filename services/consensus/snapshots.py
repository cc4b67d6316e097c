"""Verified state snapshots on ``chain.snapshots``: how full readers start in time that does not
grow with the chain, and how the tally writes them (issue 17; ``protocol.snapshot`` says what a
snapshot holds and how it is verified).

Start-up (``start_follower``, used by validators, the tally and the gateway): the complete
snapshots on the topic are tried newest first. For a snapshot after height H, block H+1 is found
on ``chain.blocks`` by bisection over offsets and verified light from the node's trusted
checkpoint (kept under its state directory, ``light_reads.checkpoint_path``) or the genesis:
commit certificates with skipping verification, within the trusting period
(``services.consensus.light_reads``). The snapshot must link to that block
(``protocol.snapshot.verify_against``), and the block is then applied to it fully. Only then is
the snapshot used, and the rest of ``chain.blocks`` is folded from after that block. A snapshot
that fails any step is reported with the reason (logged, and in the ``StartReport``) and the
next older one is tried; when none is usable (none written yet, light verification cannot
decide, every one rejected) the node folds from genesis as before. ``full=True`` always
folds from genesis. After catching up, the node keeps its verified tip as its checkpoint, so
the next start verifies from there.

Writing (``SnapshotWriter``, in the tally): after every height divisible by the chain's
``snapshot_interval_blocks`` the tally writes its state in chunks, in the same transaction as
the block, keyed by height and chunk; snapshots older than the newest ``KEEP`` are deleted by
tombstones (the topic is compacted). Two tallies write identical bytes under identical keys.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from protocol.codec import WireError
from protocol.follow import BlockFollower, FollowError
from protocol.light import TrustedCheckpoint
from protocol.snapshot import (
    Snapshot,
    SnapshotError,
    StateCodec,
    restore,
    take_snapshot,
    verify_against,
)
from services.consensus.light_reads import (
    LightChain,
    LightUnavailableError,
    checkpoint_path,
    load_checkpoint,
    save_checkpoint,
)
from services.ledger.core.chain_spec import ChainSpec
from services.ledger.core.state import LedgerState
from streams.chain_reader import ChainTopic, catch_up
from streams.chain_wire import (
    SnapshotChunk,
    assemble_snapshots,
    decode_snapshot_chunk,
    encode_snapshot_chunks,
    snapshot_key,
)
from streams.errors import KafkaOperationError
from streams.kafka import Record, compacted
from streams.settings import Settings

log = logging.getLogger("qustream.snapshots")
KEEP = 3  # snapshots kept on the topic; older ones are tombstoned
Skip = Callable[[Record, Exception], object]


@dataclass(slots=True)
class StartReport:
    """How a follower started: from which snapshot (None: the genesis), what was rejected."""

    snapshot_height: int | None = None
    rejected: list[str] = field(default_factory=list)
    folded_from_offset: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        start = ("the genesis" if self.snapshot_height is None
                 else f"the verified snapshot after height {self.snapshot_height}")
        text = f"started from {start}, folded chain.blocks from offset {self.folded_from_offset}"
        if self.rejected:
            text += f"; rejected: {'; '.join(self.rejected)}"
        return text


def read_chunks(settings: Settings, on_skip: Skip | None = None) -> list[SnapshotChunk]:
    """The decodable chunks on ``chain.snapshots``: the latest record of each key, as the
    compacted topic will keep it (a tombstone removes its key)."""
    with ChainTopic(settings, name="chain.snapshots") as topic:
        low, high = topic.bounds()
        kept = compacted(topic.read(low, high - low))
    chunks: list[SnapshotChunk] = []
    for record in kept:
        try:
            chunks.append(decode_snapshot_chunk(record.value))
        except WireError as exc:
            if on_skip is not None:
                on_skip(record, exc)
    return chunks


def verified_snapshot(settings: Settings, spec: ChainSpec, snapshot: Snapshot,
                      trusted: TrustedCheckpoint, *, before_next: bool = False
                      ) -> BlockFollower[LedgerState]:
    """A follower at ``snapshot`` with block H+1 applied, its ``last_offset`` at that block
    (module doc); ``SnapshotError`` with the reason when it cannot be used. With
    ``before_next``, the follower at the snapshot's state instead, just before that block
    (verified all the same: the block is applied to a copy)."""
    follower = restore(snapshot, spec.app, spec.app)
    with ChainTopic(settings) as topic:
        light = LightChain(topic, spec.checkpoint(), trusted, spec.trusting_period_ms())
        try:
            block = light.block(snapshot.height + 1)
        except LookupError as exc:
            raise SnapshotError(snapshot.height, f"block {snapshot.height + 1} is not on "
                                                 "chain.blocks yet") from exc
        except LightUnavailableError as exc:
            raise SnapshotError(snapshot.height, f"block {snapshot.height + 1} cannot be "
                                                 f"verified light here: {exc}") from exc
    verify_against(follower, block.record)
    before = dataclasses.replace(follower, hashes=dict(follower.hashes), sets=dict(
        follower.sets), last_offset=block.offset - 1)  # the chain state itself is immutable
    try:
        follower.accept(block.record)
    except FollowError as exc:
        raise SnapshotError(snapshot.height, f"block {snapshot.height + 1}, signed by the "
                                             f"validators, does not apply to it: {exc}") from exc
    follower.last_offset = block.offset
    return before if before_next else follower


def start_follower(settings: Settings, spec: ChainSpec, state_dir: Path | None, *,
                   on_skip: Skip | None = None, full: bool = False, catch_up_now: bool = True,
                   chunks: list[SnapshotChunk] | None = None, max_height: int | None = None,
                   ) -> tuple[BlockFollower[LedgerState], StartReport]:
    """A follower caught up with ``chain.blocks``, from the newest usable snapshot (module
    doc). With ``catch_up_now=False`` it is only started: at the snapshot's state, positioned
    just before the verified block after it, so the caller's own read of the topic (which
    yields every block it applies, ``chain_reader.read_blocks``) begins with that block.
    ``chunks``: the topic's chunks when the caller has read them already; ``max_height``:
    only snapshots at or below it (a reader that must see the blocks after a height)."""
    started = time.perf_counter()
    report = StartReport()
    follower: BlockFollower[LedgerState] | None = None
    genesis = spec.checkpoint()
    kept = checkpoint_path(state_dir, genesis) if state_dir is not None else None
    if not full:
        trusted = load_checkpoint(kept, genesis) if kept is not None else genesis
        try:
            if chunks is None:
                chunks = read_chunks(settings, on_skip)
            candidates = assemble_snapshots(chunks, spec.chain_id)
        except KafkaOperationError as exc:  # the fold from genesis does not need them
            report.rejected.append(f"chain.snapshots could not be read: {exc}")
            candidates = []
        for snapshot in candidates:
            if max_height is not None and snapshot.height > max_height:
                continue
            try:
                follower = verified_snapshot(settings, spec, snapshot, trusted,
                                             before_next=not catch_up_now)
            except KafkaOperationError as exc:
                report.rejected.append(f"after height {snapshot.height}: chain.blocks could "
                                       f"not be read to verify it: {exc}")
                continue
            except SnapshotError as exc:
                report.rejected.append(exc.reason if exc.height is None
                                       else f"after height {exc.height}: {exc.reason}")
                log.warning("%s", exc)
                continue
            report.snapshot_height = snapshot.height
            break
    if follower is None:
        follower = spec.follower()
    report.folded_from_offset = follower.last_offset + 1
    if catch_up_now:
        follower = catch_up(settings, follower, on_skip=on_skip)
        if kept is not None:
            keep_checkpoint(kept, follower)
    report.seconds = time.perf_counter() - started
    log.info("chain follower %s in %.2f s", report.describe(), report.seconds)
    return follower, report


def keep_checkpoint(path: Path, follower: BlockFollower[LedgerState]) -> None:
    """Keep the follower's tip (verified in full) as the node's light-client checkpoint."""
    chain = follower.chain
    tip = chain.tip
    if tip.height <= 1:
        return
    save_checkpoint(path, TrustedCheckpoint(tip.chain_id, tip.height - 1,
                                            tip.previous_block_hash, tip.previous_randomness,
                                            tip.previous_time_ms, chain.validators,
                                            tip.accumulator))


class SnapshotWriter:
    """The tally's side (module doc): the (key, value) records to write after a height."""

    def __init__(self, interval: Callable[[LedgerState], int], written_by: str,
                 existing: list[SnapshotChunk]) -> None:
        self.interval = interval
        self.written_by = written_by
        self.kept: dict[int, int] = {}  # height -> chunks, of the snapshots on the topic
        for chunk in existing:
            self.kept[chunk.height] = max(self.kept.get(chunk.height, 0), chunk.chunks)

    def records_after(self, follower: BlockFollower[LedgerState], codec: StateCodec[LedgerState]
                      ) -> list[tuple[bytes, bytes | None]]:
        """The chunks of the snapshot after the follower's last height, when that height is a
        snapshot height, and tombstones for the snapshots beyond ``KEEP``; else nothing."""
        height = follower.chain.tip.height - 1
        every = self.interval(follower.chain.app_state)
        if every <= 0 or height <= 0 or height % every != 0 or height in self.kept:
            return []
        chunks = encode_snapshot_chunks(take_snapshot(follower, codec), self.written_by)
        out: list[tuple[bytes, bytes | None]] = list(chunks)
        self.kept[height] = len(chunks)
        for old in sorted(self.kept)[:-KEEP]:
            out.extend((snapshot_key(old, index), None) for index in range(self.kept.pop(old)))
        return out
