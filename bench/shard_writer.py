"""Benchmark: events/s projected into Cassandra by one shard_writer, against raw
``execute_concurrent`` writing the same rows, in the same run, on the configured cluster.

``ours`` is the whole Kafka -> Cassandra edge with its guarantees: consume from
``users.events``, decode, one unlogged single-partition batch per user with ``USING TIMESTAMP``
= version, stored positions after every batch. ``baseline`` is the cassandra-driver's
``execute_concurrent`` writing exactly the same statements, one request per row, from
pre-built parameters (no Kafka, no decoding, no positions). Its topics, consumer group and
keyspaces are deleted at the end. The last line is one JSON object.

    python -m bench.shard_writer [--users 2000] [--events-per-user 25]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from typing import Any

from cassandra.concurrent import execute_concurrent

from bench.common import scratch_kafka
from services.shard_writer.core import Event, RecordPut, UserRegistered, event_to_record
from services.shard_writer.projection import Projector, group_by_user, rows_for
from services.shard_writer.store import Statements, connect, create_schema, drop_keyspace
from streams.admin import ensure_topics
from streams.codec import default_codec
from streams.kafka import make_producer
from streams.settings import Settings, load_settings
from streams.topics import spec


def make_events(users: int, per_user: int, payload_bytes: int) -> list[Event]:
    events: list[Event] = []
    for u in range(users):
        user_id = f"{u:040x}"
        events.append(Event(user_id, 1, f"reg-{u}", 1, UserRegistered("ed25519:AA==",
                                                                      os.urandom(1184))))
        for v in range(2, per_user + 1):
            events.append(Event(user_id, v, f"c-{u}-{v}", v,
                                RecordPut(f"r{v % 10}", v // 10 + 1, os.urandom(payload_bytes))))
    # interleave users the way a live log does
    events.sort(key=lambda e: (e.version, e.user_id))
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--events-per-user", type=int, default=25)
    parser.add_argument("--payload-bytes", type=int, default=1300)  # a sealed ~100 B record
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args()
    with scratch_kafka(load_settings()) as settings:
        ours, baseline = _run(settings, args)
    print(json.dumps({"bench": "shard_writer", "unit": "events/s", "ours": round(ours),
                      "baseline": round(baseline), "ratio": round(ours / baseline, 3)}))


def _run(settings: Settings, args: argparse.Namespace) -> tuple[float, float]:
    run = uuid.uuid4().hex[:10]
    ours_ks, base_ks = f"bench_sw_{run}", f"bench_raw_{run}"
    settings.cassandra.keyspace = ours_ks
    ensure_topics(settings, [spec("users.events"), spec("dlq.users")])
    events = make_events(args.users, args.events_per_user, args.payload_bytes)
    codec = default_codec()
    tuning: dict[str, Any] = {"linger.ms": 50, "batch.size": 1_000_000}
    producer = make_producer(settings, **tuning)
    topic = settings.topic("users.events")
    for event in events:
        producer.produce(topic, key=event.user_id.encode(), partition=hash(event.user_id) % 12,
                         value=codec.encode("UserEventRecorded", event_to_record(event)))
        producer.poll(0)
    producer.flush(120)
    print(f"{len(events)} events produced to {topic}")

    cluster, session = connect(settings)
    try:
        for ks in (ours_ks, base_ks):
            create_schema(session, ks)
        # ours: one shard_writer with its guarantees (group join excluded from the timing)
        projector = Projector.create(settings, session)
        while not projector.run_once():
            pass  # the group join and the first fetch are not what is measured
        first_batch = projector.stats.events
        started = time.perf_counter()
        while projector.stats.events < len(events):
            projector.run_once()
        ours_s = time.perf_counter() - started
        ours = (len(events) - first_batch) / ours_s if ours_s > 0 else float("inf")
        projector.close()
        print(f"ours: {projector.stats.events} events, {projector.stats.statements} statements, "
              f"{projector.stats.batches} batches, {ours:,.0f} events/s")

        # baseline: raw execute_concurrent of the same rows
        statements = Statements.prepare(session, base_ks)
        rows = [row for user_events in group_by_user(events).values()
                for row in rows_for(statements, user_events)]
        t0 = time.perf_counter()
        results = execute_concurrent(session, rows, concurrency=args.concurrency,
                                     raise_on_first_error=True, results_generator=False)
        baseline_s = time.perf_counter() - t0
        assert all(ok for ok, _ in results)
        baseline = len(events) / baseline_s
        print(f"baseline: {len(rows)} statements, {baseline:,.0f} events/s")
    finally:
        for ks in (ours_ks, base_ks):
            drop_keyspace(session, ks)
        cluster.shutdown()
    return ours, baseline


if __name__ == "__main__":
    main()
