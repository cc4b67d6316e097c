"""The command handler's per-partition state stays bounded, and a batch touches only what it
uses (issue 16, item 17).

The handler runs for real (decode, authenticate, decide, transactional batch) over recording
stand-ins of the Kafka clients (``tests/support/fake_kafka.py``); only the network is replaced.
"""

from __future__ import annotations

from confluent_kafka import KafkaError
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.keys import Algorithm, SigningKey
from services.shard_writer.core import (
    REJECTIONS,
    Command,
    ForgedSignatureError,
    PutRecord,
    RegisterUser,
    command_to_record,
    signed_command,
    user_id_for,
)
from services.shard_writer.core.partition import (
    BatchState,
    PartitionState,
    Rejection,
    remembered,
    remembered_code,
)
from services.shard_writer.core.snapshot import encode
from services.shard_writer.handler import CommandHandler
from streams.codec import default_codec
from streams.kafka import KafkaConsumer, KafkaProducer, Position, Record
from streams.settings import load_settings
from tests.support.fake_kafka import FakeRawConsumer, FakeRawProducer, kafka_exception

CODEC = default_codec()
KEY = SigningKey.from_seed(bytes(range(32)), Algorithm.ED25519)
USER = user_id_for(KEY.public_key.to_text())


def make_handler(raw: FakeRawProducer | None = None) -> CommandHandler:
    handler = CommandHandler(load_settings(), KafkaConsumer(FakeRawConsumer(), "g"),
                             KafkaProducer(raw or FakeRawProducer(), "tx"), group_id="g")
    handler.partitions[0] = PartitionState()
    return handler


def records(commands: list[Command], first_offset: int = 0) -> list[Record]:
    topic = load_settings().topic("users.commands")
    return [Record(topic, 0, first_offset + i, c.user_id.encode(),
                   CODEC.encode("UserCommandIssued", command_to_record(c)), 0)
            for i, c in enumerate(commands)]


def for_stranger(index: int) -> Command:
    """A command for a user id nobody registered, signed by whoever: nothing to check it by."""
    stranger = SigningKey.from_seed(index.to_bytes(32, "big"), Algorithm.ED25519)
    return signed_command(stranger, user_id_for(stranger.public_key.to_text()), f"x{index}",
                          PutRecord("r", 1, b"x"), issued_at_ms=1, expected_version=1)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 300), st.integers(1, 100))
def test_property_commands_for_unknown_users_leave_no_state(count: int, batch: int) -> None:
    handler = make_handler()
    commands = [for_stranger(i) for i in range(count)]
    for start in range(0, count, batch):
        assert handler.process(records(commands[start:start + batch], start)) == \
            len(commands[start:start + batch])
    state = handler.partitions[0]
    assert handler.stats.rejected["unknown_user"] == count
    assert len(state.rejected) == 0 and len(state.users) == 0


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 120), st.integers(1, 40))
def test_property_remembered_rejections_never_exceed_the_cap(count: int, cap: int) -> None:
    handler = make_handler()
    handler.partitions[0] = PartitionState(max_rejections=cap)
    register = signed_command(KEY, USER, "reg", RegisterUser(KEY.public_key.to_text(),
                                                             bytes(1184)), issued_at_ms=1)
    # authenticated, rejected: a record version that is not the next one
    bad = [signed_command(KEY, USER, f"b{i}", PutRecord("r", 7, b"x"), issued_at_ms=2,
                          expected_version=1) for i in range(count)]
    handler.process(records([register, *bad]))
    state = handler.partitions[0]
    assert handler.stats.rejected["record_version_conflict"] == count
    assert len(state.rejected) == min(count, cap)
    # the newest are kept: a resend of the last one gets its first answer again
    assert (USER, f"b{count - 1}") in state.rejected


def test_a_batch_works_on_what_it_touches_not_a_copy_of_the_partition() -> None:
    handler = make_handler()
    base = handler.partitions[0]
    users_before, rejected_before = base.users, base.rejected
    register = signed_command(KEY, USER, "reg", RegisterUser(KEY.public_key.to_text(),
                                                             bytes(1184)), issued_at_ms=1)
    handler.process(records([register]))
    # a big partition: many users, many remembered rejections
    template = base.users[USER]
    for i in range(20_000):
        base.users[f"u{i:05d}"] = template
        base.remember((f"u{i:05d}", "c"), Rejection(b"", "record_version_conflict", ""))
    original = PartitionState.batch
    spied: list[BatchState] = []

    def spy(self: PartitionState) -> BatchState:
        batch = original(self)
        spied.append(batch)
        return batch

    PartitionState.batch = spy  # type: ignore[method-assign]
    try:
        put = signed_command(KEY, USER, "p1", PutRecord("r", 1, b"x"), issued_at_ms=2,
                             expected_version=1)
        handler.process(records([put], 1))
    finally:
        PartitionState.batch = original  # type: ignore[method-assign]
    state = handler.partitions[0]
    assert state is base and state.users is users_before and state.rejected is rejected_before
    assert state.users[USER].version == 2
    assert len(spied) == 1 and len(spied[0].users) == 1 and not spied[0].rejected


