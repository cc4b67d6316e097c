"""The gateway's ``protocol.pulse_index.BlockSource``: its in-memory window, then an archive.

``GatewayPulses`` answers from the ``ChainView`` window (the last ``retain`` verified blocks)
and, for older heights, from a ``BlockArchive``: the block store in Cassandra when the gateway
has one (``services.gateway.store_archive``: any height it holds, each read checked, Kafka for
the rest), else ``chain.blocks`` itself (``KafkaBlockArchive``).

``KafkaBlockArchive``: every block the gateway verified has its chain.blocks offset recorded in
the view (``ChainView.offset_of``), and Kafka offsets never change, so the record read back at
that offset is the verified one: reading an old height is one fetch, never a scan. A time older
than the window is found with Kafka's time index (``KafkaConsumer.offset_for_time``): records
are timestamped when the tally wrote them, after their block's header time, so the lookup
starts ``clock_skew_ms`` earlier and reads forward to the first header at or after the time,
skipping any record that is not the verified one of its height (a duplicate, or a block nobody
signed). A height this gateway never verified (below the snapshot it started from) is found by
bisection over offsets and verified light from the genesis (``services.consensus.light_reads``:
skipping verification, so only while the genesis validators are trusted and still hold more
than a third of the power); a time lookup there takes the block below the answer by its hash
link and applies the block store's check (``first_at_or_after``). Otherwise such a height is
not served from Kafka.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from protocol.codec import WireError
from protocol.finalized import FinalizedRecord
from protocol.pulse_index import PulseNotRetainedError
from protocol.validators import ValidatorSet
from services.block_store.core import first_at_or_after
from services.consensus.light_reads import LightChain, LightUnavailableError
from services.gateway.chain import ChainView, StoredBlock, _dumps
from streams.chain_wire import decode_finalized, encode_finalized
from streams.errors import KafkaOperationError

CLOCK_SKEW_MS = 60_000  # how far a record's Kafka timestamp may precede its header time
MAX_ARCHIVE_READ = 10_000  # records one time lookup may read forward at most


def consecutive(read: Callable[[int], FinalizedRecord | None], first: int, last: int
                ) -> list[FinalizedRecord]:
    """``read(h)`` for ``h`` from ``first`` to ``last``, up to the first None."""
    out: list[FinalizedRecord] = []
    for height in range(first, last + 1):
        record = read(height)
        if record is None:
            break
        out.append(record)
    return out


class BlockArchive(Protocol):
    """Older blocks (``GatewayPulses`` asks it for what the window no longer holds); only
    blocks verified here, or checked against what was verified here, are returned."""

    def block(self, height: int) -> FinalizedRecord | None: ...

    def at_or_after(self, time_ms: int) -> FinalizedRecord | None: ...

    def range(self, first: int, last: int) -> Sequence[FinalizedRecord]:
        """Blocks ``first..last`` in order, stopping before the first it cannot give."""
        ...

    def stored(self, height: int) -> StoredBlock | None:
        """A height this gateway never verified, with the validator set that signed it;
        None when the archive cannot vouch for one (heights verified here come through the
        view, ``ChainView.older``)."""
        ...


class GatewayPulses:
    """``BlockSource`` over ``view`` and ``archive`` (module doc)."""

    def __init__(self, view: ChainView, genesis_time_ms: int, default_interval_ms: int,
                 archive: BlockArchive | None = None) -> None:
        self.view = view
        self._genesis_time_ms = genesis_time_ms
        self._default_interval_ms = default_interval_ms
        self.archive = archive

    @property
    def genesis_time_ms(self) -> int:
        return self._genesis_time_ms

    @property
    def default_interval_ms(self) -> int:
        return self._default_interval_ms

    def head(self) -> FinalizedRecord | None:
        stored = self.view.get(self.view.head_height)
        return stored.record if stored is not None else None

    def block(self, height: int) -> FinalizedRecord | None:
        if height > self.view.head_height or height < 1:
            return None
        stored = self.view.get(height)
        if stored is not None:
            return stored.record
        found = self.archive.block(height) if self.archive is not None else None
        if found is None:
            raise PulseNotRetainedError(height, self.view.first_height)
        return found

    def range(self, first: int, last: int) -> Sequence[FinalizedRecord]:
        first, last = max(1, first), min(last, self.view.head_height)
        older: Sequence[FinalizedRecord] = ()
        if first < self.view.first_height and self.archive is not None:
            older = self.archive.range(first, min(last, self.view.first_height - 1))
        return [*older, *consecutive(self.block, first + len(older), last)]

    def at_or_after(self, time_ms: int) -> FinalizedRecord | None:
        head = self.head()
        if head is None or head.block.header.time_ms < time_ms:
            return None
        low = self.view.first_height
        oldest = self.view.get(low)
        if oldest is None or (oldest.record.block.header.time_ms >= time_ms and low > 1):
            if self.archive is None:
                raise PulseNotRetainedError(low - 1, low)
            found = self.archive.at_or_after(time_ms)
            if found is not None:
                return found
            if oldest is None:
                return None
            # the answer is older than the window (its oldest block is at or after the time),
            # and the archive could not give it: never the window's oldest block instead
            raise PulseNotRetainedError(low - 1, low)
        high = self.view.head_height  # its time is >= time_ms
        while low < high:  # the first retained height whose time is >= time_ms
            middle = (low + high) // 2
            stored = self.view.get(middle)
            # a height evicted meanwhile is older than the window: the answer is later
            if stored is None or stored.record.block.header.time_ms < time_ms:
                low = middle + 1
            else:
                high = middle
        stored = self.view.get(low)
        return stored.record if stored is not None else self.head()

    def older_document(self, kind: str, height: int, render: Callable[[StoredBlock], Any]
                       ) -> tuple[bytes, bytes] | None:
        """(``render`` as JSON, block hash) of a height older than the window: one this gateway
        verified (``ChainView.older``, the record from the archive), else one the archive
        vouches for alone (``BlockArchive.stored``); None when neither can."""
        found = self.view.older(kind, height, self._archived, render)
        if found is not None or self.archive is None:
            return found
        stored = self.archive.stored(height)
        return None if stored is None else (_dumps(render(stored)), stored.record.block.hash)

    def validators_at(self, height: int) -> ValidatorSet | None:
        """The set that governs ``height``, as verified here or vouched for by the archive."""
        known = self.view.set_at(height)
        if known is not None or self.archive is None:
            return known
        stored = self.archive.stored(height)
        return None if stored is None else stored.validators

    def _archived(self, height: int) -> FinalizedRecord | None:
        return self.archive.block(height) if self.archive is not None else None


class KafkaBlockArchive:
    """Verified blocks read back from ``chain.blocks`` by offset (module doc). One consumer,
    made on first use and kept; calls are serialized."""

    def __init__(self, settings: Any, view: ChainView, *,
                 clock_skew_ms: int = CLOCK_SKEW_MS, spec: Any = None) -> None:
        self.settings = settings
        self.view = view
        self.clock_skew_ms = clock_skew_ms
        self.topic = settings.topic("chain.blocks")
        self.spec = spec  # a ChainSpec: light reads of heights never verified here (module doc)
        self._consumer: Any = None
        self._span: Any = None
        self._lock = threading.Lock()

    def _reader(self) -> Any:
        from streams.kafka import make_consumer

        if self._consumer is None:
            self._consumer = make_consumer(self.settings, f"gateway-archive-{time.time_ns()}",
                                           **{"fetch.wait.max.ms": 20})
        return self._consumer

    def _read_from(self, offset: int, until: Any) -> FinalizedRecord | None:
        """Read forward from ``offset`` to the first verified record ``until(record)`` accepts."""
        from streams.kafka import Position

        consumer = self._reader()
        consumer.assign([Position(self.topic, 0, offset)])
        end = consumer.watermarks(self.topic)[1]
        read = 0
        deadline = time.monotonic() + 30.0
        while read < MAX_ARCHIVE_READ and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                if consumer.position(self.topic, 0) >= end:
                    return None
                continue
            read += 1
            try:
                record = decode_finalized(bytes(message.value or b""))
            except WireError:
                continue  # garbage on the topic: not a block
            known = self.view.offset_of(record.height)
            if known is None and not 0 < record.height < self.view.first_verified_height:
                continue  # a height claimed beyond what was verified here: not trusted
            if known is not None and known != message.offset:
                continue  # not the record this gateway verified for its height
            # (a height below the first verified here is checked light by the caller)
            if until(record):
                return record
            if message.offset + 1 >= end:
                return None
        return None

    def block(self, height: int) -> FinalizedRecord | None:
        offset = self.view.offset_of(height)
        if offset is None:
            light = self.stored(height)
            return light.record if light is not None else None
        with self._lock:  # the one record at the offset recorded when it was verified
            found = self._reader().read_span(self.topic, 0, offset, offset + 1, 30.0)
        try:
            record = decode_finalized(bytes(found[0].value or b"")) if found else None
        except WireError:
            return None
        return record if record is not None and record.height == height else None

    def at_or_after(self, time_ms: int) -> FinalizedRecord | None:
        with self._lock:
            reader = self._reader()
            start = reader.offset_for_time(self.topic, 0, time_ms - self.clock_skew_ms)
            if start is None:
                return None
            found = self._read_from(start, lambda r: r.block.header.time_ms >= time_ms)
            if found is None or found.height == 1:
                return found
            low = reader.watermarks(self.topic)[0]
        # The first verified record at or after the time is the first block at or after it
        # only when the record of the height below, verified here, is still on the topic: it
        # was then read and was earlier, or lies before the start, whose timestamps (and so
        # header times) are earlier. Below the first height verified here, or once retention
        # took it, Kafka cannot tell.
        below = self.view.offset_of(found.height - 1)
        if below is not None:
            return found if below >= low else None
        # never verified here (below the snapshot this gateway started from): the block
        # verified light, the one below it by its hash link, and the block store's time check
        if self.spec is None:
            return None
        with self._lock:
            light = self._light()
            try:
                this = light.block(found.height)
                before = light.below(this) if found.height > 1 else None
            except (LookupError, LightUnavailableError, KafkaOperationError):
                return None
        if this.record.block.hash != found.block.hash:
            return None
        problem = first_at_or_after(this.record, before.record if before else None, time_ms)
        return found if problem is None else None

    def range(self, first: int, last: int) -> Sequence[FinalizedRecord]:
        return consecutive(self.block, first, last)

    def _light(self) -> LightChain:
        """Light reads of chain.blocks from the genesis (module doc); call under the lock."""
        from streams.chain_reader import ChainTopic

        if self._span is None:  # old heights do not move: the bounds taken once will do
            self._span = ChainTopic(self.settings)
        genesis = self.spec.checkpoint()
        return LightChain(self._span, genesis, genesis, self.spec.trusting_period_ms())

    def stored(self, height: int) -> StoredBlock | None:
        """A height never verified here, verified light from the genesis (module doc)."""
        if self.spec is None or self.view.offset_of(height) is not None:
            return None
        with self._lock:
            try:
                found = self._light().block(height)
            except (LookupError, LightUnavailableError, KafkaOperationError):
                return None
        if found.signed_by is None:
            return None
        return StoredBlock(encode_finalized(found.record), found.record, found.signed_by,
                           found.offset, 0)

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
            if self._span is not None:
                self._span.close()
                self._span = None
