"""The monitor killed at any instant: what it persisted equals a fold from scratch.

A model of the edge ``inputs -> monitor.state`` (runtime.py): records of several sources on
shared and separate partitions are delivered in batches, in any interleaving of the partitions,
and delivery may skip any records that later ones of their partition follow (Faust did after a
restart: the runtime must read them back, guarantee 4, here from the model's log);
after each batch the changed pieces go to the changelog one by one and the group may commit.
The process dies at any point, between two piece writes too. Commits follow the batch's
acknowledged writes, as the agent makes them (``app._StateTable.written``): with a commit that
overtakes the writes, a record of a piece that holds no position on its partition yet is lost
(``MonitorRuntime.gaps`` starts at the lowest position the restored pieces hold). The
restarted runtime restores the latest value of every key, folds what the group committed past
the restored pieces (``fill_gaps``) and takes what Faust then delivers from the committed
offsets, in another interleaving. Every persisted source piece must equal the fold the
integration test makes of the records its positions claim
(``tests/integration/test_monitor.py::_fold_from_topics``: partition by partition, in sorted
order), and the fold of the whole log.
"""

from __future__ import annotations

from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from services.monitor import store
from services.monitor.core.facts import Position
from services.monitor.core.state import MonitorState, apply_record
from services.monitor.decode import Record, RecordDecoder
from services.monitor.runtime import MonitorRuntime
from services.monitor.settings import MonitorSettings
from streams.codec import default_codec
from streams.settings import Settings

SETTINGS = Settings(topic_prefix="x.")
OPTIONS = MonitorSettings(qrng_window_s=10, qrng_hop_s=1)  # the integration test's windows
POLICY = OPTIONS.policy()
T = 1_800_000_000_000
RAW, STATUS = SETTINGS.topic("entropy.raw"), SETTINGS.topic("qrng.status")
# a and b share a partition of entropy.raw, c has its own; all beat on one status partition
PLACES = {"a": (RAW, 0), "b": (RAW, 0), "c": (RAW, 1)}
TP = tuple[str, int]


def _chunk(source: str, seq: int, at_ms: int) -> bytes:
    return default_codec().encode("EntropyChunkPublished", {
        "source_id": source, "seq": seq, "prev_digest": bytes(32), "payload_digest": bytes(32),
        "chunk_digest": bytes(32), "payload": b"\x01" * 4096, "produced_at_ms": at_ms,
        "simulated": True, "next_digest": bytes(32)})


def _beat(source: str, at_ms: int, failures: int) -> bytes:
    return default_codec().encode("QrngHeartbeatEmitted", {
        "source_id": source, "at_ms": at_ms, "bytes_per_s": 8192.0, "chunks_published": 0,
        "last_seq": 0, "health_state": "HEALTHY", "simulated": True,
        "rct_failures": failures, "apt_failures": 0})


