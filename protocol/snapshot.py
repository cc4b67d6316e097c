"""State snapshots: a reader starts from the chain state after height H instead of folding every
block from genesis (CometBFT's state sync; verified further than it verifies).

A snapshot after H holds what a ``BlockFollower`` needs to apply block H+1: the chain tip (with
the peaks of the history accumulator over blocks 1..H, ``protocol.mmr``), the
application state (in the application's canonical bytes, ``StateCodec``), the commit of H, the
evidence window (height, block time and validator set of the last heights, each distinct set
written once), the evidence already committed in that window, and the proposer priorities. Its
hash is the SHA-256 of those bytes.

How a reader accepts one (``restore``, then ``verify_against``, then the next block):

1. ``restore``: the bytes decode strictly; the application state's hash, recomputed, must equal
   the tip's app hash, and the two validator sets the state names (heights H+1 and H+2) must
   hash to the tip's validators hashes;
2. ``verify_against(follower, record)``: block H+1, verified by the caller from a trusted
   checkpoint or the genesis (commit certificates, skipping verification and a trusting period:
   ``protocol.light``), must link to the snapshot: its header's app hash is the recomputed state
   hash, its previous block hash is the tip's, its validators and next validators hashes are
   the state's sets, its history root the root of the snapshot's peaks. So the application
   state, the validator sets, the history and block H are exactly what validators holding +2/3
   of the power signed;
   and the proposer the snapshot's priorities name for the round of its commit must be its
   proposer;
3. the caller applies block H+1 fully (``BlockFollower.accept``): its time, randomness,
   entropy ranges, last commit and evidence are checked against the rest of the snapshot (the
   previous block's time and randomness, the sources' last sequences and precommitments and
   the previous block's sources, the evidence window),
   and its re-execution must give the state hash the record claims. Those parts are in no
   header hash, so this is how they are checked: a lie in them makes a signed block fail to
   verify (the snapshot is rejected, the reader falls back); it can never make a block that
   +2/3 did not sign pass.

A snapshot that fails any step raises ``SnapshotError`` with the reason; readers try the next
older one, and the fold from genesis is always there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

from protocol.app import Application
from protocol.canonical import CanonicalDecodeError, CanonicalReader, CanonicalWriter, sha256
from protocol.chain import ChainState, ChainTip, HeightRecord
from protocol.codec import MAX_ITEMS, WireError, decode_commit, decode_validator_set
from protocol.errors import InputError
from protocol.finalized import FinalizedRecord
from protocol.follow import BlockFollower
from protocol.mmr import History, HistoryProofError
from protocol.proposer import ProposerPriorities, proposer
from protocol.validators import ValidatorSet

S = TypeVar("S")
TAG = "ChainSnapshot"
MAX_HISTORY = 1_000_000


class SnapshotError(InputError):
    """A snapshot cannot be used: it does not decode, or does not match what was verified."""

    code = "bad_snapshot"

    def __init__(self, height: int | None, reason: str) -> None:
        super().__init__(f"snapshot after height {height if height is not None else '?'} "
                         f"rejected: {reason}")
        self.height = height
        self.reason = reason


class StateCodec(Protocol[S]):
    """The application state in canonical bytes and back (strict: one state, one encoding)."""

    def encode_state(self, state: S) -> bytes: ...

    def decode_state(self, data: bytes) -> S: ...


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The encoded chain state after ``height`` and its hash."""

    chain_id: str
    height: int
    data: bytes

    @property
    def hash(self) -> bytes:
        return sha256(self.data)


