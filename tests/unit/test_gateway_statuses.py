"""The gateway answers with the statuses docs/api.md documents: 400 for a body that is not JSON,
422 for a user command that does not belong to the URL (at once, before anything is sent), 501
without Retry-After for a part the gateway was started without, a position for a repeated
command; and it listens on loopback unless told otherwise."""

from __future__ import annotations

import functools
import json
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.users import PutRecord, RegisterUser, UserIdentity, signed_command
from sdk.testing import LocalChain, make_local_chain
from sdk.users import command_json
from services.gateway.api import Gateway, create_app
from services.shard_writer.client import Reply
from services.shard_writer.core import ForgedSignatureError, authenticate
from services.shard_writer.core.user import User
from tests.unit.test_gateway_api import assert_problem, make_gateway


@dataclass
class RecordingUsers:
    """A user backend that answers as the handler would: forged signatures are rejected with
    their code, a repeated command id is accepted again at the latest position."""

    users: dict[str, User | None] = field(default_factory=dict)
    executed: list[Any] = field(default_factory=list)
    applied: dict[tuple[str, str], int] = field(default_factory=dict)
    offset: int = 0

    def execute(self, command: Any) -> Reply:
        self.executed.append(command)
        try:
            authenticate(self.users.get(command.user_id), command)
        except ForgedSignatureError as exc:
            return Reply(command.user_id, command.command_id, False, None, 0, None,
                         ForgedSignatureError.reply_code, str(exc))
        key = (command.user_id, command.command_id)
        if key not in self.applied:
            self.offset += 1
            self.applied[key] = self.offset
        return Reply(command.user_id, command.command_id, True, 1, 3, self.offset)

    def get_user(self, user_id: str, after: Any) -> Any:
        return None

    def get_record(self, user_id: str, record_id: str, after: Any) -> Any:
        return None


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> LocalChain:
    return make_local_chain(tmp_path_factory.mktemp("gw-status"), 3)


def _http(gateway: Gateway, key: str) -> TestClient:
    return TestClient(create_app(gateway), headers={"X-API-Key": key})


def _register(identity: UserIdentity) -> Any:
    body = RegisterUser(identity.signing.public_key.to_text(), identity.records.public_key)
    return signed_command(identity.signing, identity.user_id, str(uuid.uuid4()), body,
                          issued_at_ms=int(time.time() * 1000))


def _put(identity: UserIdentity, record_id: str = "notes") -> Any:
    body = PutRecord(record_id, 1, b"ciphertext")
    return signed_command(identity.signing, identity.user_id, str(uuid.uuid4()), body,
                          issued_at_ms=int(time.time() * 1000))


@given(st.binary(min_size=1, max_size=200))
@settings(max_examples=60, deadline=None)
def test_a_body_that_is_not_json_is_400_and_bad_fields_are_422(body: bytes) -> None:
    try:
        json.loads(body)
        return  # valid JSON: covered below
    except ValueError:
        pass
    gateway, keys = _shared_gateway()
    http = _http(gateway, keys["all"])
    headers = {"content-type": "application/json"}
    user = "a" * 40
    for path in ("/v1/keys", f"/v1/users/{user}", f"/v1/users/{user}/records/r"):
        assert_problem(http.post(path, content=body, headers=headers), 400)


def test_valid_json_with_invalid_fields_is_422(chain: LocalChain) -> None:
    gateway, keys = make_gateway(chain)
    http = _http(gateway, keys["all"])
    assert_problem(http.post("/v1/keys", json={"length": "many"}), 422)
    assert_problem(http.post("/v1/users/" + "a" * 40, json=[1, 2]), 422)


