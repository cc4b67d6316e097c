"""How the Kafka edge classifies transactional failures (a fake producer; the replicated soak
tests kill real brokers): retriable calls are repeated, abortable transactions redone, fatal
errors raised, and nothing is committed twice."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka import KafkaError as ClientError
from confluent_kafka import KafkaException

from streams.kafka import (
    ClientStuckError,
    KafkaError,
    raise_if_fatal,
    retrying,
    run_transaction,
    within,
)


def _error(*, retriable: bool = False, abortable: bool = False,
           fatal: bool = False) -> KafkaException:
    code = ClientError._TIMED_OUT if retriable else ClientError._STATE
    return KafkaException(ClientError(code, "injected", fatal=fatal, retriable=retriable,
                                      txn_requires_abort=abortable))


class FakeProducer:
    """Records the transaction calls; ``commit_failures`` are raised by the next commits."""

    def __init__(self, commit_failures: list[KafkaException]) -> None:
        self.commit_failures = list(commit_failures)
        self.calls: list[str] = []
        self.open: list[str] = []
        self.committed: list[list[str]] = []

    def begin_transaction(self) -> None:
        self.calls.append("begin")
        self.open = []

    def produce(self, value: str) -> None:
        self.open.append(value)

    def commit_transaction(self, timeout: float) -> None:
        self.calls.append("commit")
        if self.commit_failures:
            raise self.commit_failures.pop(0)
        self.committed.append(self.open)
        self.open = []

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append("abort")
        self.open = []


def _fill(producer: FakeProducer, records: list[str]) -> Callable[[], None]:
    def fill() -> None:
        for record in records:
            producer.produce(record)
    return fill


def test_retriable_commit_is_repeated_and_commits_once() -> None:
    producer = FakeProducer([_error(retriable=True), _error(retriable=True)])
    run_transaction(producer, _fill(producer, ["a", "b"]), what="t")  # type: ignore[arg-type]
    assert producer.calls == ["begin", "commit", "commit", "commit"]
    assert producer.committed == [["a", "b"]]


def test_abortable_failure_aborts_and_redoes_the_whole_transaction() -> None:
    producer = FakeProducer([_error(abortable=True)])
    run_transaction(producer, _fill(producer, ["a", "b"]), what="t")  # type: ignore[arg-type]
    assert producer.calls == ["begin", "commit", "abort", "begin", "commit"]
    assert producer.committed == [["a", "b"]]


@pytest.mark.parametrize("failure", [_error(fatal=True), _error()])
def test_fatal_or_unknown_failure_is_raised_as_ours(failure: KafkaException) -> None:
    producer = FakeProducer([failure])
    with pytest.raises(KafkaError, match="injected"):
        run_transaction(producer, _fill(producer, ["a"]), what="t")  # type: ignore[arg-type]
    assert producer.committed == []


def test_retrying_gives_up_at_its_deadline_with_the_client_error() -> None:
    calls = []

    def always() -> None:
        calls.append(1)
        raise _error(retriable=True)

    with pytest.raises(KafkaException):
        retrying(always, what="x", deadline_s=0.5)
    assert 2 <= len(calls) <= 6
    assert retrying(lambda: 7, what="y") == 7


class _Message:
    def __init__(self, error: ClientError | None) -> None:
        self._error = error

    def error(self) -> ClientError | None:
        return self._error


def test_a_fatal_consumer_error_ends_the_loop_others_do_not() -> None:
    fenced = ClientError(ClientError.FENCED_INSTANCE_ID, "fenced", fatal=True)
    transient = ClientError(ClientError._TRANSPORT, "down")
    raise_if_fatal([_Message(None), _Message(transient)], what="x")
    with pytest.raises(KafkaError, match="fatal consumer error"):
        raise_if_fatal([_Message(None), _Message(fenced)], what="x")


def test_within_returns_raises_or_gives_up_on_a_hanging_call() -> None:
    import threading

    assert within(lambda: 5, seconds=1, what="quick") == 5
    with pytest.raises(ZeroDivisionError):
        within(lambda: 1 // 0, seconds=1, what="failing")
    release = threading.Event()
    with pytest.raises(ClientStuckError, match="hanging did not return"):
        within(lambda: release.wait(30), seconds=0.2, what="hanging")
    release.set()