def take_snapshot(follower: BlockFollower[S], codec: StateCodec[S]) -> Snapshot:
    """The chain state ``follower`` holds (after its last applied height)."""
    chain = follower.chain
    tip = chain.tip
    sets: list[ValidatorSet] = []
    index: dict[bytes, int] = {}
    for record in chain.history:
        key = record.validators.hash()
        if key not in index:
            index[key] = len(sets)
            sets.append(record.validators)
    w = CanonicalWriter(TAG).text(tip.chain_id).u64(tip.height)
    w.raw(tip.previous_block_hash, 32).u64(tip.previous_time_ms).bytes(tip.previous_randomness)
    w.sequence(tip.last_seq, lambda w2, item: w2.text(item[0]).i64(item[1]))
    w.raw(tip.app_hash, 32).raw(tip.validators_hash, 32).raw(tip.next_validators_hash, 32)
    w.u32(tip.registered_sources)
    if tip.accumulator is None:
        raise SnapshotError(tip.height - 1, "a chain without its history accumulator cannot be "
                                            "snapshot")
    w.u64(tip.accumulator.size).sequence(tip.accumulator.peaks,
                                         lambda w2, peak: w2.raw(peak, 32))
    if tip.commitments is None or tip.previous_sources is None:
        raise SnapshotError(tip.height - 1, "a chain without its entropy precommitments cannot "
                                            "be snapshot")
    w.sequence(tip.commitments, lambda w2, item: w2.text(item[0]).raw(item[1], 32))
    w.sequence(tip.previous_sources, lambda w2, source: w2.text(source))
    w.nested(codec.encode_state(chain.app_state))
    w.optional(chain.last_commit, lambda w2, commit: w2.nested(commit.canonical()))
    w.sequence(sets, lambda w2, validators: w2.nested(validators.canonical()))
    w.sequence(chain.history, lambda w2, record: w2.u64(record.height).u64(record.time_ms)
               .u32(index[record.validators.hash()]))
    w.sequence(sorted(chain.committed_evidence), lambda w2, item: w2.u64(item[0]).raw(item[1], 32))
    w.u64(chain.evidence_max_age)
    w.sequence(follower.priorities.entries, lambda w2, item: w2.raw(item[0], 20).i64(item[1]))
    return Snapshot(tip.chain_id, tip.height - 1, w.finish())


def restore(snapshot: Snapshot, app: Application[S], codec: StateCodec[S]) -> BlockFollower[S]:
    """A follower at the snapshot's state, after step 1 of the module doc; not yet verified
    against any header (``verify_against``)."""
    try:
        chain, priorities = _decode(snapshot.data, codec)
    except (CanonicalDecodeError, WireError, ValueError) as exc:
        raise SnapshotError(snapshot.height, f"does not decode: {exc}") from exc
    tip = chain.tip
    if tip.chain_id != snapshot.chain_id or tip.height != snapshot.height + 1:
        raise SnapshotError(snapshot.height, f"holds the state before height {tip.height} of "
                                             f"{tip.chain_id!r}, not what its record says")
    recomputed = app.state_hash(chain.app_state)
    if recomputed != tip.app_hash:
        raise SnapshotError(snapshot.height, f"its state hashes to {recomputed.hex()[:16]}, "
                                             f"not to the tip's {tip.app_hash.hex()[:16]}")
    try:
        validators = app.validator_set(chain.app_state, tip.height)
        next_validators = app.validator_set(chain.app_state, tip.height + 1)
    except InputError as exc:
        raise SnapshotError(snapshot.height, f"its state names no validator sets: {exc}") from exc
    if (validators.hash(), next_validators.hash()) != (tip.validators_hash,
                                                       tip.next_validators_hash):
        raise SnapshotError(snapshot.height, "its validator sets do not hash to the tip's")
    if app.registered_sources(chain.app_state) != tip.registered_sources:
        raise SnapshotError(snapshot.height, "its registered source count differs from the "
                                             "state's")
    if tuple(address for address, _ in priorities.entries) != tuple(
            v.address for v in validators.validators):
        raise SnapshotError(snapshot.height, "its proposer priorities are not of the set of "
                                             f"height {tip.height}")
    full = ChainState(tip, chain.app_state, validators, next_validators, chain.last_commit,
                      chain.history, chain.committed_evidence, chain.evidence_max_age)
    follower = BlockFollower(app, full, priorities)
    follower.hashes[snapshot.height] = tip.previous_block_hash
    if chain.history and chain.history[-1].height == snapshot.height:
        follower.sets[snapshot.height] = chain.history[-1].validators
    return follower