def test_parts_the_gateway_was_started_without_are_501_without_retry_after(
        chain: LocalChain) -> None:
    gateway, keys = make_gateway(chain)
    gateway.key_service = None  # qustream gateway run --no-keys
    gateway.users = None  # --no-users
    http = _http(gateway, keys["all"])
    identity = UserIdentity.generate()
    for response in (
        http.post("/v1/keys", json={"x25519_public_key": "AA==", "mlkem768_public_key": "AA==",
                                    "length": 32, "payment_tx": "AA=="}),
        http.get(f"/v1/users/{identity.user_id}"),
        http.post(f"/v1/users/{identity.user_id}", json=command_json(_register(identity))),
    ):
        problem = assert_problem(response, 501)
        assert problem["type"].endswith("/not-offered")
        assert "retry-after" not in response.headers


def test_a_command_for_another_users_url_is_422_at_once(chain: LocalChain) -> None:
    gateway, keys = make_gateway(chain)
    backend = RecordingUsers()
    gateway.users = backend
    http = _http(gateway, keys["all"])
    alice, bob = UserIdentity.generate(), UserIdentity.generate()

    # The SDK's JSON names the user it signed for: refused before anything is sent.
    started = time.monotonic()
    wrong = http.post(f"/v1/users/{bob.user_id}/records/notes", json=command_json(_put(alice)))
    assert assert_problem(wrong, 422)["type"].endswith("/wrong-user")
    wrong = http.post(f"/v1/users/{bob.user_id}", json=command_json(_register(alice)))
    assert assert_problem(wrong, 422)["type"].endswith("/wrong-user")
    assert backend.executed == []

    # Without the field: a registration carries its key, so the gateway still sees it at once.
    anonymous = {k: v for k, v in command_json(_register(alice)).items() if k != "user_id"}
    wrong = http.post(f"/v1/users/{bob.user_id}", json=anonymous)
    assert assert_problem(wrong, 422)["type"].endswith("/wrong-user")
    assert backend.executed == []

    # Other commands without the field: the handler's forged-signature answer is a 422 too.
    backend.users[bob.user_id] = _registered(bob)
    anonymous = {k: v for k, v in command_json(_put(alice)).items() if k != "user_id"}
    wrong = http.post(f"/v1/users/{bob.user_id}/records/notes", json=anonymous)
    assert assert_problem(wrong, 422)["type"].endswith("/signature-invalid")
    assert time.monotonic() - started < 5

    right = http.post(f"/v1/users/{bob.user_id}/records/notes", json=command_json(_put(bob)))
    assert right.status_code == 202, right.text


def test_a_repeated_command_answers_with_a_position(chain: LocalChain) -> None:
    gateway, keys = make_gateway(chain)
    backend = RecordingUsers()
    gateway.users = backend
    http = _http(gateway, keys["all"])
    alice = UserIdentity.generate()
    backend.users[alice.user_id] = _registered(alice)
    body = command_json(_put(alice))
    first = http.post(f"/v1/users/{alice.user_id}/records/notes", json=body)
    again = http.post(f"/v1/users/{alice.user_id}/records/notes", json=body)
    assert first.status_code == again.status_code == 202
    assert again.json()["position"] is not None
    assert again.json()["position"] == first.json()["position"]


def test_the_gateway_listens_on_loopback_unless_told() -> None:
    import inspect

    from services.gateway.cli import run

    host = inspect.signature(run).parameters["host"].default
    assert host.default == "127.0.0.1"


def _registered(identity: UserIdentity) -> User:
    """The handler's state for a registered user (only what authentication reads)."""
    from services.shard_writer.core import evolve
    from services.shard_writer.core.decide import Accepted, decide

    decision = decide(None, _register(identity), int(time.time() * 1000))
    assert isinstance(decision, Accepted)
    user = None
    for event in decision.events:
        user = evolve(user, event)
    assert user is not None
    return user


@functools.cache
def _shared_gateway() -> tuple[Gateway, dict[str, str]]:
    """One gateway for every hypothesis example (examples get no function fixtures)."""
    folder = Path(tempfile.mkdtemp(prefix="gw-status-"))
    return make_gateway(make_local_chain(folder, 2))
