"""The run loop: dispatch by topic, timers, stop, duration, idle exit, flush on exit.

Over the real consumer and producer wrappers with recording stand-ins of the library's clients
(``tests/support/fake_kafka.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from streams.kafka import KafkaConsumer, KafkaProducer, Record
from streams.runloop import RunLoop, by_topic
from tests.support.fake_kafka import FakeRawConsumer, FakeRawProducer, message


def _loop(script: list, **options: object) -> tuple[RunLoop, FakeRawConsumer, FakeRawProducer,
                                                    list[Record]]:
    raw_consumer, raw_producer = FakeRawConsumer(script), FakeRawProducer()
    seen: list[Record] = []
    loop = RunLoop(KafkaConsumer(raw_consumer, "test"), seen.extend,
                   producer=KafkaProducer(raw_producer), **options)  # type: ignore[arg-type]
    return loop, raw_consumer, raw_producer, seen


def test_each_record_goes_to_the_handler_of_its_topic_in_order() -> None:
    got: list[tuple[str, int]] = []
    dispatch = by_topic({"a": lambda r: got.append(("a", r.offset)),
                         "b": lambda r: got.append(("b", r.offset))})
    script = [message("a", 0, 1), message("b", 0, 1), message("a", 0, 2), None,
              message("b", 0, 2)]
    loop = RunLoop(KafkaConsumer(FakeRawConsumer(script), "test"), dispatch)
    loop.run(idle_timeout_s=0)
    assert got == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]


def test_a_record_of_an_unexpected_topic_is_a_bug_not_dropped() -> None:
    loop = RunLoop(KafkaConsumer(FakeRawConsumer([message("c", 0, 1)]), "test"),
                   by_topic({"a": lambda r: None}))
    with pytest.raises(KeyError):
        loop.run(idle_timeout_s=0)


def test_the_tick_bounds_the_wait_and_after_batch_runs_every_turn() -> None:
    waits = iter([0.01, 5.0, 0.0])
    after: list[int] = []
    loop, raw, _, _ = _loop([None, None, None], tick=lambda: next(waits), poll_s=0.05,
                            after_batch=lambda: after.append(1))
    for _ in range(3):
        loop.turn()
    assert [round(t, 2) for t in raw.poll_timeouts] == [0.01, 0.05, 0.0]
    assert after == [1, 1, 1]


def test_stop_ends_the_loop_and_the_producer_is_flushed() -> None:
    raw_consumer = FakeRawConsumer([message("a", 0, i) for i in range(10)])
    raw_producer = FakeRawProducer()
    handled: list[int] = []
    loop: RunLoop

    def handle(records: Sequence[Record]) -> None:
        handled.extend(r.offset for r in records)
        if len(handled) >= 3:
            loop.stop()

    loop = RunLoop(KafkaConsumer(raw_consumer, "test"), handle,
                   producer=KafkaProducer(raw_producer), max_records=1)
    loop.run()
    assert handled == [0, 1, 2]
    assert raw_producer.names()[-1] == "flush"


def test_a_shared_stop_event_set_by_another_thread_ends_the_loop() -> None:
    stop = threading.Event()
    loop, _, raw_producer, _ = _loop([], stop_event=stop, poll_s=0.01)
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    loop.run()
    assert time.monotonic() - started < 5
    assert raw_producer.names()[-1] == "flush"


def test_duration_and_idle_timeout_end_the_loop() -> None:
    loop, _, _, _ = _loop([], poll_s=0.01)
    started = time.monotonic()
    loop.run(duration_s=0.05)
    assert 0.05 <= time.monotonic() - started < 5
    loop, _, _, seen = _loop([message("a", 0, 1), None], poll_s=0.01)
    loop.run(idle_timeout_s=0.05)
    assert [r.offset for r in seen] == [1]


def test_the_producer_is_flushed_when_a_handler_fails() -> None:
    raw_producer = FakeRawProducer()

    def fail(records: Sequence[Record]) -> None:
        raise RuntimeError("handler bug")

    loop = RunLoop(KafkaConsumer(FakeRawConsumer([message("a", 0, 1)]), "test"), fail,
                   producer=KafkaProducer(raw_producer))
    with pytest.raises(RuntimeError):
        loop.run()
    assert raw_producer.names() == ["flush"]


def test_fill_mode_asks_for_full_batches() -> None:
    loop, raw, _, seen = _loop([message("a", 0, i) for i in range(5)], fill=True,
                               max_records=3, poll_s=0.5)
    assert loop.turn() == 3
    assert raw.calls[0] == ("consume", (3, 0.5))
    assert [r.offset for r in seen] == [0, 1, 2]
