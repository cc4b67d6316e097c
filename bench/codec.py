"""Benchmark: our Avro single-object codec against plain fastavro on the same events.

Both sides encode and then decode the same records; the baseline is fastavro's schemaless
writer/reader with no header and no checks, i.e. the floor our codec adds its framing and
validation to. Rounds alternate between the two so machine noise hits both alike; the best
round of each is reported. Last line: one JSON object (see README, Benchmarks).
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable

import fastavro
from fastavro.utils import generate_many

from streams.codec import default_codec

EVENTS = ("VoteCast", "EntropyCheckpointSigned", "UserEventRecorded", "TransactionSubmitted")
PER_SCHEMA = 500
ROUNDS = 11


def _workload() -> list[tuple[str, dict]]:
    codec = default_codec()
    return [
        (name, record)
        for name in EVENTS
        for record in generate_many(codec.parsed_schema(name), PER_SCHEMA)
    ]


def _ours(records: list[tuple[str, dict]]) -> Callable[[], None]:
    codec = default_codec()

    def run() -> None:
        for name, record in records:
            codec.decode(codec.encode(name, record))

    return run


def _baseline(records: list[tuple[str, dict]]) -> Callable[[], None]:
    codec = default_codec()
    parsed = [(codec.parsed_schema(name), record) for name, record in records]

    def run() -> None:
        for schema, record in parsed:
            buffer = io.BytesIO()
            fastavro.schemaless_writer(buffer, schema, record)
            data = buffer.getvalue()  # both sides must end with bytes to send and decode them
            fastavro.schemaless_reader(io.BytesIO(data), schema, None)

    return run


def _best_rate(run: Callable[[], None], count: int) -> float:
    start = time.perf_counter()
    run()
    return count / (time.perf_counter() - start)


def main() -> None:
    records = _workload()
    ours, baseline = _ours(records), _baseline(records)
    ours(), baseline()  # warm up
    ours_rates, base_rates = [], []
    for _ in range(ROUNDS):
        ours_rates.append(_best_rate(ours, len(records)))
        base_rates.append(_best_rate(baseline, len(records)))
    best_ours, best_base = max(ours_rates), max(base_rates)
    print(f"codec: {len(records)} events x {ROUNDS} rounds; "
          f"ours {best_ours:,.0f} events/s, fastavro {best_base:,.0f} events/s")
    print(json.dumps({
        "bench": "codec",
        "unit": "events/s",
        "ours": round(best_ours),
        "baseline": round(best_base),
        "ratio": round(best_ours / best_base, 3),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