def verify_against(follower: BlockFollower[S], record: FinalizedRecord) -> None:
    """Step 2 of the module doc: ``record`` (block H+1, verified by the caller from a trusted
    checkpoint) must link to the restored snapshot."""
    tip, header = follower.chain.tip, record.block.header
    height = tip.height - 1
    checks = (
        ("chain id", header.chain_id == tip.chain_id),
        ("height", record.height == tip.height),
        ("app hash", header.app_hash == tip.app_hash),
        ("previous block hash", header.previous_block_hash == tip.previous_block_hash),
        ("validators hash", header.validators_hash == tip.validators_hash),
        ("next validators hash", header.next_validators_hash == tip.next_validators_hash),
        ("history root", header.history_root == tip.history_root),
    )
    for what, ok in checks:
        if not ok:
            raise SnapshotError(height, f"the {what} of the verified block {record.height} "
                                        "differs from the snapshot's")
    # The priorities are in no header: the proposer they name for the commit's round must be
    # the block's. (A block re-proposed in a later round names its first proposer, so this can
    # reject an honest snapshot, rarely; the reader then takes an older one. Never the reverse.)
    expected = proposer(follower.priorities, follower.chain.validators, record.commit.round)
    if header.proposer_address != expected:
        raise SnapshotError(height, f"its proposer priorities name {expected.hex()[:16]} for "
                                    f"round {record.commit.round} of block {record.height}, "
                                    f"which {header.proposer_address.hex()[:16]} proposed")


def _decode(data: bytes, codec: StateCodec[S]) -> tuple[ChainState[S], ProposerPriorities]:
    r = CanonicalReader(data, TAG)
    chain_id, height = r.text(), r.u64()
    previous_hash, previous_time, previous_randomness = r.raw(32), r.u64(), r.bytes()
    last_seq = r.sequence(lambda x: (x.text(), x.i64()), MAX_ITEMS)
    if [source for source, _ in last_seq] != sorted({source for source, _ in last_seq}):
        raise CanonicalDecodeError("last sequences are not sorted by source")
    app_hash, validators_hash, next_validators_hash = r.raw(32), r.raw(32), r.raw(32)
    registered_sources = r.u32()
    history_size, peaks = r.u64(), r.sequence(lambda x: x.raw(32), 64)
    try:
        accumulator = History(history_size, peaks)
    except HistoryProofError as exc:
        raise CanonicalDecodeError(str(exc)) from exc
    commitments = r.sequence(lambda x: (x.text(), x.raw(32)), MAX_ITEMS)
    previous_sources = r.sequence(lambda x: x.text(), MAX_ITEMS)
    for what, names in (("commitments", [source for source, _ in commitments]),
                        ("previous block's sources", list(previous_sources))):
        if names != sorted(set(names)):
            raise CanonicalDecodeError(f"the {what} are not sorted by source and unique")
    if accumulator.size != height - 1:
        raise CanonicalDecodeError(f"the history accumulator holds {accumulator.size} blocks, "
                                   f"not the {height - 1} before the tip")
    tip = ChainTip(chain_id, height, previous_hash, previous_time, previous_randomness,
                   last_seq, app_hash, validators_hash, next_validators_hash, registered_sources,
                   accumulator, commitments, tuple(previous_sources))
    app_state = codec.decode_state(r.nested())
    last_commit = r.optional(lambda x: decode_commit(x.nested()))
    sets = r.sequence(lambda x: decode_validator_set(x.nested()), MAX_HISTORY)

    def history_record(x: CanonicalReader) -> HeightRecord:
        at, time_ms, which = x.u64(), x.u64(), x.u32()
        if which >= len(sets):
            raise CanonicalDecodeError(f"history names validator set {which} of {len(sets)}")
        return HeightRecord(at, time_ms, sets[which])

    history = r.sequence(history_record, MAX_HISTORY)
    if [record.height for record in history] != list(range(height - len(history), height)):
        raise CanonicalDecodeError("the evidence window is not the heights just below the tip")
    committed = frozenset(r.sequence(lambda x: (x.u64(), x.raw(32)), MAX_HISTORY))
    evidence_max_age = r.u64()
    priorities = ProposerPriorities(r.sequence(lambda x: (x.raw(20), x.i64()), MAX_ITEMS))
    r.done()
    if last_commit is not None and last_commit.height != height - 1:
        raise CanonicalDecodeError("the last commit is not of the previous height")
    # the validator sets are placeholders until ``restore`` derives them from the state
    placeholder = sets[0] if sets else None
    chain = ChainState(tip, app_state, placeholder, placeholder,  # type: ignore[arg-type]
                       last_commit, history, committed, evidence_max_age)
    return chain, priorities

