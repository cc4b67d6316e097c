"""The command handler's snapshots on the real Kafka + Cassandra (issue 17, item 3).

A restarted handler loads each partition's newest snapshot from ``users.snapshots`` and folds
only the events after it: it reads far fewer records than the history holds, and its state is
the full fold's (compared with ``CommandHandler.rebuild`` from offset 0, byte for byte of the
canonical encoding). Commands it accepts after the restart are accepted only if that state is
right (``tests.support.user_history.History.probes``), and the Cassandra projection equals the
fold of the log. A snapshot that is garbage, does not hash, or claims events the log does not
have is dead-lettered and the full fold is used; a handler killed in the middle of writing a
snapshot leaves only the earlier ones visible.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cassandra.cluster import Session

from services.shard_writer.consistency import (
    check_log,
    diff_projection,
    end_positions,
    expected_views,
    read_events,
)
from services.shard_writer.core.partition import PartitionState
from services.shard_writer.core.snapshot import assemble, encode, split
from services.shard_writer.handler import CommandHandler
from services.shard_writer.projection import Projector
from services.shard_writer.snapshots import SnapshotStore
from streams.codec import default_codec
from streams.kafka import make_producer, read_to_end
from streams.settings import Settings
from tests.integration.test_users_pipeline import (  # noqa: F401 (a fixture)
    ROOT,
    handler_caught_up,
    process_env,
    produce_commands,
    queries_for,
    run_with_kills,
    users_settings,
    wait_until,
)
from tests.support.snapshot_crash import REACHED
from tests.support.user_history import History

pytestmark = pytest.mark.integration
PARTITIONS = 12


class Running:
    """A handler on a thread of this process, stopped and closed by ``stop``."""

    def __init__(self, handler: CommandHandler) -> None:
        self.handler = handler
        self.thread = threading.Thread(target=handler.run, daemon=True)
        self.thread.start()

    def wait(self, what: str, predicate: object, timeout_s: float = 180) -> None:
        def check() -> None:
            assert self.thread.is_alive(), "the handler's loop ended"

        wait_until(predicate, timeout_s, what, check=check)  # type: ignore[arg-type]

    def stop(self) -> dict[int, PartitionState]:
        """Stop the loop and return its partitions' states as they were, then close (which
        snapshots what changed and leaves the group)."""
        self.handler.stop()
        self.thread.join(60)
        assert not self.thread.is_alive()
        states = dict(self.handler.partitions)
        self.handler.close()
        return states


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for item in started:
        if item.thread.is_alive():
            item.stop()


def start(started: list[Running], settings: Settings, **options: Any) -> Running:
    """A handler instance "0": a restart is the same instance coming back (static membership
    gives it its partitions at once)."""
    item = Running(CommandHandler.create(settings, instance_id="0",
                                         **{"session.timeout.ms": 6000, **options}))
    started.append(item)
    return item


def aggregates(state: PartitionState) -> bytes:
    """The canonical bytes of what a state holds; the replies position is left out (a snapshot
    names the replies its rejections come from, a fold the last reply it read)."""
    return encode(0, replace(state, replies_offset=0))


def assert_states_are_the_full_fold(handler: CommandHandler,
                                    states: dict[int, PartitionState]) -> None:
    assert sorted(states) == list(range(PARTITIONS))
    full = {partition: PartitionState() for partition in states}
    assert handler.fold(full).failed == {}
    for partition, state in sorted(states.items()):
        assert aggregates(state) == aggregates(full[partition]), partition


def test_the_handler_restarted_after_50000_events_resumes_from_its_snapshot(
        users_settings: Settings, cassandra_session: Session,  # noqa: F811
        running: list[Running]) -> None:
    """... and its state, and the Cassandra projection, still equal the fold from offset 0."""
    settings = users_settings
    history = History.create(500)
    history.write(settings, 50_000)

    # The first handler has no snapshot: it folds all 50,000 events, then snapshots every
    # partition (each folded more than snapshot_every events).
    first = start(running, settings, snapshot_every=1000)
    first.wait("the first snapshots",
               lambda: first.handler.stats.snapshots_written >= PARTITIONS)
    assert first.handler.stats.rebuilt_events == 50_000
    first.stop()

    # 1,000 more events after the snapshots: the tail the restarted handler must fold.
    history.write(settings, 1000, users=range(100))
    second = start(running, settings)
    second.wait("the assignment", lambda: len(second.handler.partitions) == PARTITIONS)
    stats = second.handler.stats
    assert stats.snapshots_loaded == PARTITIONS and stats.snapshots_rejected == 0
    assert stats.rebuilt_events == 1000, "the restart folded more than the tail"
    assert stats.snapshot_records <= 2 * PARTITIONS
    assert stats.rebuilt_events + stats.rebuilt_replies + stats.snapshot_records < 5000

    # Commands the restarted handler accepts only if its state is the fold (versions and
    # record versions of users with and without tail events).
    probes = history.probes(range(0, 500, 5))
    produce_commands(settings, probes)
    second.wait("the probes", handler_caught_up(settings))
    states = second.stop()
    assert second.handler.stats.accepted == len(probes), second.handler.stats
    assert_states_are_the_full_fold(second.handler, states)

    logged = read_events(settings)
    assert len(logged) == 51_000 + len(probes)
    assert check_log(logged) == []
    projector = Projector.create(settings, cassandra_session)
    try:
        projector.run(idle_timeout_s=5)
        queries = queries_for(settings, cassandra_session)
        queries.wait_for_positions(end_positions(logged), timeout_s=300)
        assert diff_projection(expected_views(logged), queries) == []
    finally:
        projector.close()


def produce_raw(settings: Settings, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = make_producer(settings)
    for key, value in records:
        producer.produce(settings.topic(topic), value, key)
    assert producer.flush(30) == 0


def dead_letters(settings: Settings) -> list[dict[str, Any]]:
    topic = settings.topic("dlq.users")
    codec = default_codec()
    return [codec.decode(record.value).record
            for record in read_to_end(settings, topic, f"{topic}.check")]


def occupied(settings: Settings) -> set[int]:
    """The partitions of users.events with an event."""
    return {item.partition for item in read_events(settings)}


def test_a_garbage_or_false_snapshot_is_dead_lettered_and_the_full_fold_used(
        users_settings: Settings, running: list[Running]) -> None:  # noqa: F811
    settings = users_settings
    history = History.create(60)
    history.write(settings, 1200)
    # small pieces: every snapshot travels in several records; closing writes one per
    # partition that has events
    store = SnapshotStore(settings, piece_bytes=2048)
    first = start(running, settings, snapshots=store)
    first.wait("the assignment", lambda: len(first.handler.partitions) == PARTITIONS)
    states = first.stop()
    assert first.handler.stats.snapshots_written == len(occupied(settings))
    spoiled = sorted(occupied(settings))[:4]

    # the first: its first piece replaced by bytes that are no message at all;
    # the second: a well-formed piece whose bytes do not hash to the snapshot's digest;
    # the third and fourth: complete, self-consistent snapshots of states the log does not
    # have, one event ahead of it (at its end) and 1,000 (beyond it): only the log itself can
    # refuse them.
    garbage = (f"{spoiled[0]}/0".encode(), b"not a snapshot")
    real = split(store.events_topic, spoiled[1], states[spoiled[1]], store.piece_bytes)
    assert len(real) > 1
    forged = replace(real[0], body=bytes(len(real[0].body)))
    false = [garbage, (f"{spoiled[1]}/0".encode(), store.encode(forged))]
    for partition, more in ((spoiled[2], 1), (spoiled[3], 1000)):
        base = states[partition]
        ahead = replace(base, events_offset=base.events_offset + more, last_offsets={
            **base.last_offsets, next(iter(base.users)): base.events_offset + more - 1})
        false += [(f"{partition}/{p.chunk}".encode(), store.encode(p))
                  for p in split(store.events_topic, partition, ahead, store.piece_bytes)]
    produce_raw(settings, "users.snapshots", false)

    second = start(running, settings)
    second.wait("the assignment", lambda: len(second.handler.partitions) == PARTITIONS)
    restored = second.stop()
    stats = second.handler.stats
    assert stats.snapshots_rejected == 4
    assert stats.snapshots_loaded == len(occupied(settings)) - 4
    assert stats.rebuilt_events == sum(1 for item in read_events(settings)
                                       if item.partition in spoiled)
    assert_states_are_the_full_fold(second.handler, restored)
    letters = [d for d in dead_letters(settings)
               if d["source_topic"] == settings.topic("users.snapshots")]
    assert sorted(d["error_type"] for d in letters) == ["snapshot_rejected"] * 4
    reasons = " | ".join(str(d["reason"]) for d in letters)
    for why in ("not an Avro", "digest", "the log ends before", "the log has no event at"):
        assert why in reasons, reasons


def test_a_handler_killed_while_writing_a_snapshot_leaves_the_earlier_ones(
        users_settings: Settings, running: list[Running]) -> None:  # noqa: F811
    settings = users_settings
    history = History.create(60)
    history.write(settings, 1200)
    dying = subprocess.run(
        [sys.executable, "-m", "tests.support.snapshot_crash", "--die-at", "5",
         "--snapshot-every", "1", "--piece-bytes", "2048"],
        cwd=ROOT, env=process_env(settings), capture_output=True, text=True, timeout=300)
    assert dying.returncode == REACHED, dying.stderr[-3000:]

    # The same instance comes back: its producer aborts the dead one's open transaction.
    restarted = start(running, settings)
    restarted.wait("the assignment", lambda: len(restarted.handler.partitions) == PARTITIONS)
    stats = restarted.handler.stats
    assert stats.snapshots_loaded == 4 and stats.snapshots_rejected == 0
    probes = history.probes(range(60))
    produce_commands(settings, probes)
    restarted.wait("the probes", handler_caught_up(settings))
    states = restarted.stop()
    assert restarted.handler.stats.accepted == len(probes)
    assert_states_are_the_full_fold(restarted.handler, states)
    assert check_log(read_events(settings)) == []


def test_commands_survive_kill_9_while_snapshots_are_written_every_50_events(
        users_settings: Settings, cassandra_session: Session,  # noqa: F811
        tmp_path: Path) -> None:
    """The pipeline's kill -9 run, with a snapshot every 50 events per partition: the handler
    dies in and between snapshot writes and restarts from them; every command is applied
    exactly once, and the newest snapshots plus their tails are the full fold."""
    # small batches: the handler is still at work when the kills come, and snapshots often
    run_with_kills(users_settings, cassandra_session, tmp_path, users=60, commands=8000,
                   kills=3, seed=23,
                   handler_args=["--snapshot-every", "50", "--max-batch", "50"])
    checker = CommandHandler.create(users_settings, instance_id="check")
    try:
        loaded = checker.snapshots.load(range(PARTITIONS), "check.snapshots")
        assert loaded.rejected == []
        assert set(loaded.candidates) == occupied(users_settings)
        restored = {partition: assemble(found[0][1], events_topic=checker.events_topic)
                    for partition, found in loaded.candidates.items()}
        assert checker.fold(restored, continuing=restored).failed == {}
        full = {partition: PartitionState() for partition in restored}
        checker.fold(full)
        for partition, state in sorted(restored.items()):
            assert aggregates(state) == aggregates(full[partition]), partition
    finally:
        checker.close()
