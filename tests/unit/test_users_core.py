"""The user aggregate: decide/evolve examples and hypothesis properties (pure, no I/O)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.keys import Algorithm, SigningKey
from protocol.users import CommandBody
from services.shard_writer.core import (
    COMMAND_WINDOW,
    Accepted,
    AlreadyApplied,
    Command,
    CommandRejectedError,
    DeleteRecord,
    DeleteUser,
    DeviceAlreadyLinkedError,
    EventOrderError,
    ForgedSignatureError,
    IdempotencyKeyReusedError,
    InvalidCommandError,
    Limits,
    LinkDevice,
    MalformedCommandError,
    PutRecord,
    QuotaExceededError,
    RecordTooLargeError,
    RecordVersionConflictError,
    RegisterUser,
    RevokeDevice,
    RotateKeys,
    UnknownDeviceError,
    UnknownRecordError,
    UnknownUserError,
    User,
    UserAlreadyExistsError,
    UserDeletedError,
    VersionConflictError,
    authenticate,
    command_from_record,
    command_to_record,
    decide,
    event_from_record,
    event_to_record,
    evolve,
    fold,
    fold_view,
    signed_command,
    user_id_for,
)

KEY = SigningKey.from_seed(bytes(range(32)), Algorithm.ED25519)
DEVICE = SigningKey.from_seed(bytes(range(1, 33)), Algorithm.ED25519)
OTHER = SigningKey.from_seed(bytes(range(2, 34)), Algorithm.ED25519)
USER = user_id_for(KEY.public_key.to_text())
ENC = bytes(1184)
ENC2 = b"\x01" * 1184


def cmd(body: CommandBody, command_id: str, *, expected: int | None = None,
        key: SigningKey = KEY, device_id: str = "", user: str = USER) -> Command:
    return signed_command(key, user, command_id, body, issued_at_ms=1_000,
                          expected_version=expected, device_id=device_id)


def at(state: User, body: CommandBody, command_id: str, **kwargs: object) -> Command:
    """``body`` signed for the version ``state`` is at (what every command but RegisterUser
    must name)."""
    return cmd(body, command_id, expected=state.version, **kwargs)  # type: ignore[arg-type]


def apply(state: User | None, command: Command, now_ms: int = 5_000) -> User:
    decision = decide(state, command, now_ms)
    assert isinstance(decision, Accepted), decision
    for event in decision.events:
        state = evolve(state, event)
    assert state is not None
    return state


def registered() -> User:
    return apply(None, cmd(RegisterUser(KEY.public_key.to_text(), ENC), "c-reg"))


def test_register_derives_the_user_id_from_the_key() -> None:
    user = registered()
    assert (user.user_id, user.version, user.key_epoch, user.deleted) == (USER, 1, 0, False)
    wrong = cmd(RegisterUser(OTHER.public_key.to_text(), ENC), "c1", key=OTHER)
    assert isinstance(decide(None, wrong, 1), InvalidCommandError)
    short_key = cmd(RegisterUser(KEY.public_key.to_text(), b"x"), "c2")
    assert isinstance(decide(None, short_key, 1), InvalidCommandError)
    again = cmd(RegisterUser(KEY.public_key.to_text(), ENC), "c3")
    assert isinstance(decide(user, again, 1), UserAlreadyExistsError)


def test_unknown_user_and_version_conflict() -> None:
    put = cmd(PutRecord("r", 1, b"ct"), "c1")
    assert isinstance(decide(None, put, 1), UnknownUserError)
    user = registered()
    stale = cmd(PutRecord("r", 1, b"ct"), "c2", expected=0)
    assert isinstance(decide(user, stale, 1), VersionConflictError)
    assert apply(user, cmd(PutRecord("r", 1, b"ct"), "c3", expected=1)).version == 2


def test_repeated_idempotency_key_returns_the_first_outcome() -> None:
    user = registered()
    put = at(user, PutRecord("r", 1, b"ct"), "c1")
    after = apply(user, put)
    assert decide(after, put, 99) == AlreadyApplied("c1", 2)
    different = at(after, PutRecord("r", 2, b"other"), "c1")
    assert isinstance(decide(after, different, 99), IdempotencyKeyReusedError)


def test_record_versions_sizes_and_quotas() -> None:
    user = registered()
    assert isinstance(decide(user, at(user, PutRecord("r", 2, b"ct"), "c"), 1),
                      RecordVersionConflictError)
    user = apply(user, at(user, PutRecord("r", 1, b"abc"), "c1"))
    user = apply(user, at(user, PutRecord("r", 2, b"abcd"), "c2"))
    assert user.records["r"].record_version == 2 and user.stored_bytes == 4
    limits = Limits(max_record_bytes=10, max_records=1, max_stored_bytes=12)
    assert isinstance(decide(user, at(user, PutRecord("r", 3, b"x" * 11), "c3"), 1, limits),
                      RecordTooLargeError)
    assert isinstance(decide(user, at(user, PutRecord("s", 1, b"x"), "c4"), 1, limits),
                      QuotaExceededError)
    assert isinstance(decide(user, at(user, PutRecord("r", 3, b""), "c5"), 1),
                      InvalidCommandError)


def test_delete_record_keeps_counting_versions() -> None:
    user = registered()
    user = apply(user, at(user, PutRecord("r", 1, b"abc"), "c1"))
    assert isinstance(decide(user, at(user, DeleteRecord("nope"), "c2"), 1), UnknownRecordError)
    user = apply(user, at(user, DeleteRecord("r"), "c2"))
    assert user.records["r"].deleted and user.records["r"].record_version == 2
    assert isinstance(decide(user, at(user, DeleteRecord("r"), "c3"), 1), UnknownRecordError)
    assert isinstance(decide(user, at(user, PutRecord("r", 1, b"x"), "c4"), 1),
                      RecordVersionConflictError)
    assert apply(user, at(user, PutRecord("r", 3, b"x"), "c5")).live_records == 1


def test_delete_user_erases_and_forbids_reuse() -> None:
    user = registered()
    user = apply(user, at(user, PutRecord("r", 1, b"abc"), "c1"))
    user = apply(user, at(user, LinkDevice("phone", DEVICE.public_key.to_text()), "c2"))
    delete = at(user, DeleteUser(), "c3")
    gone = apply(user, delete)
    assert gone.deleted and not gone.records and not gone.devices and gone.signing_key == ""
    for i, body in enumerate([PutRecord("r", 2, b"x"), DeleteUser(),
                              RegisterUser(KEY.public_key.to_text(), ENC)]):
        assert isinstance(decide(gone, at(gone, body, f"d{i}"), 1), UserDeletedError)
    assert decide(gone, delete, 1) == AlreadyApplied("c3", 4)


def test_devices_sign_until_revoked() -> None:
    user = registered()
    user = apply(user, at(user, LinkDevice("phone", DEVICE.public_key.to_text()), "c1"))
    assert isinstance(decide(user, at(user, LinkDevice("phone", DEVICE.public_key.to_text()),
                                      "c2"), 1), DeviceAlreadyLinkedError)
    from_device = at(user, PutRecord("r", 1, b"x"), "c3", key=DEVICE, device_id="phone")
    authenticate(user, from_device)
    revoked = apply(user, at(user, RevokeDevice("phone"), "c4"))
    with pytest.raises(ForgedSignatureError):
        authenticate(revoked, from_device)
    assert isinstance(decide(revoked, at(revoked, RevokeDevice("phone"), "c5"), 1),
                      UnknownDeviceError)


def test_forged_and_rotated_signatures() -> None:
    user = registered()
    forged = replace(cmd(PutRecord("r", 1, b"x"), "c1"), payload=b'{"x":1}')
    with pytest.raises(ForgedSignatureError):
        authenticate(user, forged)
    by_other = cmd(PutRecord("r", 1, b"x"), "c2", key=OTHER)
    with pytest.raises(ForgedSignatureError):
        authenticate(user, by_other)
    rotated = apply(user, at(user, RotateKeys(OTHER.public_key.to_text(), ENC2), "c3"))
    assert rotated.key_epoch == 1 and rotated.user_id == USER
    authenticate(rotated, by_other)
    with pytest.raises(ForgedSignatureError):
        authenticate(rotated, cmd(PutRecord("r", 1, b"x"), "c4"))


def test_ml_dsa_signed_register() -> None:
    key = SigningKey.from_seed(bytes(32))
    user_id = user_id_for(key.public_key.to_text())
    command = signed_command(key, user_id, "c", RegisterUser(key.public_key.to_text(), ENC),
                             issued_at_ms=1)
    authenticate(None, command)
    assert isinstance(decide(None, command, 1), Accepted)


def test_wire_round_trip_and_strictness() -> None:
    command = cmd(PutRecord("r", 1, b"\x00\xff"), "c1", expected=3)
    assert command_from_record(command_to_record(command)) == command
    record = command_to_record(command)
    with pytest.raises(MalformedCommandError, match="unknown command type"):
        command_from_record({**record, "command_type": "DropTables"})
    for payload in (b"not json", b"[]", b'{"record_id":"r"}',
                    b'{"ciphertext":"!!","record_id":"r","record_version":1}',
                    b'{"ciphertext":"AA==","record_id":"r","record_version":"1"}'):
        with pytest.raises(MalformedCommandError):
            command_from_record({**record, "payload": payload})
    event = decide(registered(), replace(command, expected_version=1), 7)
    assert isinstance(event, Accepted)
    assert event_from_record(event_to_record(event.events[0])) == event.events[0]


def test_evolve_rejects_gaps_and_foreign_events() -> None:
    user = registered()
    decision = decide(user, at(user, PutRecord("r", 1, b"x"), "c1"), 1)
    assert isinstance(decision, Accepted)
    with pytest.raises(EventOrderError):
        evolve(None, decision.events[0])
    with pytest.raises(EventOrderError):
        evolve(replace(user, version=5), decision.events[0])


def test_idempotency_window_is_bounded() -> None:
    user = registered()
    for i in range(COMMAND_WINDOW + 5):
        decision = decide(user, at(user, PutRecord("r", i + 1, b"x"), f"k{i}"), 1)
        assert isinstance(decision, Accepted)
        user = evolve(user, decision.events[0])
    assert len(user.commands) == COMMAND_WINDOW and "k0" not in user.commands


# --- properties -------------------------------------------------------------------------------

RECORD_IDS = st.sampled_from(["a", "b", "c"])
BODIES = st.one_of(
    st.builds(PutRecord, RECORD_IDS, st.integers(0, 4), st.binary(min_size=0, max_size=40)),
    st.builds(DeleteRecord, RECORD_IDS),
    st.builds(LinkDevice, st.sampled_from(["d1", "d2"]),
              st.just(DEVICE.public_key.to_text())),
    st.builds(RevokeDevice, st.sampled_from(["d1", "d2"])),
    st.just(RotateKeys(KEY.public_key.to_text(), ENC2)),
    st.just(DeleteUser()),
    st.just(RegisterUser(KEY.public_key.to_text(), ENC)),
)
# The expected version: mostly the user's current one ("now"), sometimes left out or arbitrary.
EXPECTED = st.one_of(st.just("now"), st.just("now"), st.none(), st.integers(0, 30))
STEPS = st.lists(st.tuples(BODIES, st.integers(0, 30), EXPECTED), min_size=1, max_size=40)
LIMITS = Limits(max_record_bytes=32, max_records=2, max_stored_bytes=60, max_devices=1)


def version_of(state: User | None, expected: int | str | None) -> int | None:
    if expected == "now":
        return 0 if state is None else state.version
    assert not isinstance(expected, str)
    return expected


def run(steps: list[tuple[CommandBody, int, int | str | None]]
        ) -> tuple[User | None, list, list]:
    state: User | None = None
    events: list = []
    decisions: list = []
    for body, key, expected in steps:
        command = cmd(body, f"k{key}", expected=version_of(state, expected))
        decision = decide(state, command, len(events), LIMITS)
        decisions.append(decision)
        if isinstance(decision, Accepted):
            for event in decision.events:
                state = evolve(state, event)
                events.append(event)
    return state, events, decisions


@settings(max_examples=200, deadline=None)
@given(STEPS)
def test_property_versions_are_gapless_and_fold_reproduces_state(steps) -> None:
    state, events, decisions = run(steps)
    assert [e.version for e in events] == list(range(1, len(events) + 1))
    assert fold(events) == state
    assert decisions == run(steps)[2]  # deterministic
    if state is not None:
        assert state.live_records <= LIMITS.max_records
        assert state.stored_bytes <= LIMITS.max_stored_bytes


@settings(max_examples=200, deadline=None)
@given(STEPS)
def test_property_replaying_any_command_changes_nothing(steps) -> None:
    state, _events, _ = run(steps)
    for body, key, expected in steps:
        if expected == "now":
            continue  # signed for a version the replay below cannot know
        decision = decide(state, cmd(body, f"k{key}", expected=expected), 10**9, LIMITS)
        assert not isinstance(decision, Accepted) or state is None or \
            f"k{key}" not in state.commands
        if isinstance(decision, AlreadyApplied):
            assert state is not None
            assert state.commands[decision.command_id][1] == decision.version


@settings(max_examples=200, deadline=None)
@given(STEPS)
def test_property_deletion_is_final_and_view_is_empty(steps) -> None:
    state, events, _ = run([*steps, (DeleteUser(), 999, "now")])
    if state is None:
        return
    assert state.deleted
    view = fold_view(events)[USER]
    assert view.deleted and not view.records and not view.devices
    assert view.signing_key is None and view.version == state.version
    for body, key, _ in steps:
        for expected in (None, state.version, state.version - 1):
            decision = decide(state, cmd(body, f"z{key}", expected=expected), 1, LIMITS)
            assert isinstance(decision, CommandRejectedError)


@settings(max_examples=200, deadline=None)
@given(STEPS)
def test_property_view_matches_state(steps) -> None:
    state, events, _ = run(steps)
    if state is None:
        return
    view = fold_view(events)[USER]
    assert view.version == state.version
    live = {rid: r for rid, r in state.records.items() if not r.deleted}
    assert set(view.records) == set(live)
    for rid, record in view.records.items():
        assert record.record_version == live[rid].record_version
        assert record.size == live[rid].size
    assert {d: v.revoked for d, v in view.devices.items()} == \
        {d: s.revoked for d, s in state.devices.items()}
