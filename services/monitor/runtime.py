"""The monitor between Faust and the core: restore, fold batches, decide alerts.

Guarantees, and how (the edge ``inputs -> monitor.state, alerts``):

1. Windows survive a restart: every piece of state is a value of the Faust table ``state``
   (changelog topic ``monitor.state``), written whole whenever a batch changed it
   (``changed_pieces``) — re-assigned, never mutated in place, or Faust would not record it.
2. No record is folded twice: each piece carries the next offset it expects per input
   partition, written in the same value (``core.positions``). Faust commits input offsets only
   after the producer flushed the batch's table writes, so after ``kill -9`` it redelivers
   records from before the last commit, and the pieces skip those they already hold.
3. No record is lost: offsets are committed after the writes (at-least-once), so anything not
   in the restored state is redelivered. The agent waits for the changelog to acknowledge a
   batch's writes before Faust may commit it (``app._StateTable.written``): Faust's own flush
   before a commit gives up after 0.1 s without progress. And the state, not Faust, has the
   last word: on start, whatever the group committed past the positions the restored pieces
   hold is read back from the topics and folded before Faust delivers anything
   (``fill_gaps``). That read starts at the lowest position a restored piece holds on the
   partition, so it repairs a commit that overtook the write of a piece with a position
   there; a piece that held no position on the partition before the overtaken write (that
   write carried its first record there) is not covered, which is why the agent's wait above
   is needed.
4. No record is skipped: delivery is not trusted to be gapless either (after a rebalance or a
   restart Faust has skipped a record of a partition and delivered the next ones). Per input
   partition the runtime keeps the offset below which every record is folded; a record
   delivered past it makes the runtime read the offsets in between back from Kafka and fold
   them first (``core.delivery``, ``_read_back``; counted in ``read_back``, logged as a
   warning). The read blocks the agent, as it must: nothing may be folded past a hole.
   On topics written in transactions (``WRITTEN_IN_TRANSACTIONS``) each transaction's commit
   marker takes an offset no consumer receives, so a jump of one offset there is normal and
   only a longer one is read back (``core.delivery``): reading every jump would cost a broker
   round trip per block on ``chain.blocks``, and reading none once left a restarted monitor
   with the blocks Faust skipped missing, every later block rejected as not following, and a
   ChainStalled raised on a chain that went on. A read-back that finds nothing there was an
   aborted transaction's offsets (logged, not counted as a gap).
5. No alert is raised twice and none is forgotten: on start the monitor folds the ``alerts``
   topic into the open alerts (``load_alerts``) and only then decides; a raise that reached the
   topic before the crash is open and not raised again; one that did not is raised now, since
   its condition still holds in the restored state.
6. Nothing is decided on a stale view: time-based rules (a stall is the absence of records)
   are judged only once the monitor has read every input partition up to where it stood at
   start (``caught_up``), and again after a read-back (guarantee 4) paused folding: the ends
   are measured anew and read up to before the next judgement (``needs_ends``). Reaching
   the ends is not enough when it took long: the records written meanwhile are not folded
   yet, and a chain that went on would look stalled (a restart after a few seconds down
   reached its ends 5-8 s after measuring them and raised ChainStalled on blocks it had not
   read). So a round that reached its ends more than ``fresh_s`` after they were measured
   (from the measure's end: reading the ends of every partition takes most of a second
   itself) measures them again, until one round is that quick (or ``catch_up_timeout_s``
   passed).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from services.monitor import store
from services.monitor.core import alerts, delivery, rules
from services.monitor.core.alerts import AlertEvent, OpenAlerts
from services.monitor.core.facts import Position
from services.monitor.core.positions import Positions
from services.monitor.core.state import NETWORK, MonitorState, apply_record
from services.monitor.decode import Record, RecordDecoder
from services.monitor.ledger import LedgerView
from services.monitor.metrics import Snapshot
from services.monitor.settings import MonitorSettings
from streams.kafka import KafkaConsumer, make_consumer, make_reader
from streams.kafka import Position as KafkaPosition
from streams.settings import Settings
from streams.topics import CATALOGUE

log = logging.getLogger(__name__)

TAIL = 16  # records read back from each partition's end to find its last committed record
# Topics a transactional writer writes (the catalogue's ``transactional``: the tally's
# chain.blocks and dlq.chain, the user command handler's dlq.users among the inputs). Their
# commit markers take offsets, so a jump of one offset there is normal (guarantee 4). A topic
# missing there costs a read-back per transaction (logged as a warning), never a lost record.
WRITTEN_IN_TRANSACTIONS = tuple(spec.name for spec in CATALOGUE if spec.transactional)
ReadRange = Callable[[str, int, int, int], Iterable[Record]]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class MonitorRuntime:
    def __init__(self, settings: Settings, options: MonitorSettings,
                 ledger: LedgerView | None = None, read: ReadRange | None = None) -> None:
        """``read(topic, partition, start, end)`` reads a partition's records in
        ``[start, end)`` for ``fill_gaps`` and ``apply``; the default reads Kafka."""
        self.settings = settings
        self.options = options
        self.policy = options.policy()
        self.ledger = ledger
        self.decoder = RecordDecoder(settings, ledger)
        self.state = MonitorState()
        self.open_alerts = OpenAlerts()
        self.restored = False
        self.alerts_loaded = False
        self.caught_up = False
        self.events: Counter[str] = Counter()
        self.read_back: Counter[str] = Counter()  # skipped offset ranges read back, by topic
        self._names = self.decoder.names()
        self._read = read or self._read_range
        self._transactional = frozenset(settings.topic(name) for name in WRITTEN_IN_TRANSACTIONS)
        # "topic:partition" -> the offset below which every record is folded (guarantee 4)
        self._expected: dict[str, int] = {}
        self._ends: dict[tuple[str, int], int] | None = None
        self.needs_ends = False  # a read-back paused folding: measure the ends again
        self._next: dict[tuple[str, int], int] = {}
        self._committed: dict[tuple[str, int], int] = {}
        self._since: float | None = None  # when this catch-up's first ends were measured
        self._measured = 0.0  # when the latest round's ends were measured (the measure's end)
        self._reached: float | None = None  # when this round read up to them

    # -- start ------------------------------------------------------------------------------

    def restore(self, items: Iterable[tuple[Any, Any]]) -> None:
        """Load every piece from the recovered table (keys and values are bytes)."""
        state = MonitorState()
        for key, value in items:
            if value is None:
                continue
            name = key.decode() if isinstance(key, bytes) else str(key)
            state = store.with_piece(state, name, value)
        self.state = state
        # What the pieces hold counts as read: the group's committed offsets are at or past
        # them, so those records are not delivered again, and a partition that receives
        # nothing new (a dead-letter topic, say) would otherwise never look caught up.
        for tp, offset in self._held():
            self._next[tp] = max(self._next.get(tp, 0), offset)
        self.restored = True

    def _held(self) -> Iterator[tuple[tuple[str, int], int]]:
        """Every (input partition, next offset) a restored piece holds, piece by piece."""
        state = self.state
        pieces: list[Positions] = [piece.positions for piece in state.sources.values()]
        pieces += [state.network.positions, state.mempool.positions,
                   state.dead_letters.positions]
        for positions in pieces:
            for key, offset in positions.items():
                topic, _, partition = key.rpartition(":")
                yield (topic, int(partition)), offset

    def catch_up_ledger(self) -> None:
        """Follow chain.blocks up to where the restored chain view stands (blocking)."""
        if self.ledger is not None:
            position = self.state.network.positions.get(
                f"{self.settings.topic('chain.blocks')}:0", 0)
            self.ledger.catch_up(self.settings, position)

    def measure_ends(self) -> None:
        """Where every input partition ends now (blocking): the offset after its last committed
        record, found by reading the partition's tail (the high watermark may sit on a
        transaction marker, which no consumer ever receives). Caught up means read up to here."""
        measured = time.monotonic()
        consumer = make_consumer(self.settings,
                                 f"{self.settings.topic('monitor')}-ends-{time.time_ns()}",
                                 **{"fetch.wait.max.ms": 10})
        # The monitor's own group: what it committed before a restart is not delivered again.
        group = make_consumer(self.settings, self.options.app_id or self.settings.topic("monitor"))
        ends: dict[tuple[str, int], int] = {}
        try:
            for topic in self._names:
                partitions = consumer.partitions(topic)
                for partition, offset in group.committed(topic, partitions).items():
                    tp = (topic, partition)
                    self._committed[tp] = offset
                    self._next[tp] = max(self._next.get(tp, 0), offset)
                for partition in partitions:
                    low, high = consumer.watermarks(topic, partition)
                    if (topic, partition) not in self._committed:  # Faust starts at the log's
                        self._expected.setdefault(f"{topic}:{partition}", low)  # first record
                    if high > low:
                        consumer.assign([KafkaPosition(topic, partition, max(low, high - TAIL))])
                        ends.update(self._tail_end(consumer, topic, partition, high))
        finally:
            consumer.close()
            group.close()
        log.info("input ends measured in %.2f s", time.monotonic() - measured)
        self.ends_measured(ends, measured, time.monotonic())

    def ends_measured(self, ends: dict[tuple[str, int], int], began: float,
                      ended: float | None = None) -> None:
        """Read up to ``ends`` (per input partition, the offset after its last record), as
        measured from ``began`` to ``ended`` (``time.monotonic()``), before judging."""
        self._ends = ends
        self.needs_ends = False
        if self._since is None:
            self._since = began  # catch_up_timeout_s runs from the first round
        self._measured = began if ended is None else ended
        self._reached = None
        self._note_reached()  # nothing to read: reached as measured

    @staticmethod
    def _tail_end(consumer: KafkaConsumer, topic: str, partition: int, high: int
                  ) -> dict[tuple[str, int], int]:
        deadline = time.monotonic() + 10
        last: int | None = None
        while time.monotonic() < deadline:
            record = consumer.poll(0.2)
            if record is not None:
                last = record.offset
                if last + 1 >= high:
                    break
            if consumer.position(topic, partition) >= high:
                break
        return {} if last is None else {(topic, partition): last + 1}

    def gaps(self) -> dict[tuple[str, int], tuple[int, int]]:
        """Per input partition, the offsets ``[held, committed)`` the group committed past what
        the restored pieces hold: ``held`` is the lowest position any piece keeps for it, 0 when
        no piece has one (its records may all have been lost with the crash)."""
        held: dict[tuple[str, int], int] = {}
        for tp, offset in self._held():
            held[tp] = min(held.get(tp, offset), offset)
        return {tp: (held.get(tp, 0), committed) for tp, committed in self._committed.items()
                if committed > held.get(tp, 0)}

    def fill_gaps(self) -> list[str]:
        """Fold the records of every gap (``gaps``) in offset order (blocking); returns the keys
        of the pieces that changed, to be written. Records a piece already holds are skipped by
        its positions, as any redelivery is. Then every record below the committed offsets is
        folded: delivery is expected to go on from there (guarantee 4)."""
        changed: set[str] = set()
        for (topic, partition), (start, end) in sorted(self.gaps().items()):
            records = list(self._read(topic, partition, start, end))
            log.info("%s[%d]: %d records committed past the restored state (offsets %d..%d) "
                     "read back", topic, partition, len(records), start, end)
            changed |= self._fold(records)
        for (topic, partition), committed in self._committed.items():
            key = f"{topic}:{partition}"
            self._expected[key] = max(self._expected.get(key, 0), committed)
        return sorted(changed, key=lambda k: (k == NETWORK, k))

    def _read_range(self, topic: str, partition: int, start: int, end: int) -> list[Record]:
        # make_reader raises on any consumer error: a gap read in part would lose records
        reader = make_reader(self.settings,
                             f"{self.settings.topic('monitor')}-gaps-{time.time_ns()}")
        try:
            return [Record(topic, partition, r.offset, r.timestamp_ms, r.value)
                    for r in reader.read_span(topic, partition, start, end, timeout_s=60)]
        finally:
            reader.close()

    def load_alerts(self) -> None:
        """Fold the alerts topic: what has been told and not resolved (blocking)."""
        from services.monitor.alert_log import read_alerts

        open_alerts = OpenAlerts()
        for event in read_alerts(self.settings):
            open_alerts = alerts.fold(open_alerts, event)
        self.open_alerts = open_alerts
        self.alerts_loaded = True

    # -- records ----------------------------------------------------------------------------

    def apply(self, records: Sequence[Record]) -> list[str]:
        """Fold a batch; returns the keys of the pieces to write (the network last). Offsets a
        partition's delivery skipped are read back and folded first (blocking; guarantee 4)."""
        skipped, expected = delivery.skipped(
            self._expected, [Position(r.topic, r.partition, r.offset) for r in records],
            self._transactional)
        changed: set[str] = set()
        for record, hole in zip(records, skipped, strict=True):
            if hole is not None:
                changed |= self._fold(self._read_back(hole))
                self._stale()
            changed |= self._fold((record,))
        self._expected = expected  # only once all is folded (a read-back may raise)
        self._note_reached()
        return sorted(changed, key=lambda k: (k == NETWORK, k))

    def _stale(self) -> None:
        """Folding paused for a read-back while the inputs went on: the view may lag them, so
        nothing is judged until the ends are measured again and read up to (guarantee 6)."""
        self.caught_up = False
        self._since = None
        self._ends = None
        self.needs_ends = True

    def _read_back(self, hole: delivery.Skipped) -> list[Record]:
        records = list(self._read(hole.topic, hole.partition, hole.start, hole.end))
        if not records and hole.topic in self._transactional:
            log.info("%s[%d]: offsets %d..%d hold no committed record (an aborted "
                     "transaction)", hole.topic, hole.partition, hole.start, hole.end)
            return records
        self.read_back[self._names.get(hole.topic, hole.topic)] += 1
        log.warning("%s[%d]: offsets %d..%d were not delivered: %d records read back from "
                    "Kafka and folded", hole.topic, hole.partition, hole.start, hole.end,
                    len(records))
        return records

    def _fold(self, records: Iterable[Record]) -> set[str]:
        changed: set[str] = set()
        for record in records:
            facts = self.decoder.facts(record)
            tp = (record.topic, record.partition)
            self._next[tp] = max(self._next.get(tp, 0), record.offset + 1)
            self.events[self._names.get(record.topic, record.topic)] += 1
            if facts:
                self.state, keys = apply_record(
                    self.policy, self.state,
                    Position(record.topic, record.partition, record.offset), facts)
                changed |= keys
        return changed

    def _note_reached(self) -> None:
        """Remember when this round's ends were read up to (once per batch, not per record)."""
        if (self._reached is None and self._ends is not None and not self.caught_up
                and all(self._next.get(tp, 0) >= end for tp, end in self._ends.items())):
            self._reached = time.monotonic()

    def piece(self, key: str) -> bytes:
        return store.piece_bytes(self.state, key)

    def check_caught_up(self) -> bool:
        """Whether the view is fresh enough to judge by (guarantee 6); a round that reached
        its ends late asks for another (``needs_ends``)."""
        if self.caught_up or self._ends is None or self._since is None:
            return self.caught_up
        now = time.monotonic()
        if now - self._since >= self.options.catch_up_timeout_s:
            log.warning("judging after %.0f s of catching up without reaching the inputs' ends",
                        now - self._since)
            self.caught_up = True
        elif self._reached is not None:
            behind = self._reached - self._measured
            if behind <= self.options.fresh_s:
                log.info("caught up with the inputs (their ends measured %.2f s before)", behind)
                self.caught_up = True
            else:  # what was written while this round read is not folded yet: read it too
                log.info("read up to the inputs' ends %.2f s after measuring them: measuring "
                         "again", behind)
                self._ends = None
                self.needs_ends = True
        return self.caught_up

    # -- alerts -----------------------------------------------------------------------------

    def evaluate(self, now_ms: int | None = None) -> tuple[AlertEvent, ...]:
        """Decide alert events at ``now_ms``; nothing until restored, loaded and caught up."""
        if not (self.restored and self.alerts_loaded and self.check_caught_up()):
            return ()
        now_ms = _now_ms() if now_ms is None else now_ms
        observations = rules.evaluate(self.policy, self.state, now_ms)
        self.open_alerts, events = alerts.reconcile(self.open_alerts, observations, now_ms)
        return events

    def snapshot(self) -> Snapshot | None:
        if not self.restored:
            return None
        return Snapshot(self.policy, self.state, self.open_alerts, dict(self.events),
                        dict(self.decoder.undecodable), dict(self.read_back))
