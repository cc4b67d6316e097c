"""The catalogue makes every retention real and sizes dead-letter topics for what they wrap."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from protocol.users import MalformedCommandError
from streams.codec import default_codec
from streams.dlq import MAX_REASON_BYTES, DeadLetters
from streams.kafka import Record
from streams.topics import (
    BY_NAME,
    CATALOGUE,
    DAY_MS,
    DLQ_ENVELOPE_BYTES,
    FOREVER,
    SEGMENT_FRACTION,
    TopicSpec,
)


@given(st.integers(min_value=1, max_value=10 * 365 * DAY_MS))
def test_segment_time_is_a_fraction_of_any_finite_retention(retention_ms: int) -> None:
    topic = TopicSpec("t", 1, "k", "w", (), retention_ms=retention_ms)
    configs = topic.configs(1)
    segment_ms = int(configs["segment.ms"])
    assert 1 <= segment_ms <= max(1, retention_ms // SEGMENT_FRACTION)
    assert segment_ms <= DAY_MS
    assert int(configs["segment.bytes"]) >= 4 * topic.max_message_bytes


def test_every_catalogue_topic_states_its_segments() -> None:
    for topic in CATALOGUE:
        configs = topic.configs(3)
        segment_ms, segment_bytes = int(configs["segment.ms"]), int(configs["segment.bytes"])
        if topic.retention_ms != FOREVER:
            # the oldest record lives at most retention + one segment time (+ the check interval)
            assert segment_ms * SEGMENT_FRACTION <= topic.retention_ms, topic.name
        # a batch larger than a segment is refused by the broker
        assert segment_bytes >= 4 * int(configs["max.message.bytes"]), topic.name
        assert 1024 * 1024 <= segment_bytes <= 1024 ** 3, topic.name  # Kafka 4's accepted range


def test_short_retention_topics_hold_private_data_about_their_retention_only() -> None:
    private = BY_NAME["entropy.private"].configs(3)
    assert int(private["segment.ms"]) <= 3600 * 1000 // SEGMENT_FRACTION
    replies = BY_NAME["users.replies"].configs(3)
    assert int(replies["segment.ms"]) <= DAY_MS // SEGMENT_FRACTION


def test_dead_letter_topics_hold_the_largest_message_they_wrap() -> None:
    dlqs = [t for t in CATALOGUE if t.dead_letters_of]
    assert {t.name for t in dlqs} == {t.name for t in CATALOGUE if t.name.startswith("dlq.")}
    wrapped = {name for t in dlqs for name in t.dead_letters_of}
    assert wrapped == {t.name for t in CATALOGUE if not t.name.startswith("dlq.")}
    for dlq in dlqs:
        largest = max(BY_NAME[name].max_message_bytes for name in dlq.dead_letters_of)
        assert dlq.max_message_bytes >= largest + DLQ_ENVELOPE_BYTES, dlq.name


class _Capture:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None, *,
                headers: object = None) -> None:
        self.sent.append({"topic": topic, "value": value, "key": key, "headers": headers})


def test_a_dead_letter_of_a_maximal_message_fits_its_topic() -> None:
    """The whole DLQ record (value, key, headers) of the largest wrapped message, with an
    over-long reason, stays under the DLQ topic's max.message.bytes."""
    producer = _Capture()
    for dlq in (t for t in CATALOGUE if t.dead_letters_of):
        source = max((BY_NAME[n] for n in dlq.dead_letters_of), key=lambda t: t.max_message_bytes)
        key = b"k" * 256
        value = b"\x00" * (source.max_message_bytes - len(key) - 100)
        record = Record("qs." + source.name, 11, 2**40, key, value, 0)
        DeadLetters(producer, dlq.name, "consumer-" + "x" * 200).send(
            record, MalformedCommandError("bad " * 10_000))
        sent = producer.sent[-1]
        headers = sum(len(k) + len(v) for k, v in sent["headers"])
        size = len(sent["value"]) + len(key) + headers + 512  # record + batch overhead
        assert size <= dlq.max_message_bytes, dlq.name
        reason = default_codec().decode(sent["value"]).record["reason"]
        assert len(reason.encode()) <= MAX_REASON_BYTES