@st.composite
def logs(draw: st.DrawFn) -> dict[TP, list[Record]]:
    """The input partitions: chunks (seq gapless per source, now and then a repeat, as after
    an ingest restart) every ~450 ms and heartbeats, over ~15 s (more than one window)."""
    events = draw(st.lists(st.tuples(st.sampled_from("abc"), st.booleans(), st.booleans()),
                           min_size=1, max_size=36))
    log: dict[TP, list[Record]] = {(RAW, 0): [], (RAW, 1): [], (STATUS, 0): []}
    seqs = {"a": 0, "b": 0, "c": 0}
    for i, (source, is_chunk, repeat) in enumerate(events):
        at_ms = T + i * 450
        if is_chunk:
            seqs[source] -= 1 if repeat and seqs[source] else 0
            tp, value = PLACES[source], _chunk(source, seqs[source], at_ms)
            seqs[source] += 1
        else:
            tp, value = (STATUS, 0), _beat(source, at_ms, i // 5)
        log[tp].append(Record(tp[0], tp[1], len(log[tp]), at_ms, value))
    return log


def _interleave(log: dict[TP, list[Record]], start: dict[TP, int], picks: list[int],
                sizes: list[int], skips: frozenset[int] = frozenset()
                ) -> Iterator[list[Record]]:
    """Batches of the records from ``start`` on, each partition in order, partitions mixed as
    ``picks`` say (Faust round-robins fetched partitions in no order we rely on), without the
    ``skips``-th ones that are not the last of their partition (nothing would reveal those)."""
    skipped = _skipped(log, skips)
    queues = {tp: [r for r in records[start.get(tp, 0):]
                   if r.offset + 1 == len(records) or (tp, r.offset) not in skipped]
              for tp, records in sorted(log.items())}
    merged: list[Record] = []
    turn = 0
    while any(queues.values()):
        ready = [tp for tp in sorted(queues) if queues[tp]]
        tp = ready[picks[turn % len(picks)] % len(ready)] if picks else ready[0]
        merged.append(queues[tp].pop(0))
        turn += 1
    index = 0
    while index < len(merged):
        size = sizes[index % len(sizes)] if sizes else 1
        yield merged[index:index + size]
        index += size


def _skipped(log: dict[TP, list[Record]], skips: frozenset[int]) -> set[tuple[TP, int]]:
    """The records ``skips`` names, counting through the partitions in order."""
    every = [(tp, record.offset) for tp, records in sorted(log.items()) for record in records]
    return {every[i] for i in skips if i < len(every)}


def _fold_claimed(log: dict[TP, list[Record]], source: str, positions: dict[str, int]
                  ) -> MonitorState:
    """``_fold_from_topics`` of the integration test, on the model's log."""
    decoder = RecordDecoder(SETTINGS)
    state = MonitorState()
    for where, until in sorted(positions.items()):
        topic, _, partition = where.rpartition(":")
        for record in log[(topic, int(partition))][:until]:
            facts = tuple(f for f in decoder.facts(record)
                          if getattr(f, "source_id", None) == source)
            if facts:
                state, _ = apply_record(POLICY, state,
                                        Position(topic, int(partition), record.offset), facts)
    return state


def _persisted(changelog: dict[str, bytes]) -> MonitorState:
    state = MonitorState()
    for key, value in changelog.items():
        state = store.with_piece(state, key, value)
    return state


@settings(max_examples=300, deadline=None)
@given(log=logs(), picks=st.lists(st.integers(0, 5), max_size=12),
       sizes=st.lists(st.integers(1, 6), min_size=1, max_size=6),
       commits=st.lists(st.booleans(), min_size=1, max_size=8),
       crash_batch=st.integers(0, 40), written=st.integers(0, 4),
       picks_after=st.lists(st.integers(0, 5), max_size=12),
       sizes_after=st.lists(st.integers(1, 6), min_size=1, max_size=6),
       skips=st.frozensets(st.integers(0, 40), max_size=4),
       skips_after=st.frozensets(st.integers(0, 40), max_size=4))
def test_a_monitor_killed_at_any_instant_persists_what_a_fold_of_its_positions_gives(
        log: dict[TP, list[Record]], picks: list[int], sizes: list[int], commits: list[bool],
        crash_batch: int, written: int, picks_after: list[int],
        sizes_after: list[int], skips: frozenset[int], skips_after: frozenset[int]) -> None:
    changelog: dict[str, bytes] = {}
    committed: dict[tuple[str, int], int] = {}
    delivered: dict[tuple[str, int], int] = {}

    def read(topic: str, partition: int, start: int, end: int) -> list[Record]:
        return log[(topic, partition)][start:end]

    # the first process, killed after ``written`` piece writes of batch ``crash_batch``
    first = MonitorRuntime(SETTINGS, OPTIONS, read=read)
    first.restore([])
    for number, batch in enumerate(_interleave(log, {}, picks, sizes, skips)):
        keys = first.apply(batch)
        for record in batch:
            delivered[(record.topic, record.partition)] = record.offset + 1
        if number == crash_batch:
            for key in keys[:written]:
                changelog[key] = first.piece(key)
            break
        for key in keys:
            changelog[key] = first.piece(key)
        if commits[number % len(commits)]:
            committed.update(delivered)

    # the restart: restore, fold what was committed past the pieces, then what Faust delivers
    second = MonitorRuntime(SETTINGS, OPTIONS, read=read)
    second.restore([(key.encode(), value) for key, value in changelog.items()])
    second._committed = dict(committed)
    for key in second.fill_gaps():
        changelog[key] = second.piece(key)
    for batch in _interleave(log, committed, picks_after, sizes_after, skips_after):
        for key in second.apply(batch):
            changelog[key] = second.piece(key)
    if not skips and not skips_after:
        assert not first.read_back and not second.read_back, "a read-back with nothing skipped"

    persisted = _persisted(changelog)
    for source in sorted(persisted.sources):
        piece = persisted.sources[source]
        assert _fold_claimed(log, source, dict(piece.positions)).sources[source] == piece
        tp = PLACES[source]
        ends = {f"{tp[0]}:{tp[1]}": len(log[tp]), f"{STATUS}:0": len(log[(STATUS, 0)])}
        everything = _fold_claimed(log, source, ends).sources[source]
        assert piece.published_bytes == everything.published_bytes, "a chunk lost or doubled"
        assert piece.irregular_seqs == everything.irregular_seqs
        assert piece.rct_failures == everything.rct_failures
