"""A signed user command applies at most once, whatever its age (issue 16, item 13).

The rule (``services.shard_writer.core.decide``): every command but ``RegisterUser`` names the
user version it applies to, and versions only grow. So replaying a captured command, however
long after and however many commands later (far beyond the idempotency window), never applies
it again. Pure: ``decide``/``evolve`` only.
"""

from __future__ import annotations

from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.keys import Algorithm, SigningKey
from protocol.users import CommandBody
from services.shard_writer.core import (
    COMMAND_WINDOW,
    Accepted,
    Command,
    DeleteRecord,
    DeleteUser,
    ExpectedVersionRequiredError,
    ForgedSignatureError,
    LinkDevice,
    PutRecord,
    RegisterUser,
    RevokeDevice,
    RotateKeys,
    User,
    authenticate,
    command_digest,
    decide,
    evolve,
    signed_command,
)
from tests.unit.test_users_core import ENC, KEY, USER

STOLEN = SigningKey.from_seed(bytes(range(5, 37)), Algorithm.ED25519)


def signed(body: CommandBody, command_id: str, expected: int | None) -> Command:
    return signed_command(KEY, USER, command_id, body, issued_at_ms=1_000,
                          expected_version=expected)


def step(state: User | None, command: Command) -> tuple[User | None, bool]:
    """Decide and apply; whether the command produced events."""
    decision = decide(state, command, 5_000)
    if not isinstance(decision, Accepted):
        return state, False
    for event in decision.events:
        state = evolve(state, event)
    return state, True


def registered() -> User:
    state, applied = step(None, signed(RegisterUser(KEY.public_key.to_text(), ENC), "reg", 0))
    assert applied and state is not None
    return state


def test_a_command_that_names_no_version_is_refused() -> None:
    user = registered()
    for body in (PutRecord("r", 1, b"x"), DeleteRecord("r"), LinkDevice("d", "ed25519:AA"),
                 RevokeDevice("d"), RotateKeys(KEY.public_key.to_text(), ENC), DeleteUser()):
        assert isinstance(decide(user, signed(body, "c", None), 1), ExpectedVersionRequiredError)
    # a registration may leave it out: a user id is registered once, ever
    assert isinstance(decide(None, signed(RegisterUser(KEY.public_key.to_text(), ENC), "r",
                                          None), 1), Accepted)


def filler(state: User, count: int, start: int = 0) -> User:
    for i in range(count):
        current = state.records.get("filler")
        version = 1 if current is None else current.record_version + 1
        state, applied = step(state, signed(PutRecord("filler", version, b"x"), f"f{start + i}",
                                            state.version))
        assert applied and state is not None
    return state


def link_once(user: User, body: CommandBody, command_id: str
              ) -> tuple[User, list[Command]]:
    """Apply ``body`` as an attacker may later find it on the wire: signed with no version (how
    the SDK used to sign) and signed for the current version. Returns both captures."""
    blind = signed(body, command_id + "-blind", None)
    exact = signed(body, command_id, user.version)
    after, applied = step(user, blind)
    if not applied:
        after, applied = step(user, exact)
    assert applied and after is not None
    return after, [blind, exact]


@pytest.mark.parametrize("later", [0, COMMAND_WINDOW + 10])
def test_an_old_link_device_does_not_relink_a_revoked_stolen_device(later: int) -> None:
    user, captured = link_once(registered(), LinkDevice("phone", STOLEN.public_key.to_text()),
                               "link")
    user, applied = step(user, signed(RevokeDevice("phone"), "revoke", user.version))
    assert applied and user is not None
    user = filler(user, later)
    for old in captured:
        after, applied = step(user, old)
        assert not applied and after is user
    assert user.devices["phone"].revoked
    # and the thief cannot sign for the user with the revoked device either
    from_thief = signed_command(STOLEN, USER, "t", PutRecord("x", 1, b"x"), issued_at_ms=1,
                                expected_version=user.version, device_id="phone")
    with pytest.raises(ForgedSignatureError):
        authenticate(user, from_thief)


@pytest.mark.parametrize("later", [0, COMMAND_WINDOW + 1])
def test_an_old_delete_does_not_delete_a_recreated_record(later: int) -> None:
    user = registered()
    user, _ = step(user, signed(PutRecord("notes", 1, b"v1"), "p1", user.version))
    assert user is not None
    user, captured = link_once(user, DeleteRecord("notes"), "del")
    user, applied = step(user, signed(PutRecord("notes", 3, b"v3"), "p3", user.version))
    assert applied and user is not None
    user = filler(user, later)
    for old in captured:
        after, applied = step(user, old)
        assert not applied and not after.records["notes"].deleted  # type: ignore[union-attr]


# --- property: at most once, for any history and any replay schedule ---------------------------

RECORDS = st.sampled_from(["a", "b"])
BODIES = st.one_of(
    st.builds(PutRecord, RECORDS, st.integers(1, 4), st.just(b"ct")),
    st.builds(DeleteRecord, RECORDS),
    st.builds(LinkDevice, st.sampled_from(["d1", "d2"]), st.just(STOLEN.public_key.to_text())),
    st.builds(RevokeDevice, st.sampled_from(["d1", "d2"])),
    st.just(RotateKeys(KEY.public_key.to_text(), ENC)),
    st.just(DeleteUser()),
)
# an action: a fresh command (body, expected version: current / absent / stale / arbitrary), or
# the replay of the n-th command issued so far
FRESH = st.tuples(st.just("fresh"), BODIES,
                  st.sampled_from(["now", "now", "now", "none", "stale", "any"]),
                  st.integers(0, 12))
REPLAY = st.tuples(st.just("replay"), st.integers(0, 200))
ACTIONS = st.lists(st.one_of(FRESH, FRESH, REPLAY), min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(ACTIONS, st.integers(1, 4))
def test_property_every_signed_command_applies_at_most_once(actions: list, window: int) -> None:
    # A tiny idempotency window, so most replays come long after their key was forgotten.
    with mock.patch("services.shard_writer.core.user.COMMAND_WINDOW", window):
        state: User | None = registered()
        issued: list[Command] = []
        applied: dict[bytes, int] = {}
        for number, action in enumerate(actions):
            if action[0] == "fresh":
                _, body, mode, value = action
                version = state.version if state is not None else 0
                expected = {"now": version, "none": None, "stale": max(0, version - 1),
                            "any": value}[mode]
                command = signed(body, f"c{number}", expected)
                issued.append(command)
            elif issued:
                command = issued[action[1] % len(issued)]
            else:
                continue
            before = state
            state, did = step(state, command)
            if did:
                digest = command_digest(command)
                applied[digest] = applied.get(digest, 0) + 1
                assert applied[digest] == 1, "a signed command applied twice"
                assert command.expected_version == (before.version if before else None)
        assert all(count == 1 for count in applied.values())
