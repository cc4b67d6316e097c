"""The command handler's snapshot of a partition (``services.shard_writer.core.snapshot``).

Properties: the codec round-trips byte for byte and is canonical (any bytes either are refused
with ``SnapshotError`` or are the one encoding of what they decode to); a state restored from a
snapshot taken at any point of a history, with the rest of the history folded onto it, is the
state of the full fold, byte for byte (nothing applied twice: ``evolve`` refuses an event that
does not follow; nothing lost: the bytes would differ); pieces reassemble only when complete and
unmixed.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from protocol.canonical import CanonicalWriter
from services.shard_writer.core import User, events, evolve
from services.shard_writer.core.partition import PartitionState, Rejection, RejectionKey
from services.shard_writer.core.snapshot import (  # the layout
    TAG,
    SnapshotError,
    SnapshotPiece,
    _write_rejection,
    _write_user,
    assemble,
    candidates,
    check,
    check_newest,
    decode,
    encode,
    split,
)

TOPIC = "qs.users.events"

# A history of one partition: ("event", offset, Event) and ("reply", offset, rejection or None)
# in the order the handler wrote them, offsets increasing with gaps (transaction markers).
Step = tuple[str, int, object]


def _body(state: User | None, kind: int, x: int) -> events.EventBody:
    if state is None:
        return events.UserRegistered(f"ed25519:key-{x}", bytes([x]) * 8)
    devices = sorted(state.devices)
    match kind:
        case 0:
            return events.RecordPut(f"r{x}", state.version, b"\x00" * x)
        case 1:
            return events.RecordDeleted(f"r{x}", state.version)
        case 2:
            return events.DeviceLinked(f"d{x}", f"ed25519:device-{x}")
        case 3 if devices:
            return events.DeviceRevoked(devices[x % len(devices)])
        case 4:
            return events.KeysRotated(f"ed25519:rotated-{x}", bytes([x]) * 4, state.key_epoch + 1)
        case 5 if x == 0:
            return events.UserDeleted()
    return events.RecordPut(f"r{x}", state.version, b"")


@st.composite
def histories(draw: st.DrawFn) -> list[Step]:
    users = draw(st.integers(1, 6))
    moves = draw(st.lists(st.tuples(st.booleans(), st.integers(0, users - 1),
                                    st.integers(0, 5), st.integers(0, 4), st.integers(1, 3)),
                          max_size=80))
    states: dict[str, User] = {}
    steps: list[Step] = []
    offset = 0
    last_command = "c-first"
    for is_event, u, kind, x, gap in moves:
        offset += gap
        user_id = f"user-{u}"
        if not is_event:
            code = ("record_version_conflict", "version_conflict")[x % 2]
            key: RejectionKey = (user_id, f"k{x}")
            rejection = (key, Rejection(bytes([x]) * 32, code, f"reason {x}")) if kind else None
            steps.append(("reply", offset, rejection))
            continue
        state = states.get(user_id)
        # an accepted command may give several events: sometimes repeat the idempotency key
        command = last_command if kind == 5 and x else f"c{len(steps)}"
        last_command = command
        event = events.Event(user_id, 1 if state is None else state.version + 1, command, offset,
                      _body(state, kind, x), hashlib.sha256(command.encode()).digest())
        states[user_id] = evolve(state, event)
        steps.append(("event", offset, event))
    return steps


def fold(steps: list[Step], state: PartitionState | None = None) -> PartitionState:
    state = state or PartitionState()
    for kind, offset, item in steps:
        if kind == "event":
            assert isinstance(item, events.Event)
            state.apply(item, offset)
        else:
            state.apply_reply(offset, item)  # type: ignore[arg-type]
    return state


@settings(max_examples=150, deadline=None)
@given(histories(), st.integers(0, 2**32 - 1))
def test_property_the_codec_round_trips_byte_for_byte(steps: list[Step], partition: int) -> None:
    state = fold(steps)
    data = encode(partition, state)
    number, again = decode(data)
    assert number == partition
    assert encode(partition, again) == data
    assert again.users == state.users and again.last_offsets == state.last_offsets
    assert list(again.rejected.items()) == list(state.rejected.items())
    assert (again.events_offset, again.replies_offset) == \
        (state.events_offset, state.replies_offset)
    for user_id, user in state.users.items():  # the idempotency window keeps its order
        assert list(again.users[user_id].commands) == list(user.commands)


@settings(max_examples=150, deadline=None)
@given(histories(), st.data())
def test_property_snapshot_plus_tail_equals_the_full_fold(steps: list[Step],
                                                          data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(steps)))
    taken = encode(3, fold(steps[:cut]))
    _, restored = decode(taken)
    assert encode(3, fold(steps[cut:], restored)) == encode(3, fold(steps))


@settings(max_examples=60, deadline=None)
@given(histories().filter(lambda steps: any(kind == "event" for kind, _, _ in steps)),
       st.data())
def test_property_folding_an_event_twice_is_refused(steps: list[Step],
                                                    data: st.DataObject) -> None:
    """What a snapshot's tail read guards against: an event already in the state."""
    events = [i for i, (kind, _, _) in enumerate(steps) if kind == "event"]
    cut = data.draw(st.sampled_from(events)) + 1
    _, restored = decode(encode(0, fold(steps[:cut])))
    with pytest.raises(ValueError):
        fold(steps[cut - 1:], restored)


