"""Start-up of the user command handler after a long history: snapshots against the full fold.

For E and 5E events over the same users (``--users``; the history grows, the users do not), on
fresh topics of the bench cluster (``QUSTREAM_*`` settings; ``qustream infra up`` starts one):

1. the events are written straight to ``users.events`` (``tests.support.user_history``);
2. a handler folds them and, closing, snapshots every partition to ``users.snapshots``;
3. ``--tail`` more events are written (the same number at E and 5E: what a restart finds after
   its newest snapshot);
4. timed, alternately, ``--repeat`` times each, from ``CommandHandler.create`` until every
   partition is restored (the group join included, as a restarted instance pays it):
   ``snapshot``, a handler that loads the snapshots and folds the tail, and ``full``, the
   baseline, one that folds from offset 0 (``--full``). Neither writes snapshots, so each
   round finds the same topics.

Last line, one JSON object: the best seconds of each at E and 5E, ``growth`` (snapshot at 5E /
at E; the target is about 1: a restart costs the users, not the events) and ``ratio``
(snapshot / full at 5E). A user's state keeps its last 1024 idempotency keys, so while users
have fewer commands than that (E / users < 1024) their snapshots still grow from E to 5E.

    python -m bench.handler_startup [--events 50000] [--users 1000] [--tail 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from typing import Any

from confluent_kafka.admin import AdminClient
from rich.console import Console
from rich.progress import Progress

from bench.common import emit, scratch_kafka
from services.shard_writer.handler import CommandHandler
from streams.admin import ensure_topics
from streams.settings import Settings, load_settings
from streams.topics import spec
from tests.support.user_history import History

TOPICS = ("users.commands", "users.events", "users.replies", "users.snapshots", "dlq.users")
WRITE_STEP = 10_000
# A static member (the handler's instance id) does not leave its group when it closes: the
# group empties, and can be deleted with the bench's topics, once this session has expired.
SESSION_MS = 6000


def _write(settings: Settings, history: History, events: int, progress: Progress) -> None:
    task = progress.add_task(f"writing {events:,} events", total=events)
    for start in range(0, events, WRITE_STEP):
        step = min(WRITE_STEP, events - start)
        history.write(settings, step)
        progress.advance(task, step)
    progress.remove_task(task)


def _restart(settings: Settings, partitions: int, **options: Any) -> float:
    """Seconds from ``create`` until the handler holds every partition; it then closes."""
    started = time.perf_counter()
    handler = CommandHandler.create(settings, instance_id="bench",
                                    **{"session.timeout.ms": SESSION_MS, **options})
    restored = threading.Event()
    took: list[float] = []

    def watch() -> None:  # the loop's poll outlasts the assignment: time it from beside
        while not restored.is_set():
            if len(handler.partitions) == partitions:
                took.append(time.perf_counter() - started)
                restored.set()
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        deadline = time.monotonic() + 3600
        while not restored.is_set():
            handler.run_once()
            if time.monotonic() > deadline:
                raise RuntimeError("the handler got no assignment within an hour")
    finally:
        restored.set()
        watcher.join()
        handler.close()
    return took[0]


def _await_no_members(settings: Settings, group: str) -> None:
    """Wait (a session at most, and a little) until the group has no member left."""
    admin = AdminClient(settings.kafka_config())
    deadline = time.monotonic() + SESSION_MS / 1000 + 10
    while time.monotonic() < deadline:
        (described,) = admin.describe_consumer_groups([group]).values()
        if not described.result(30).members:
            return
        time.sleep(0.5)


def _measure(base: Settings, args: argparse.Namespace, events: int, label: str,
             console: Console, results: dict[str, float]) -> None:
    history = History.create(args.users)
    with scratch_kafka(base) as settings, Progress(console=console, transient=True) as progress:
        ensure_topics(settings, [spec(name) for name in TOPICS])
        partitions = spec("users.events").partitions
        _write(settings, history, events, progress)
        task = progress.add_task("the first fold and its snapshots", total=None)
        _restart(settings, partitions)
        progress.remove_task(task)
        _write(settings, history, args.tail, progress)
        best = {"snapshot": float("inf"), "full": float("inf")}
        task = progress.add_task(f"restarts after {events:,} events", total=2 * args.repeat)
        for _ in range(args.repeat):
            for name, options in (("snapshot", {"snapshot_every": 0}),
                                  ("full", {"snapshot_every": 0, "full_rebuild": True})):
                best[name] = min(best[name], _restart(settings, partitions, **options))
                progress.advance(task)
        _await_no_members(settings, settings.topic("users.handler"))
    for name, seconds in best.items():
        results[f"{name}_s_{label}"] = round(seconds, 3)
        console.print(f"{name} restart after {events:,} events (+{args.tail:,}): "
                      f"{seconds:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000, help="E: histories of E and 5E")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--tail", type=int, default=1000,
                        help="events written after the snapshots")
    parser.add_argument("--repeat", type=int, default=3, help="restarts of each kind per size")
    args = parser.parse_args()
    console = Console(stderr=True)
    results: dict[str, float] = {}
    base = load_settings()
    for label, events in (("e", args.events), ("5e", 5 * args.events)):
        _measure(base, args, events, label, console, results)
    emit({"bench": "handler_startup", "events": args.events, "users": args.users,
          "tail": args.tail,
          "snapshot_s_e": results["snapshot_s_e"], "snapshot_s_5e": results["snapshot_s_5e"],
          "full_s_e": results["full_s_e"], "full_s_5e": results["full_s_5e"],
          "growth": round(results["snapshot_s_5e"] / results["snapshot_s_e"], 3),
          "ratio": round(results["snapshot_s_5e"] / results["full_s_5e"], 3),
          "load_1m": round(os.getloadavg()[0], 2)})


if __name__ == "__main__":
    main()
