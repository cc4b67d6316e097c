"""The gateway's view of the chain: blocks verified by a follower thread, served as JSON.

``ChainView`` holds, per height, the ``BlockFinalized`` bytes exactly as the tally wrote them
(re-encoded from the verified record; the encoding is deterministic) and the validator set
that signed it. Documents are rendered on demand and cached; the latest beacon pulse is
serialized once per block, so ``GET /v1/beacon/latest`` is a dictionary lookup.

Every pulse carries its status (``protocol.pulse``: NIST-like ``status`` code, ``random``, and
the fresh and registered source counts). ``/v1/beacon/latest`` is the latest *random* pulse: a
block without fresh entropy from enough sources is served at its height, marked, but never as
the latest random value (the head document says which height that is). Pulses and blocks also
carry ``health``: per source, the SP 800-90B summary folded from the block's entropy references
(``protocol.pulse.health_by_source``), each reference listing its chunk's own summary.

``ChainFollower`` feeds it: it starts from the newest verified state snapshot
(``services.consensus.snapshots``; the genesis when there is none) and ``read_blocks`` verifies
every block after it (hash links, certificates, randomness, state hashes), so a block reaches
the API only after the gateway verified it. A block that does not verify stops the feed and
marks the view unhealthy (``/readyz`` says why); the reader restarts after a pause, continuing
where the view is.

Retention: the last ``retain`` blocks stay in memory. Older heights are read back from
``chain.blocks`` at the offset the view recorded when it verified them
(``services.gateway.pulses``), with the validator set of their height from the view's set
history (one entry per change): ``older``; heights the view never verified come from the
block store or, below the snapshot the follower started from, from ``chain.blocks`` verified
light (``services.gateway.pulses``). Only a height none of them gives answers 410.
Waiters for new blocks (the SSE streams) are woken from the follower thread
(``services.gateway.waiting``).

History proofs (``history_path``): the view keeps the hash of every block it verified (32 bytes
a block) and the accumulator's peaks where it started (``protocol.mmr``: the snapshot's, or the
empty history from height 1), so it proves any pulse it verified, and any whose subtree is a
peak of its start, against the history root of any later head it verified, in O(log n) hashes
once the upper levels are remembered.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.block import EntropyRef
from protocol.commit import CommitFlag
from protocol.finalized import FinalizedRecord
from protocol.mmr import EMPTY_HISTORY, History, HistoryProofError, SubtreeRoots, prove
from protocol.pulse import describe, health_json, is_random, pulse_range_entry, pulse_status
from protocol.randomness import randomness_input
from protocol.validators import ValidatorSet, validator_set_to_json
from services.gateway.waiting import Waiters
from services.ledger.core.chain_spec import ChainSpec
from streams.chain_wire import encode_finalized

log = logging.getLogger("qustream.gateway.chain")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _dumps(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class StoredBlock:
    raw: bytes  # BlockFinalized, Avro single-object encoding
    record: FinalizedRecord
    validators: ValidatorSet  # the set that governs (and signed) this height
    offset: int  # position on chain.blocks
    written_at_ms: int


class ChainView:
    """Verified blocks by height (thread-safe; see module doc)."""

    def __init__(self, chain_id: str, genesis_randomness: bytes, *, retain: int = 5000) -> None:
        self.chain_id = chain_id
        self.genesis_randomness = genesis_randomness  # R_0, what block 1 derives from
        self.retain = retain
        self._blocks: dict[int, StoredBlock] = {}
        self._lock = threading.Lock()
        self.head_height = 0
        self.first_height = 1
        self.error: str | None = None
        self.caught_up = False
        self.latest_beacon: bytes | None = None  # the latest random pulse, serialized
        self.latest_random_height = 0
        self.latest_etag = b""  # ETag of ``latest_beacon`` (quoted, as sent)
        # the chain.blocks offset of every verified height (8 bytes a block), so a height
        # older than the window is read back from Kafka at once (``services.gateway.pulses``)
        self._offsets = array("q")
        self._offsets_from = 0  # the height of ``_offsets[0]``
        # (first height, set) each time the governing validator set changed: the set of any
        # verified height, for blocks older than the window
        self._sets: list[tuple[int, ValidatorSet]] = []
        self._older: OrderedDict[tuple[str, int], tuple[bytes, bytes]] = OrderedDict()
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._waiters = Waiters()
        # the history index (module doc): the block hashes from leaf ``_leaves_from`` on, and
        # subtree roots over them and the start's peaks
        self._subtrees: SubtreeRoots | None = None
        self._leaves = bytearray()
        self._leaves_from = 0

    # ------------------------------------------------------------------ feeding
    def add(self, raw: bytes, record: FinalizedRecord, validators: ValidatorSet, offset: int,
            written_at_ms: int, history: History | None = None) -> None:
        """Add the next verified block; heights at or below the head are ignored. ``history``:
        the accumulator after it, when the caller has it (needed for the first block of a
        view that starts above height 1, to prove later pulses)."""
        with self._lock:
            if record.height <= self.head_height:
                return
            if record.height != self.head_height + 1 and self.head_height:
                raise ValueError(f"block {record.height} after head {self.head_height}")
            if not self.head_height:
                self.first_height = record.height
                self._offsets_from = record.height
            self._offsets.append(offset)
            if not self._sets or (self._sets[-1][1] is not validators
                                  and self._sets[-1][1].hash() != validators.hash()):
                self._sets.append((record.height, validators))
            self._blocks[record.height] = StoredBlock(raw, record, validators, offset,
                                                      written_at_ms)
            self._index_history(record, history)
            self.head_height = record.height
            while len(self._blocks) > self.retain:
                del self._blocks[self.first_height]
                self.first_height += 1
        if is_random(pulse_status(record.block.header)):
            self.latest_beacon = _dumps(self.beacon_document(record.height))
            self.latest_etag = etag_of(record.block.hash)  # after the body: readers take it first
            self.latest_random_height = record.height
        self._waiters.wake_all()

    def add_verified(self, verified: Any) -> None:
        """Add a ``follower.VerifiedBlock``."""
        record = verified.record
        at_height = verified.chain.record_of(record.height)
        validators = at_height.validators if at_height is not None else verified.chain.validators
        self.add(encode_finalized(record), record, validators, verified.offset,
                 verified.written_at_ms, verified.chain.tip.accumulator)

    def _index_history(self, record: FinalizedRecord, history: History | None) -> None:
        if self._subtrees is None:
            if record.height == 1:
                self._subtrees = SubtreeRoots(EMPTY_HISTORY, self._leaf)
            elif history is not None and history.size == record.height:
                self._subtrees = SubtreeRoots(history, self._leaf)
                self._leaves_from = history.size
                return
            else:
                return
        self._leaves += record.block.hash
        self._subtrees.warm(record.height)

    def _leaf(self, index: int) -> bytes | None:
        at = (index - self._leaves_from) * 32
        return bytes(self._leaves[at:at + 32]) if 0 <= at < len(self._leaves) else None

    @property
    def first_provable_height(self) -> int | None:
        """Every height from this one on can be proven here (None: none can)."""
        return None if self._subtrees is None else self._leaves_from + 1

    def history_path(self, size: int, index: int) -> tuple[bytes, ...]:
        """The inclusion path of the block of height ``index + 1`` in the history of the first
        ``size`` blocks (module doc); ``HistoryProofError`` when this view cannot make it."""
        if self._subtrees is None:
            raise HistoryProofError("this gateway has verified no block whose history it "
                                    "knows yet")
        if size > self.head_height:
            raise HistoryProofError(f"the history of {size} blocks is beyond the head "
                                    f"{self.head_height}")
        return prove(self._subtrees, size, index).path

    async def wait_beyond(self, height: int, timeout_s: float) -> bool:
        """Wait until the head is beyond ``height`` (True) or the timeout passes (False)."""
        beyond = await self._waiters.until(lambda: self.head_height > height or None, timeout_s)
        return beyond is not None

    # ------------------------------------------------------------------ reading
    def get(self, height: int) -> StoredBlock | None:
        return self._blocks.get(height)

    def retained(self, height: int) -> bool:
        return height >= self.first_height

    def set_at(self, height: int) -> ValidatorSet | None:
        """The validator set that governed verified ``height`` (None: never seen here)."""
        if self.offset_of(height) is None:
            return None
        index = bisect_right(self._sets, height, key=lambda item: item[0]) - 1
        return self._sets[index][1] if index >= 0 else None

    def older(self, kind: str, height: int, archive: Callable[[int], FinalizedRecord | None],
              render: Callable[[StoredBlock], Any]) -> tuple[bytes, bytes] | None:
        """(``render`` as JSON, block hash) of a verified height older than the window, its
        record read back by ``archive(height)`` (the verified one: it is read at the offset
        recorded for it); None when it cannot be (never verified here, or gone from Kafka)."""
        validators, offset = self.set_at(height), self.offset_of(height)
        if validators is None or offset is None or height >= self.first_height:
            return None
        key = (kind, height)
        cached = self._older.get(key)
        if cached is not None:
            return cached
        record = archive(height)
        if record is None or record.height != height:
            return None
        done = (_dumps(render(StoredBlock(encode_finalized(record), record, validators, offset,
                                          0))), record.block.hash)
        self._keep(self._older, key, done, 512)
        return done

    def _keep(self, cache: OrderedDict[tuple[str, int], Any], key: tuple[str, int],
              value: Any, limit: int) -> None:
        """Remember ``value`` in ``cache``, forgetting the oldest entries beyond ``limit``."""
        with self._lock:
            cache[key] = value
            while len(cache) > limit:
                cache.popitem(last=False)

    @property
    def first_verified_height(self) -> int:
        """The first height verified here (0: none yet); below it lies the snapshot this view's
        follower started from."""
        return self._offsets_from

    def offset_of(self, height: int) -> int | None:
        """The chain.blocks offset of verified ``height``; None when never seen here."""
        index = height - self._offsets_from
        if self._offsets_from == 0 or not 0 <= index < len(self._offsets):
            return None
        return int(self._offsets[index])

    def _cached(self, kind: str, height: int, render: Callable[[StoredBlock], Any],
                encode: Callable[[Any], bytes] = lambda document: _dumps(document)
                ) -> bytes | None:
        key = (kind, height)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        stored = self._blocks.get(height)
        if stored is None:
            return None
        body = encode(render(stored))
        self._keep(self._cache, key, body, 2048)
        return body

    def rendered(self, kind: str, height: int, render: Callable[[StoredBlock], Any]
                 ) -> bytes | None:
        """``render(block)`` of a retained height as JSON bytes, cached under ``kind``."""
        return self._cached(kind, height, render)

    def block_json(self, height: int) -> bytes | None:
        return self._cached("block", height, block_document)

    def beacon_json(self, height: int) -> bytes | None:
        if height == self.latest_random_height and self.latest_beacon is not None:
            return self.latest_beacon
        return self._cached("beacon", height, lambda s: self.beacon_document(s.record.height))

    def validators_json(self, height: int) -> bytes | None:
        """The set of any verified height (older ones from the set history)."""
        body = self._cached("validators", height,
                            lambda s: validators_document(height, s.validators))
        if body is None and height < self.first_height:
            validators = self.set_at(height)
            if validators is not None:
                return _dumps(validators_document(height, validators))
        return body

    def sse_event(self, height: int) -> bytes | None:
        """One SSE event: ``id: <height>`` and the record (what the SDK verifies)."""
        body = self._cached("sse", height, sse_document)
        return None if body is None else sse_event(height, body)

    def head_document(self) -> dict[str, Any]:
        stored = self._blocks.get(self.head_height)
        if stored is None:
            return {"chain_id": self.chain_id, "height": 0, "caught_up": self.caught_up}
        header = stored.record.block.header
        return {"chain_id": self.chain_id, "height": self.head_height,
                "hash": stored.record.block.hash.hex(), "time_ms": header.time_ms,
                "randomness": header.randomness.hex(), "state_hash": stored.record.state_hash.hex(),
                "validators_hash": header.validators_hash.hex(),
                "latest_random_height": self.latest_random_height,
                "first_retained_height": self.first_height, "caught_up": self.caught_up}

    def beacon_document(self, height: int) -> dict[str, Any]:
        """The pulse at ``height`` with what a client needs to check it (``pulse_document``)."""
        stored = self._blocks[height]
        previous = self._blocks.get(height - 1)
        return pulse_document(self.chain_id, stored.record,
                              previous.record if previous is not None else None,
                              self.genesis_randomness)

    def pulse_json(self, height: int) -> bytes | None:
        """The compact pulse of a retained height (``compact_pulse``), cached: what a range
        response is made of."""
        return self._cached("pulse", height, lambda s: compact_pulse(s.record))

    def pulse_entry(self, height: int) -> bytes | None:
        """The ``PulseEntry`` of a retained height (``protocol.pulse.pulse_range_entry``),
        cached: what a binary range response is made of."""
        return self._cached("entry", height, lambda s: range_entry(s.record), bytes)

    def heights(self, first: int, last: int) -> Iterator[int]:
        for height in range(max(first, self.first_height), min(last, self.head_height) + 1):
            if height in self._blocks:
                yield height


def etag_of(block_hash: bytes) -> bytes:
    """A strong ETag for the documents of one block: they never change once it is final."""
    return b'"' + block_hash.hex()[:32].encode() + b'"'


def pulse_document(chain_id: str, record: FinalizedRecord, previous: FinalizedRecord | None,
                   genesis_randomness: bytes) -> dict[str, Any]:
    """The pulse of ``record`` with what a client needs to check it: the header (whose hash is
    the block hash), the certificate, the previous randomness (authenticated by the previous
    header, which is included) and the entropy references."""
    block, height = record.block, record.height
    previous_randomness = (previous.block.header.randomness if previous is not None
                           else genesis_randomness if height == 1 else None)
    return {
        "height": height, "chain_id": chain_id, "time_ms": block.header.time_ms,
        "randomness": block.header.randomness.hex(), "block_hash": block.hash.hex(),
        **pulse_fields(block.header),
        "health": health_json(block.body.entropy),
        "proof": {
            "previous_randomness": (previous_randomness.hex()
                                    if previous_randomness is not None else None),
            "previous_header": (_b64(previous.block.header.canonical())
                                if previous is not None else None),
            "entropy": [entropy_ref_json(r) for r in block.body.entropy],
            "randomness_input": _b64(randomness_input(height, block.body.entropy)),
            "header": _b64(block.header.canonical()),
            "commit": _b64(record.commit.canonical()),
            "validators_hash": block.header.validators_hash.hex(),
            "validators_url": f"/v1/validators/{height}",
            "algorithm": "R_h = HMAC-SHA-512(key=R_{h-1}, randomness_input)",
        },
    }


def entropy_ref_json(ref: EntropyRef) -> dict[str, Any]:
    """One entropy reference: source, seq, payload digest, precommitment and the chunk's
    health summary (``docs/api.md``)."""
    return {"source_id": ref.source_id, "seq": ref.seq, "digest": ref.digest.hex(),
            "next_digest": ref.next_digest.hex(), "committed": ref.committed,
            "health": ref.health.to_json()}


def compact_pulse(record: FinalizedRecord) -> dict[str, Any]:
    """One pulse of a range: its status, per-source health, its canonical header and its
    entropy references ``[source_id, seq, digest, next_digest, committed, health]``; no
    certificate (a range carries one, for its last block)."""
    header, entropy = record.block.header, record.block.body.entropy
    return {"height": record.height, "time_ms": header.time_ms,
            "randomness": header.randomness.hex(), "block_hash": record.block.hash.hex(),
            **pulse_fields(header), "health": health_json(entropy),
            "header": _b64(header.canonical()),
            "entropy": [[r.source_id, r.seq, r.digest.hex(), r.next_digest.hex(), r.committed,
                         r.health.to_json()] for r in entropy]}


def range_entry(record: FinalizedRecord) -> bytes:
    """One pulse of a binary range: its canonical header and entropy references."""
    return pulse_range_entry(record.block.header, record.block.body.entropy)


def pulse_fields(header: Any) -> dict[str, Any]:
    """The status of the pulse ``header`` carries (``protocol.pulse``), as JSON fields."""
    status = pulse_status(header)
    return {"status": int(status), "status_text": describe(status),
            "random": is_random(status), "fresh_sources": header.fresh_sources,
            "registered_sources": header.registered_sources}


def sse_document(stored: StoredBlock) -> dict[str, Any]:
    record = stored.record
    return {"height": record.height, "hash": record.block.hash.hex(),
            "randomness": record.block.header.randomness.hex(), "record": _b64(stored.raw)}


def sse_event(height: int, body: bytes) -> bytes:
    return b"id: %d\nevent: block\ndata: %s\n\n" % (height, body)


def validators_document(height: int, validators: ValidatorSet) -> dict[str, Any]:
    return {"height": height, "hash": validators.hash().hex(),
            "total_power": validators.total_power,
            "validators": validator_set_to_json(validators)}


def block_document(stored: StoredBlock) -> dict[str, Any]:
    record = stored.record
    block, header, body = record.block, record.block.header, record.block.body
    signed = [s for s in record.commit.signatures if s.flag is CommitFlag.COMMIT]
    return {
        "height": record.height, "hash": block.hash.hex(),
        "header": {
            "chain_id": header.chain_id, "height": header.height, "round": header.round,
            "time_ms": header.time_ms, "previous_block_hash": header.previous_block_hash.hex(),
            "last_commit_hash": header.last_commit_hash.hex(),
            "entropy_root": header.entropy_root.hex(),
            "entropy_ranges": [{"source_id": r.source_id, "first": r.first, "last": r.last}
                               for r in header.entropy_ranges],
            "fresh_sources": header.fresh_sources,
            "registered_sources": header.registered_sources,
            "randomness": header.randomness.hex(), "tx_root": header.tx_root.hex(),
            "evidence_root": header.evidence_root.hex(),
            "validators_hash": header.validators_hash.hex(),
            "next_validators_hash": header.next_validators_hash.hex(),
            "app_hash": header.app_hash.hex(), "proposer": header.proposer_address.hex(),
            "history_root": header.history_root.hex(),
        },
        "body": {
            "entropy": [entropy_ref_json(r) for r in body.entropy],
            "txs": [_b64(tx) for tx in body.txs], "evidence": len(body.evidence),
        },
        "commit": {
            "height": record.commit.height, "round": record.commit.round,
            "block_hash": record.commit.block_hash.hex(),
            "signatures": [{"flag": s.flag.name, "validator": s.validator_address.hex(),
                            "signature": _b64(s.signature)} for s in record.commit.signatures],
            "signed_power": sum(stored.validators.power_of(s.validator_address) for s in signed),
            "total_power": stored.validators.total_power,
        },
        "pulse": pulse_fields(header),
        "health": health_json(body.entropy),
        "state_hash": record.state_hash.hex(),
        "validators_url": f"/v1/validators/{record.height}",
        "finalized_at_ms": record.finalized_at_ms,
        "kafka_offset": stored.offset,
        "record": _b64(stored.raw),
    }


class ChainFollower:
    """A daemon thread feeding ``view`` from ``chain.blocks`` (see module doc)."""

    def __init__(self, settings: Any, genesis: Path, view: ChainView,
                 on_block: Callable[[Any], None] | None = None, *,
                 on_start: Callable[[Any], None] = lambda follower: None,
                 state_dir: Path | None = None, full: bool = False) -> None:
        self.settings = settings
        self.genesis = genesis
        self.view = view
        self.on_block = on_block
        self.on_start = on_start  # hears the follower when it starts from a snapshot
        self.state_dir = state_dir  # where the light-client checkpoint is kept
        self.full = full  # fold chain.blocks from genesis, ignoring snapshots
        self.start_report: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chain-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        from protocol.follow import FollowError
        from services.consensus.snapshots import start_follower
        from streams.chain_reader import read_blocks
        from streams.kafka import make_consumer

        spec = ChainSpec.load(self.genesis)
        follower = None
        while not self._stop.is_set():
            try:
                probe = make_consumer(self.settings, f"gateway-probe-{time.time_ns()}")
                try:
                    end = probe.watermarks(self.settings.topic("chain.blocks"))[1]
                finally:
                    probe.close()
                if end == 0:
                    self.view.caught_up = True
                if follower is None:
                    # From the newest verified snapshot (or the genesis): the start does not
                    # grow with the chain. After a reconnect the follower goes on where it was.
                    follower, self.start_report = start_follower(
                        self.settings, spec, self.state_dir, catch_up_now=False,
                        full=self.full)
                    if self.start_report.snapshot_height is not None:
                        self.on_start(follower)
                for verified in read_blocks(self.settings, follower,
                                            self.view.head_height + 1, follow=True,
                                            idle_timeout_s=1.0):
                    self.view.add_verified(verified)
                    self.view.error = None
                    if verified.offset + 2 >= end:
                        self.view.caught_up = True
                    if self.on_block is not None:
                        self.on_block(verified)
                    if self._stop.is_set():
                        return
            except FollowError as exc:
                self.view.error = f"chain verification failed: {exc}"
                log.error("chain follower: %s", exc)
                self._stop.wait(5)
            except Exception as exc:  # broker restarts and the like: retry
                self.view.error = f"chain reader: {type(exc).__name__}: {exc}"
                log.warning("chain follower: %s", self.view.error)
                self._stop.wait(2)


def load_view(spec: Any, retain: int = 5000) -> ChainView:
    """An empty view of the chain of ``spec`` (a ``ChainSpec``)."""
    return ChainView(spec.chain_id, spec.initial.tip.previous_randomness, retain=retain)
