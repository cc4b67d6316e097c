"""Bad input is dead-lettered with a reason and counted; no plaintext reaches Kafka or
Cassandra; reads see their own writes."""

from __future__ import annotations

import base64
import time
import uuid

import pytest
from cassandra.cluster import Session

from protocol.keys import Algorithm, SigningKey
from protocol.records import RecordKeyPair, open_record, seal_record
from services.shard_writer.client import UserClient
from services.shard_writer.core import PutRecord, RegisterUser, signed_command, user_id_for
from services.shard_writer.handler import MAX_COMMAND_BYTES, CommandHandler
from streams.codec import default_codec
from streams.kafka import make_producer, read_to_end
from streams.settings import Settings
from tests.integration.test_users_pipeline import (
    handler_caught_up,
    in_thread,
    produce_commands,
    queries_for,
    users_settings,  # noqa: F401
    wait_until,
)
from tests.support.users_services import running_handler_and_projector
from tests.support.workload import make_workload

pytestmark = pytest.mark.integration


def read_topic(settings: Settings, name: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every committed message (key, value) of a topic, raw bytes."""
    topic = settings.topic(name)
    return [(record.key, record.value)
            for record in read_to_end(settings, topic, f"{topic}.scan")]


def test_bad_input_is_dead_lettered_counted_and_the_stream_keeps_flowing(
        users_settings: Settings) -> None:  # noqa: F811
    codec = default_codec()
    key = SigningKey.generate(Algorithm.ED25519)
    user = user_id_for(key.public_key.to_text())
    records = RecordKeyPair.generate()
    register = signed_command(key, user, "reg", RegisterUser(key.public_key.to_text(),
                                                             records.public_key),
                              issued_at_ms=1)
    forger = SigningKey.generate(Algorithm.ED25519)
    forged = signed_command(forger, user, "forged", PutRecord("r", 1, b"x" * 50),
                            issued_at_ms=2)
    huge = signed_command(key, user, "huge", PutRecord("r", 1, b"x" * MAX_COMMAND_BYTES),
                          issued_at_ms=3)
    too_large = signed_command(key, user, "too-large", PutRecord("r", 1, b"x" * 70_000),
                               issued_at_ms=4, expected_version=1)
    good = signed_command(key, user, "good", PutRecord("r", 1, b"y" * 100), issued_at_ms=5,
                          expected_version=1)
    from services.shard_writer.core import command_to_record

    unknown = command_to_record(good) | {"command_type": "DropTables", "command_id": "unk"}
    producer = make_producer(users_settings)
    topic = users_settings.topic("users.commands")

    def send(value: bytes) -> None:
        producer.produce(topic, key=user.encode(), value=value)

    send(codec.encode("UserCommandIssued", command_to_record(register)))
    send(b"\xc3\x01 definitely not avro")
    send(codec.encode("UserCommandIssued", unknown))
    send(codec.encode("UserCommandIssued", command_to_record(huge)))
    send(codec.encode("UserCommandIssued", command_to_record(forged)))
    send(codec.encode("UserCommandIssued", command_to_record(too_large)))
    send(codec.encode("UserCommandIssued", command_to_record(good)))
    send(codec.encode("UserCommandIssued", command_to_record(register)))  # a duplicate
    assert producer.flush(30) == 0

    handler = CommandHandler.create(users_settings, instance_id=uuid.uuid4().hex)
    thread = in_thread(handler)
    try:
        wait_until(handler_caught_up(users_settings), 60, "the handler")
    finally:
        handler.stop()
        thread.join(30)
        handler.close()
    assert handler.stats.accepted == 2  # register + good
    assert handler.stats.duplicates == 1
    assert dict(handler.stats.rejected) == {"record_too_large": 1}
    assert dict(handler.stats.dead_lettered) == {
        "CodecError": 1, "MalformedCommandError": 2, "ForgedSignatureError": 1}
    dead = [codec.decode(v, expected="MessageDeadLettered").record
            for _, v in read_topic(users_settings, "dlq.users")]
    reasons = sorted(d["reason"] for d in dead)
    assert len(dead) == 4
    assert any("unknown command type 'DropTables'" in r for r in reasons)
    assert any("exceeds" in r for r in reasons)
    assert any("signature does not verify" in r for r in reasons)
    assert all(d["value"] for d in dead)  # original bytes kept
    replies = [codec.decode(v) for _, v in read_topic(users_settings, "users.replies")]
    outcomes = sorted((d.schema, d.record["command_id"]) for d in replies)
    # The forged command is dead-lettered and also answered (whoever sent it learns at once).
    assert outcomes == [("UserCommandAccepted", "good"), ("UserCommandAccepted", "reg"),
                        ("UserCommandAccepted", "reg"), ("UserCommandRejected", "forged"),
                        ("UserCommandRejected", "too-large")]


def test_no_plaintext_in_kafka_or_cassandra_and_reads_see_own_writes(
        users_settings: Settings, cassandra_session: Session) -> None:  # noqa: F811
    marker = f"PLAINTEXT-{uuid.uuid4().hex}".encode()
    workload = make_workload(10, 300, seed=3, marker=marker)
    produce_commands(users_settings, workload.commands)
    with running_handler_and_projector(users_settings, cassandra_session, uuid.uuid4().hex):
        wait_until(handler_caught_up(users_settings), 60, "the handler")
        # Read your own writes through the client and the queries.
        person = next(p for p in workload.users.values()
                      if p.state is not None and not p.state.deleted)
        assert person.state is not None
        queries = queries_for(users_settings, cassandra_session)
        current = person.state.records.get("mine")
        version = 1 if current is None else current.record_version + 1
        secret = marker + b" read your own writes"
        envelope = seal_record(person.records_key, person.user_id, "mine", version, secret)
        command = signed_command(person.signing, person.user_id, "rtw",
                                 PutRecord("mine", version, envelope),
                                 issued_at_ms=int(time.time() * 1000),
                                 expected_version=person.state.version)
        reply = UserClient(users_settings).execute(command)
        assert reply.accepted and reply.offset is not None
        record = queries.get_record(person.user_id, "mine",
                                    after_offset=(reply.partition, reply.offset), timeout_s=30)
        assert record is not None and record.user_version == reply.version
        assert open_record(person.records_key, person.user_id, "mine", version,
                           record.ciphertext) == secret
    needles = [marker] + [base64.b64encode(b"\x00" * pad + marker)[4:-4] for pad in range(3)]
    scanned = 0
    for name in ("users.commands", "users.events", "users.replies", "dlq.users"):
        for key, value in read_topic(users_settings, name):
            blob = (key or b"") + (value or b"")
            scanned += len(blob)
            assert not any(n in blob for n in needles), f"plaintext found in {name}"
    assert scanned > 300 * 1000
    keyspace = users_settings.cassandra.keyspace
    for table in ("users", "records", "devices"):
        for row in cassandra_session.execute(f"SELECT * FROM {keyspace}.{table}"):
            for cell in row:
                blob = cell if isinstance(cell, bytes) else str(cell).encode()
                assert not any(n in blob for n in needles), f"plaintext in {table}"
