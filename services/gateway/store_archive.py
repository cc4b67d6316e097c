"""The gateway's ``BlockArchive`` over the block store in Cassandra (``services.block_store``).

Heights older than the gateway's window, and heights it never verified itself, are read from
the store: one point read for a block, one query per thousand heights for a range, at most four
for the first pulse at or after a time. Cassandra is trusted no more than Kafka, so each read is
checked before it is served (``services.block_store.core.checks``):

- a block: its certificate against the validator set of its height, and its body against its
  header; that set is the one this gateway verified for the height (``ChainView.set_at``), or,
  for a height it never verified, the one the store's set changes give, each change verified
  from the genesis set on (``SetHistory``: read once, then kept);
- a range: hash links between consecutive blocks, and the last block's certificate;
- a time: the block found by the time index is certified, and the block below it links to it
  and is earlier than the time.

A read that fails its check is not served (it is logged and counted in ``refused``), and
neither is a height the store does not hold yet: both go to ``fallback`` (the Kafka archive,
which reads back heights this gateway verified). Until the projector has created the tables,
every read goes to the fallback; the tables are looked for again every ``retry_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from protocol.codec import WireError
from protocol.finalized import FinalizedRecord
from protocol.validators import ValidatorSet
from services.block_store.core import SetHistory, certified, chain_key, first_at_or_after, linked
from services.block_store.queries import BlockQueries, RawBlock
from services.block_store.store import BlockStoreError
from services.gateway.chain import ChainView, StoredBlock
from services.gateway.pulses import BlockArchive
from services.ledger.core.chain_spec import ChainSpec
from streams.chain_wire import decode_finalized

log = logging.getLogger("qustream.gateway.store")

CACHE_BLOCKS = 4096  # checked blocks kept (a pulse document reads the block below it too)


class CassandraBlockArchive:
    """Checked reads of the block store (module doc); thread-safe."""

    def __init__(self, open_store: Callable[[], BlockQueries], chain_id: str,
                 genesis_validators: ValidatorSet, view: ChainView,
                 fallback: BlockArchive | None = None, *, retry_s: float = 5.0,
                 on_close: Callable[[], None] | None = None) -> None:
        self._open_store = open_store
        self.chain_id = chain_id
        self.view = view
        self.fallback = fallback
        self.retry_s = retry_s
        self.history = SetHistory.of_genesis(genesis_validators)
        self.refused = 0  # stored rows that failed their check
        self._store: BlockQueries | None = None
        self._tried_at = -retry_s
        self._checked: OrderedDict[int, StoredBlock] = OrderedDict()
        self._lock = threading.Lock()
        self._on_close = on_close

    @classmethod
    def connect(cls, settings: Any, spec: ChainSpec, view: ChainView,
                fallback: BlockArchive | None = None) -> CassandraBlockArchive:
        """The archive of the chain of ``spec`` in the settings' keyspace; ``StoreError`` when
        Cassandra cannot be reached."""
        from services.shard_writer.store import connect

        cluster, session = connect(settings)
        chain = chain_key(spec.chain_id, spec.initial.tip.previous_block_hash)
        return cls(lambda: BlockQueries(session, settings.cassandra.keyspace, chain),
                   spec.chain_id, spec.initial.validators, view, fallback,
                   on_close=cluster.shutdown)

    # ------------------------------------------------------------------ BlockArchive
    def stored(self, height: int) -> StoredBlock | None:
        """Block ``height`` with the set that signed it, checked; None when the store does
        not hold it (or it fails its check)."""
        with self._lock:
            found = self._checked.get(height)
            if found is not None:
                self._checked.move_to_end(height)
                return found
        store = self.store()
        raw = self._read(partial(store.block, height)) if store is not None else None
        record = self._decoded(raw)
        if raw is None or record is None:
            return None
        validators = self.set_at(height)
        problem = (certified(record, height, self.chain_id, validators)
                   if validators is not None else
                   f"no validator set of height {height} could be verified")
        if problem is not None:
            self._refuse(problem)
            return None
        assert validators is not None
        return self._keep(StoredBlock(raw.record, record, validators, raw.kafka_offset,
                                      raw.written_at_ms))

    def block(self, height: int) -> FinalizedRecord | None:
        found = self.stored(height)
        if found is not None:
            return found.record
        return self.fallback.block(height) if self.fallback is not None else None

    def at_or_after(self, time_ms: int) -> FinalizedRecord | None:
        found = self._stored_at_or_after(time_ms)
        if found is not None:
            return found
        return self.fallback.at_or_after(time_ms) if self.fallback is not None else None

    def _stored_at_or_after(self, time_ms: int) -> FinalizedRecord | None:
        """The block the time index gives, when it and the block below it pass the check."""
        store = self.store()
        if store is None:
            return None
        height = self._read(partial(store.first_height_at_or_after, time_ms))
        found = self.stored(height) if height is not None else None
        if found is None:
            return None
        before: FinalizedRecord | None = None
        if found.record.height > 1:
            with self._lock:
                below = self._checked.get(found.record.height - 1)
            # not certified itself: the hash link from the certified block vouches for it
            before = below.record if below is not None else self._decoded(
                self._read(partial(store.block, found.record.height - 1)))
        problem = first_at_or_after(found.record, before, time_ms)
        if problem is not None:
            self._refuse(problem)
            return None
        return found.record

    def range(self, first: int, last: int) -> Sequence[FinalizedRecord]:
        """Blocks ``first..`` as far as the store holds them without a gap, up to ``last``:
        linked, the last one certified. What the store does not hold is left to the caller."""
        store = self.store()
        rows = self._read(partial(store.blocks, first, last)) if store is not None else None
        records: list[FinalizedRecord] = []
        for raw in rows or ():
            record = self._decoded(raw)
            if record is None or raw.height != first + len(records):
                break
            records.append(record)
        if not records:
            return []
        top = self.stored(records[-1].height)
        problem = linked(records) if top is not None else "the last block failed its check"
        if problem is not None:
            self._refuse(problem)
            return []
        return records

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()

    # ------------------------------------------------------------------ trust
    def set_at(self, height: int) -> ValidatorSet | None:
        """The validator set of ``height``: as this gateway verified it, else from the store's
        set changes verified from the genesis set (module doc)."""
        known = self.view.set_at(height)
        if known is not None:
            return known
        with self._lock:
            if self.history.through < height:
                self.history = self._walk(self.history, height)
            return self.history.set_at(height)

    def _walk(self, history: SetHistory, height: int) -> SetHistory:
        """``history`` extended by the stored set changes up to ``height`` (at most the
        stored position: changes above it may still be written)."""
        store = self.store()
        position = self._read(store.position) if store is not None else None
        if store is None or position is None:
            return history
        limit = min(height, position[0])
        changes = self._read(partial(store.set_changes, history.through, limit))
        for first_height, set_hash in changes or ():
            validators = self._read(partial(store.validator_set, set_hash))
            if validators is None or validators.hash() != set_hash:
                self._refuse(f"the validator set stored for height {first_height} is missing "
                             "or does not match its hash")
                return history
            step = history.extended(self.chain_id, first_height, validators,
                                    self._decoded(self._read(
                                        partial(store.block, first_height - 1))))
            if isinstance(step, str):
                self._refuse(step)
                return history
            history = step
        return history.through_height(limit) if changes is not None else history

    # ------------------------------------------------------------------ plumbing
    def store(self) -> BlockQueries | None:
        """The store's queries, once its tables exist (looked for every ``retry_s``)."""
        if self._store is None and time.monotonic() - self._tried_at >= self.retry_s:
            self._tried_at = time.monotonic()
            try:
                self._store = self._open_store()
            except BlockStoreError as exc:
                log.info("block store not readable yet (%s); reading Kafka", exc)
        return self._store

    def _read(self, query: Callable[[], Any]) -> Any:
        """``query()``; None when Cassandra fails (the fallback answers instead)."""
        try:
            return query()
        except BlockStoreError as exc:
            log.warning("block store read failed: %s", exc)
            return None

    def _decoded(self, raw: RawBlock | None) -> FinalizedRecord | None:
        if raw is None:
            return None
        try:
            return decode_finalized(raw.record)
        except WireError as exc:
            self._refuse(f"stored record of height {raw.height} does not decode: {exc}")
            return None

    def _refuse(self, problem: str) -> None:
        self.refused += 1
        log.warning("block store row refused: %s", problem)

    def _keep(self, found: StoredBlock) -> StoredBlock:
        with self._lock:
            self._checked[found.record.height] = found
            while len(self._checked) > CACHE_BLOCKS:
                self._checked.popitem(last=False)
        return found