def test_an_aborted_batch_changes_no_state() -> None:
    raw = FakeRawProducer()
    handler = make_handler(raw)
    register = signed_command(KEY, USER, "reg", RegisterUser(KEY.public_key.to_text(),
                                                             bytes(1184)), issued_at_ms=1)
    raw.fail("commit_transaction", kafka_exception(KafkaError.INVALID_TXN_STATE,
                                                   txn_requires_abort=True))
    assert handler.process(records([register])) == 0
    assert handler.partitions[0].users == {}
    assert handler.process(records([register])) == 1
    assert handler.partitions[0].users[USER].version == 1


def test_a_rebuild_remembers_exactly_the_rejections_the_handler_remembers() -> None:
    """A rebuild folds ``users.replies`` with ``remembered_code``; the live handler remembers
    with ``remembered``. They must agree on every code, or a restarted handler (or a snapshot
    compared with the full fold) holds other rejections than the one that answered: a
    remembered forged-signature rejection would let a forger block the genuine command."""
    for code, rejection in REJECTIONS.items():
        assert remembered_code(code) == remembered(rejection), code
    assert not remembered_code(ForgedSignatureError.reply_code)
    assert remembered_code("a_code_from_a_newer_release")


def test_a_committed_batch_moves_the_offsets_its_state_covers() -> None:
    raw = FakeRawProducer()
    handler = make_handler(raw)
    register = signed_command(KEY, USER, "reg", RegisterUser(KEY.public_key.to_text(),
                                                             bytes(1184)), issued_at_ms=1)
    stale = signed_command(KEY, USER, "bad", PutRecord("r", 7, b"x"), issued_at_ms=2,
                           expected_version=1)
    raw.fail("commit_transaction", kafka_exception(KafkaError.INVALID_TXN_STATE,
                                                   txn_requires_abort=True))
    assert handler.process(records([register, stale])) == 0
    state = handler.partitions[0]
    assert (state.events_offset, state.replies_offset) == (0, 0)  # aborted: nothing covered
    assert handler.process(records([register, stale])) == 2
    # The fake producer numbers the aborted batch's records too, as a broker does: its event
    # took offset 0, its rejection and acceptance replies 0 and 1. The committed batch's event
    # is at 1, its rejection at 2 (reported at the flush), its acceptance at 3 (reported after
    # the commit, by this fake): the state covers what was reported when it committed.
    assert state.last_offsets[USER] == 1 and state.events_offset == 2
    assert (USER, "bad") in state.rejected and state.replies_offset == 3


def test_a_due_snapshot_is_written_after_the_turn_in_a_transaction_of_its_own() -> None:
    raw = FakeRawProducer()
    handler = make_handler(raw)
    handler.snapshot_every = 1
    register = signed_command(KEY, USER, "reg", RegisterUser(KEY.public_key.to_text(),
                                                             bytes(1184)), issued_at_ms=1)
    handler.process(records([register]))
    raw.calls.clear()
    handler._after_turn()
    snapshots = handler.snapshots.topic
    assert [name for name in raw.names() if name != "poll"][:3] == \
        ["begin_transaction", "produce", "flush"]
    assert "send_offsets_to_transaction" not in raw.names()  # nothing consumed: own transaction
    assert raw.names()[-1] == "commit_transaction"
    (value,) = [args[1] for name, args in raw.calls if name == "produce" and args[0] == snapshots]
    piece = handler.snapshots.decode(Record(snapshots, 0, 0, b"0/0", value, 0))
    assert piece.body == encode(0, handler.partitions[0]) and piece.chunks == 1
    assert handler.stats.snapshots_written == 1
    raw.calls.clear()
    handler._after_turn()  # nothing new: nothing due
    handler._on_revoke([Position(handler.commands_topic, 0)])  # nothing new: nothing written
    assert "produce" not in raw.names()
