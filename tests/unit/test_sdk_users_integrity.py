"""The SDK detects what a hostile server side does to records (issue 16, items 13 and 15).

The attacker: whoever can write ``users.events`` or Cassandra, or sits on a plain-HTTP path
between the SDK and the gateway. All three end up controlling what the gateway answers, which
these tests simulate by editing the projection of an in-process gateway
(``tests.support.memory_users``: the real pure core behind the real HTTP API). The SDK must not
accept a record the user did not seal for that record and version (substitution, moving, a
forgery sealed to the public key), nor one older than what it already saw (rollback), and every
command it signs must apply at most once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.records import RecordKeyPair, seal_record
from protocol.users import UserIdentity
from sdk.errors import ConflictError
from sdk.users import RecordDecryptionError, RecordRollbackError, UserStore
from services.gateway.api import Gateway, create_app
from services.gateway.auth import ApiKeyStore
from services.gateway.chain import ChainView
from services.shard_writer.core import RecordView
from tests.support.memory_users import MemoryUsers


@dataclasses.dataclass
class Stack:
    backend: MemoryUsers
    app: object
    key: str

    def store(self, identity: UserIdentity, **kwargs: object) -> UserStore:
        http = TestClient(self.app, headers={"X-API-Key": self.key})  # type: ignore[arg-type]
        return UserStore("http://testserver", self.key, identity, client=http,
                         **kwargs)  # type: ignore[arg-type]

    def record(self, user_id: str, record_id: str) -> RecordView:
        return self.backend.views[user_id].records[record_id]

    def serve(self, user_id: str, record: RecordView) -> None:
        """The attacker writes the projection: this row is what the gateway now serves."""
        view = self.backend.views[user_id]
        records = dict(view.records)
        records[record.record_id] = record
        self.backend.views[user_id] = dataclasses.replace(view,
                                                          records=MappingProxyType(records))


def make_stack() -> Stack:
    keys = ApiKeyStore()
    key = keys.create(("users",), rate_per_s=1e6, burst=10**6)
    backend = MemoryUsers()
    gateway = Gateway(view=ChainView("qustream-test", bytes(64)), keys=keys, users=backend)
    return Stack(backend, create_app(gateway), key)


@pytest.fixture
def stack() -> Stack:
    return make_stack()


IDENTITY = UserIdentity.generate()


def registered(stack: Stack, identity: UserIdentity = IDENTITY, **kwargs: object) -> UserStore:
    store = stack.store(identity, **kwargs)
    if identity.user_id not in stack.backend.users:
        store.register()
    return store


def test_a_record_sealed_to_the_public_key_by_someone_else_is_refused(stack: Stack) -> None:
    store = registered(stack, UserIdentity.generate())
    store.put("notes", b"mine")
    genuine = stack.record(store.user_id, "notes")
    # The public key is served to anyone; with it alone, the old format let anyone seal.
    impostor = RecordKeyPair.generate()
    forged = seal_record(impostor, store.user_id, "notes", genuine.record_version, b"theirs")
    stack.serve(store.user_id, dataclasses.replace(genuine, ciphertext=forged))
    with pytest.raises(RecordDecryptionError):
        store.get("notes")


def test_a_genuine_record_moved_to_another_record_or_version_is_refused(stack: Stack) -> None:
    store = registered(stack, UserIdentity.generate())
    store.put("a", b"alpha")
    store.put("b", b"beta")
    store.put("b", b"beta 2")
    a, b = stack.record(store.user_id, "a"), stack.record(store.user_id, "b")
    stack.serve(store.user_id, dataclasses.replace(b, ciphertext=a.ciphertext))
    with pytest.raises(RecordDecryptionError):
        store.get("b")
    # claiming another version for a genuine envelope does not open either
    stack.serve(store.user_id, dataclasses.replace(b, record_version=b.record_version + 1))
    with pytest.raises(RecordDecryptionError):
        store.get("b")


def test_a_rolled_back_record_is_refused_also_after_a_restart(stack: Stack,
                                                             tmp_path: Path) -> None:
    identity = UserIdentity.generate()
    memory = tmp_path / "floors.json"
    store = registered(stack, identity, memory=memory)
    store.put("notes", b"v1")
    old = stack.record(store.user_id, "notes")
    store.put("notes", b"v2")
    assert store.get("notes").plaintext == b"v2"
    stack.serve(store.user_id, old)  # genuine, signed, sealed: only older
    with pytest.raises(RecordRollbackError):
        store.get("notes")
    with pytest.raises(RecordRollbackError):
        store.user()  # the listing says version 1 too
    # a new process of the same client, with its memory file, still knows
    with pytest.raises(RecordRollbackError):
        stack.store(identity, memory=memory).get("notes")


def test_a_deleted_record_served_again_is_refused(stack: Stack) -> None:
    store = registered(stack, UserIdentity.generate())
    store.put("notes", b"secret")
    old = stack.record(store.user_id, "notes")
    store.delete("notes")
    stack.serve(store.user_id, old)
    with pytest.raises(RecordRollbackError):
        store.get("notes")
    # and the record can be written again (its versions keep counting past the delete)
    fresh = stack.store(store.identity)
    fresh.floors = store.floors
    stack.backend.views[store.user_id] = dataclasses.replace(
        stack.backend.views[store.user_id], records=MappingProxyType({}))
    assert fresh.put("notes", b"again").version > 0
    assert fresh.get("notes").plaintext == b"again"


def test_records_are_sealed_to_the_identity_not_to_a_key_the_server_names(stack: Stack) -> None:
    store = registered(stack, UserIdentity.generate())
    attacker = RecordKeyPair.generate()
    view = stack.backend.views[store.user_id]
    stack.backend.views[store.user_id] = dataclasses.replace(
        view, encryption_key=attacker.public_key)
    store.put("notes", b"for my eyes")
    stored = stack.record(store.user_id, "notes").ciphertext
    from protocol.records import DecryptionError, open_record

    with pytest.raises(DecryptionError):
        open_record(attacker, store.user_id, "notes", 1, stored)
    assert open_record(store.identity.records, store.user_id, "notes", 1, stored) == \
        b"for my eyes"


def test_every_sdk_command_names_its_version_and_a_captured_one_never_applies_again(
        stack: Stack) -> None:
    store = registered(stack, UserIdentity.generate())
    store.put("notes", b"one")
    store.delete("notes")
    store.put("notes", b"two")
    sent = [c for c in stack.backend.commands if c.user_id == store.user_id]
    assert [c.expected_version for c in sent] == [0, 1, 2, 3]
    versions = stack.backend.users[store.user_id].version
    for command in sent:  # the attacker replays everything it captured
        reply = stack.backend.execute(command)
        assert reply.offset is None  # nothing new was applied
    assert stack.backend.users[store.user_id].version == versions
    assert store.get("notes").plaintext == b"two"


def test_a_write_that_loses_a_race_is_rebuilt_for_the_new_version(stack: Stack) -> None:
    identity = UserIdentity.generate()
    laptop, phone = registered(stack, identity), stack.store(identity)
    laptop.put("notes", b"from laptop")
    phone.put("notes", b"from phone")  # its first read is fresh: no conflict yet
    # A stale read: the phone's next write is signed for a version that has moved on.
    real_user = phone.user
    stale = real_user()
    calls = [0]

    def user_once_stale() -> dict:  # type: ignore[type-arg]
        calls[0] += 1
        return stale if calls[0] == 1 else real_user()

    laptop.put("other", b"laptop again")
    phone.user = user_once_stale  # type: ignore[method-assign]
    assert phone.put("notes", b"phone again").version == 5
    assert calls[0] == 2
    phone.conflict_retries = 0
    calls[0] = 0
    laptop.put("other", b"and again")
    stale = real_user()
    laptop.put("other", b"once more")
    with pytest.raises(ConflictError):
        phone.put("notes", b"gives up")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.booleans()), min_size=1, max_size=8),
       st.data())
def test_property_no_version_older_than_what_the_client_saw_is_accepted(
        writes: list[tuple[str, bool]], data: st.DataObject) -> None:
    stack = make_stack()
    store = registered(stack, UserIdentity.generate())
    history: dict[str, list[RecordView]] = {}
    latest: dict[str, int] = {}  # the newest version the client wrote (deletes count too)
    for record_id, delete in writes:
        if delete and record_id in stack.backend.views[store.user_id].records:
            store.delete(record_id)
            latest[record_id] = latest[record_id] + 1
        else:
            store.put(record_id, f"{record_id} {len(history.get(record_id, []))}".encode())
            row = stack.record(store.user_id, record_id)
            history.setdefault(record_id, []).append(row)
            latest[record_id] = row.record_version
    record_id = data.draw(st.sampled_from(sorted(history)))
    served = data.draw(st.sampled_from(history[record_id]))
    stack.serve(store.user_id, served)
    if served.record_version < latest[record_id]:
        with pytest.raises(RecordRollbackError):
            store.get(record_id)
    else:
        assert store.get(record_id).record_version == served.record_version
