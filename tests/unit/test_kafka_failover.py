"""What the edge kit does when a broker failover wedges the client (the replicated soak tests
kill real brokers): a call that hangs is abandoned after a bound, and the transactional batch
replaces a producer stuck in step 5 with a new one of the same transactional id, rewinds the
consumer, and nothing is committed by the stuck producer."""

from __future__ import annotations

import threading

import pytest

from streams.errors import ClientStuckError
from streams.kafka import KafkaConsumer, KafkaProducer, Record
from streams.transactions import TransactionalBatch, within
from tests.support.fake_kafka import FakeRawConsumer, FakeRawProducer


def test_within_returns_raises_or_gives_up_on_a_hanging_call() -> None:
    assert within(lambda: 5, seconds=1, what="quick") == 5
    with pytest.raises(ZeroDivisionError):
        within(lambda: 1 // 0, seconds=1, what="failing")
    release = threading.Event()
    with pytest.raises(ClientStuckError, match="hanging did not return"):
        within(lambda: release.wait(30), seconds=0.2, what="hanging")
    release.set()


class _Wedged(FakeRawProducer):
    """``send_offsets_to_transaction`` waits until released (a dead group coordinator)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def send_offsets_to_transaction(self, positions: list[object], metadata: object,
                                    timeout: float) -> None:
        self.calls.append(("send_offsets_to_transaction", ()))
        self.release.wait(30)


def test_a_producer_stuck_in_step_5_is_replaced_and_the_batch_runs_again() -> None:
    wedged, fresh = _Wedged(), FakeRawProducer()
    raw_consumer = FakeRawConsumer()
    consumer = KafkaConsumer(raw_consumer, "group")
    replaced: list[KafkaProducer] = []
    batch = TransactionalBatch(
        KafkaProducer(wedged, "tx-1"), consumer, timeout_s=1, stuck_after_s=0.3,
        new_producer=lambda: KafkaProducer(fresh, "tx-1"), on_replaced=replaced.append)
    consumed = [Record("in", 0, 7, b"k", b"v", 0), Record("in", 0, 8, b"k", b"v", 0)]
    try:
        assert not batch.run(lambda p: p.produce("out", b"e"), consumed)
    finally:
        wedged.release.set()
    assert batch.replaced == 1 and replaced == [batch.producer]
    assert "commit_transaction" not in wedged.names() and "abort_transaction" not in (
        wedged.names())
    assert raw_consumer.calls[-1] == ("seek", (("in", 0, 7),)), "rewound to the batch's start"
    assert batch.run(lambda p: p.produce("out", b"e"), consumed)
    assert fresh.names()[-1] == "commit_transaction"


def test_without_a_factory_a_stuck_producer_is_an_error() -> None:
    wedged = _Wedged()
    batch = TransactionalBatch(KafkaProducer(wedged, "tx-1"),
                               KafkaConsumer(FakeRawConsumer(), "group"), timeout_s=1,
                               stuck_after_s=0.2)
    try:
        with pytest.raises(ClientStuckError):
            batch.run(lambda p: None, [Record("in", 0, 1, b"k", b"v", 0)])
    finally:
        wedged.release.set()