def test_the_same_state_built_in_another_order_has_the_same_bytes() -> None:
    first = [events.Event(f"u{i}", 1, f"c{i}", 0, events.UserRegistered(f"k{i}", b"e"))
             for i in range(5)]
    forward, backward = PartitionState(), PartitionState()
    for offset, event in enumerate(first):
        forward.apply(event, offset)
    for offset, event in reversed(list(enumerate(first))):
        backward.users[event.user_id] = evolve(None, event)
        backward.last_offsets[event.user_id] = offset
    backward.events_offset = forward.events_offset
    assert encode(0, forward) == encode(0, backward)


@settings(max_examples=300, deadline=None)
@given(histories(), st.data())
def test_property_any_bytes_are_refused_or_the_one_encoding_of_what_they_decode_to(
        steps: list[Step], data: st.DataObject) -> None:
    encoded = bytearray(encode(1, fold(steps)))
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(("flip", "cut", "add")))
        at = data.draw(st.integers(0, max(0, len(encoded) - 1)))
        if action == "flip" and encoded:
            encoded[at] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del encoded[at:at + data.draw(st.integers(1, 8))]
        else:
            encoded[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        partition, state = decode(bytes(encoded))
    except SnapshotError:
        return
    assert encode(partition, state) == bytes(encoded)


def _state() -> PartitionState:
    state = PartitionState()
    for offset, user in ((4, "a"), (9, "b")):
        state.apply(events.Event(user, 1, "c", 0, events.UserRegistered("k", b"e")), offset)
    state.apply_reply(20, (("a", "x"), Rejection(b"d", "version_conflict", "stale")))
    return state


def test_a_state_that_claims_more_or_less_than_it_holds_is_refused() -> None:
    check(_state())
    for events_offset in (9, 11, 0):
        with pytest.raises(SnapshotError, match="one past the newest"):
            decode(encode(0, replace(_state(), events_offset=events_offset)))
    lost = _state()
    del lost.last_offsets["b"]
    with pytest.raises(SnapshotError, match="latest event offset differ"):
        check(lost)
    check(PartitionState())


def test_strict_decoding_refuses_what_encode_never_writes() -> None:
    data = encode(0, _state())
    for bad in (data[:-1], data + b"\x00", b"", b"\x00\x05hello" + data[2:]):
        with pytest.raises(SnapshotError):
            decode(bad)
    state = _state()
    for users, match in ((["b", "a"], "out of order"), (["a", "a", "b"], "out of order")):
        w = CanonicalWriter(TAG).u32(0).u64(state.events_offset).u64(state.replies_offset)
        w.sequence((state.users[u] for u in users), _write_user)
        w.sequence(sorted(state.last_offsets.items()), lambda w, i: w.text(i[0]).u64(i[1]))
        w.sequence(state.rejected.items(), _write_rejection)
        with pytest.raises(SnapshotError, match=match):
            decode(w.finish())


def test_check_newest_accepts_only_the_event_just_before_the_offset() -> None:
    state = _state()
    newest = events.Event("b", 1, "c", 0, events.UserRegistered("k", b"e"))
    check_newest(state, newest, 9)
    for event, offset in ((newest, 8), (newest, 10), (replace(newest, version=2), 9),
                          (replace(newest, user_id="a"), 9)):
        with pytest.raises(SnapshotError):
            check_newest(state, event, offset)


@settings(max_examples=60, deadline=None)
@given(histories(), st.integers(1, 64))
def test_property_pieces_reassemble_to_the_state(steps: list[Step], chunk_bytes: int) -> None:
    state = fold(steps)
    pieces = split(TOPIC, 5, state, chunk_bytes)
    assert all(len(p.body) <= chunk_bytes for p in pieces)
    found = candidates(reversed(pieces))
    assert list(found) == [5] and len(found[5]) == 1
    assert encode(5, assemble(found[5][0], events_topic=TOPIC)) == encode(5, state)


def test_an_incomplete_or_mixed_snapshot_is_no_candidate_and_the_newest_comes_first() -> None:
    old = _state()
    new = _state()
    new.apply(events.Event("c", 1, "c", 0, events.UserRegistered("k", b"e")), 30)
    old_pieces, new_pieces = split(TOPIC, 0, old, 16), split(TOPIC, 0, new, 16)
    found = candidates([*old_pieces, *new_pieces])[0]
    assert [ps[0].events_offset for ps in found] == [31, 10]
    assert candidates(new_pieces[1:]) == {}
    mixed = (old_pieces[0], *new_pieces[1:len(old_pieces)])
    assert candidates(mixed) == {}
    assert candidates([replace(p, chunks=p.chunks + 1) for p in new_pieces]) == {}


def test_assemble_refuses_a_wrong_digest_topic_or_envelope() -> None:
    pieces = split(TOPIC, 2, _state(), 1 << 20)
    assemble(pieces, events_topic=TOPIC)
    (piece,) = pieces
    bad: list[tuple[tuple[SnapshotPiece, ...], str]] = [
        ((replace(piece, body=piece.body[:-1] + b"\x01"),), "digest"),
        ((replace(piece, events_topic="other.users.events"),), "taken from"),
        ((replace(piece, partition=3),), "pieces"),
        ((replace(piece, events_offset=9),), "pieces"),
    ]
    for pieces_, match in bad:
        with pytest.raises(SnapshotError, match=match):
            assemble(pieces_, events_topic=TOPIC)


@given(st.binary(max_size=64))
def test_property_garbage_is_refused_with_a_snapshot_error(garbage: bytes) -> None:
    assume(garbage)
    with pytest.raises(SnapshotError):
        decode(garbage)
