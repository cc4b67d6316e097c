"""The user command handler's answers, on the real Kafka and Cassandra: a repeated command is
answered with a position a read can wait for (read your own writes works for it too, also after
a handler restart), and a command signed for another user is answered at once with a rejection
(and dead-lettered) instead of leaving its sender waiting; the forgery does not block the genuine
command with the same idempotency key."""

from __future__ import annotations

import time
import uuid

import pytest
from cassandra.cluster import Session

from protocol.keys import Algorithm, SigningKey
from protocol.records import RecordKeyPair, seal_record
from services.shard_writer.client import UserClient
from services.shard_writer.core import (
    Command,
    ForgedSignatureError,
    PutRecord,
    RegisterUser,
    command_digest,
    signed_command,
    user_id_for,
)
from services.shard_writer.handler import CommandHandler
from services.shard_writer.projection import Projector
from streams.codec import default_codec
from streams.kafka import make_consumer, make_producer, read_to_end
from streams.settings import Settings
from tests.integration.test_users_pipeline import (  # noqa: F401 (a fixture)
    in_thread,
    queries_for,
    users_settings,
)

pytestmark = pytest.mark.integration


class Person:
    def __init__(self) -> None:
        self.key = SigningKey.generate(Algorithm.ED25519)
        self.records = RecordKeyPair.generate()
        self.user_id = user_id_for(self.key.public_key.to_text())

    def register(self) -> Command:
        return signed_command(self.key, self.user_id, str(uuid.uuid4()),
                              RegisterUser(self.key.public_key.to_text(),
                                           self.records.public_key), issued_at_ms=_now())

    def put(self, record_id: str, version: int, text: bytes, command_id: str = "") -> Command:
        """``version`` of the user's only record: the user is at that version then (1 after
        registering, one more per put), which the command is signed for."""
        envelope = seal_record(self.records, self.user_id, record_id, version, text)
        return signed_command(self.key, self.user_id, command_id or str(uuid.uuid4()),
                              PutRecord(record_id, version, envelope), issued_at_ms=_now(),
                              expected_version=version)


def _now() -> int:
    return int(time.time() * 1000)


def _as_user(command: Command, user_id: str) -> Command:
    """The command as a gateway builds it from a URL naming another user (same signature)."""
    return Command(user_id, command.command_id, command.expected_version, command.body,
                   command.payload, command.issued_at_ms, command.device_id, command.signature)


def test_a_repeated_command_is_answered_with_a_readable_position(
        users_settings: Settings, cassandra_session: Session) -> None:  # noqa: F811
    client = UserClient(users_settings)
    queries = queries_for(users_settings, cassandra_session)
    alice = Person()
    projector = Projector.create(users_settings, cassandra_session)
    threads = [in_thread(projector)]
    instance = uuid.uuid4().hex
    handler = CommandHandler.create(users_settings, instance_id=instance)
    handler_thread = in_thread(handler)
    try:
        assert client.execute(alice.register(), timeout_s=60).accepted
        put = alice.put("notes", 1, b"first")
        first = client.execute(put)
        assert first.accepted and first.offset is not None
        again = client.execute(put)
        assert again.accepted and again.version == first.version
        assert again.offset is not None and again.offset >= first.offset
        assert again.partition == first.partition
        record = queries.get_record(alice.user_id, "notes",
                                    after_offset=(again.partition, again.offset), timeout_s=30)
        assert record is not None and record.record_version == 1

        # In one batch with later commands of the user, and after a restart (a rebuild).
        later = client.execute(alice.put("notes", 2, b"second"))
        assert later.accepted and later.offset is not None
        handler.stop()
        handler_thread.join(30)
        handler.close()
        # The same instance (static member, transactional id) restarts and rebuilds its state.
        handler = CommandHandler.create(users_settings, instance_id=instance)
        handler_thread = in_thread(handler)
        repeat = client.execute(put, timeout_s=60)
        assert repeat.accepted and repeat.offset is not None and repeat.offset >= later.offset
        assert queries.get_record(alice.user_id, "notes", after_offset=(
            repeat.partition, repeat.offset), timeout_s=30) is not None
    finally:
        projector.stop()
        handler.stop()
        for thread in (*threads, handler_thread):
            thread.join(30)
        projector.close()
        handler.close()


def test_a_command_signed_for_another_user_is_rejected_at_once(
        users_settings: Settings) -> None:  # noqa: F811
    client = UserClient(users_settings)
    alice, bob = Person(), Person()
    handler = CommandHandler.create(users_settings, instance_id=uuid.uuid4().hex)
    thread = in_thread(handler)
    try:
        assert client.execute(alice.register(), timeout_s=60).accepted
        assert client.execute(bob.register()).accepted
        forged = _as_user(alice.put("notes", 1, b"for alice", command_id="c-1"), bob.user_id)
        started = time.monotonic()
        reply = client.execute(forged, timeout_s=60)
        assert not reply.accepted and reply.code == ForgedSignatureError.reply_code
        assert time.monotonic() - started < 15  # answered, not timed out
        # The forgery took no idempotency key: bob's own command with that id applies.
        genuine = client.execute(bob.put("notes", 1, b"for bob", command_id="c-1"))
        assert genuine.accepted
    finally:
        handler.stop()
        thread.join(30)
        handler.close()
    dead = [record for record in read_to_end(users_settings, users_settings.topic("dlq.users"),
                                             f"dlq-scan-{uuid.uuid4().hex}")]
    assert len(dead) == 1


def test_a_reply_written_the_instant_the_command_is_acknowledged_is_awaited(
        users_settings: Settings) -> None:  # noqa: F811
    """The fastest handler there can be: its answer is on ``users.replies`` in the moment
    between the command's acknowledgement and whatever the client does next. The client must
    still find it (it once read where replies start only after producing, and waited its whole
    timeout for an answer already given)."""
    client = UserClient(users_settings)
    command = Person().register()
    replies = users_settings.topic("users.replies")
    answer = make_producer(users_settings)
    codec = default_codec()
    flush = client.producer.flush
    reader = make_consumer(users_settings, "partitions")
    partitions = reader.partitions(replies)
    reader.close()

    def flush_then_answer(timeout_s: float) -> int:
        left = flush(timeout_s)
        for partition in partitions:  # the command's partition is among them
            answer.produce(replies, key=command.user_id.encode(), partition=partition,
                           value=codec.encode("UserCommandRejected", {
                               "user_id": command.user_id, "command_id": command.command_id,
                               "reason": "instant", "code": "conflict",
                               "rejected_at_ms": _now(),
                               "command_digest": command_digest(command)}))
        assert answer.flush(30) == 0
        return left

    client.producer.flush = flush_then_answer  # type: ignore[method-assign]
    started = time.monotonic()
    reply = client.execute(command, timeout_s=20)
    assert not reply.accepted and reply.reason == "instant" and reply.code == "conflict"
    assert time.monotonic() - started < 15
