"""``UserStore``: private user records over the gateway's records API.

Records are encrypted here, on the client, before they leave the process (``protocol.records``:
AES-256-GCM under a fresh data key wrapped to the user's ML-KEM-768 key, bound to user id,
record id and record version, and tagged with a key derived from the user's private record
seed); the gateway, Kafka and Cassandra only ever see the envelope, and cannot make one that
opens. Every write is a command signed with the user's signing key (ML-DSA-65 by default), so
the gateway cannot forge one either.

What the client checks on reads (the server side is not trusted: whoever can write
``users.events`` or Cassandra, or sits on a plain-HTTP path, controls what the gateway answers):

- a record opens only if the user sealed it for exactly this record id and version: a
  substituted, moved or forged envelope raises ``RecordDecryptionError``;
- rollback: the store remembers, per record, the lowest version it may still be shown (the
  highest version it wrote or verified; two past a version it deleted) and, per user, the
  lowest user version (one past the version of its last accepted write). A read below either
  raises ``RecordRollbackError``. ``memory=PATH`` keeps that memory in a file across runs. A
  server can still withhold writes this client never saw (made by another device): compare
  versions between devices to catch that (fork consistency, as in SUNDR).

Writes name the user version they apply to (``expected_version``, read from the user document
just before), so a captured command can never be applied again; a write that loses a race with
another device (``version_conflict``) is rebuilt and sent again, at most
``conflict_retries`` times.

Read your own writes: every accepted write answers with its event position
(``partition:offset``); the store remembers the latest and sends it as ``?min_offset=`` on the
next reads, so a ``get`` right after a ``put`` sees the ``put`` (the gateway waits for the
projection to reach that event).

Writes answered with 503 are retried a few times with the same signed command (same
idempotency key), so a slow handler never applies a write twice.

Errors: API errors are the typed ``sdk.errors.ApiError`` subclasses (``ConflictError`` for a
rejected command, ``NotFoundError`` for a missing user or record, ``UnavailableError`` when the
projection is behind ...); an envelope that does not open raises ``RecordDecryptionError``.

Identities use the file format of ``qustream users keygen`` (JSON with the algorithm, the
signing seed and the ML-KEM record seed; keep it private, mode 0600)::

    identity = UserIdentity.generate()
    identity.save("user.json")
    with UserStore("http://127.0.0.1:8080", api_key, identity) as store:
        store.register()
        store.put("notes", b"hello")
        assert store.get("notes").plaintext == b"hello"
        store.delete("notes")
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from protocol.records import DecryptionError, open_record, seal_record
from protocol.users import (
    Command,
    CommandBody,
    DeleteRecord,
    PutRecord,
    RegisterUser,
    UserIdentity,
    signed_command,
)
from sdk.errors import ConflictError, QuStreamError, UnavailableError, error_from_http


class RecordIntegrityError(QuStreamError):
    """What the gateway served is not what this user stored (base of the two below)."""


class RecordDecryptionError(RecordIntegrityError):
    """A stored envelope does not open with this identity: wrong key, or bytes that this user
    did not seal for this record and version (substituted, moved, tampered or forged)."""


class RecordRollbackError(RecordIntegrityError):
    """The gateway served an older version than this client already wrote or verified."""

    def __init__(self, what: str, served: int, floor: int) -> None:
        super().__init__(f"{what}: version {served} served, but this client already saw "
                         f"version {floor} or later (rollback)")
        self.what = what
        self.served = served
        self.floor = floor


@dataclass(frozen=True, slots=True)
class WriteResult:
    """An accepted write: the user's new version and the event position to read after."""

    command_id: str
    version: int
    position: str | None


@dataclass(frozen=True, slots=True)
class Record:
    """A decrypted record."""

    record_id: str
    record_version: int
    plaintext: bytes
    updated_at_ms: int


class UserStore:
    """One user's encrypted records through a gateway (see module doc)."""

    def __init__(self, base_url: str, api_key: str, identity: UserIdentity, *,
                 timeout_s: float = 30.0, retries: int = 3, conflict_retries: int = 3,
                 memory: Path | str | None = None, client: Any = None) -> None:
        """``retries``: how often a write answered with 503 is sent again (the very same
        signed command, so the handler applies it at most once); ``conflict_retries``: how
        often a write that lost a version race is rebuilt; ``memory``: a file keeping the
        rollback floors across runs (module doc)."""
        import httpx

        self.identity = identity
        self.retries = retries
        self.conflict_retries = conflict_retries
        self.user_id = identity.user_id
        self._http = client or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s,
                                            headers={"X-API-Key": api_key})
        self.last_position: str | None = None
        self.floors = VersionFloors.load(memory) if memory is not None else VersionFloors()

    def __enter__(self) -> UserStore:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ writes
    def register(self) -> WriteResult:
        """Register the user (its id is the address of the signing key)."""
        body = RegisterUser(self.identity.signing.public_key.to_text(),
                            self.identity.records.public_key)
        return self._write(f"/v1/users/{self.user_id}", lambda _user: ("POST", body),
                           fresh=True)

    def put(self, record_id: str, plaintext: bytes) -> WriteResult:
        """Encrypt ``plaintext`` and store it as the next version of ``record_id``."""

        def build(user: dict[str, Any]) -> tuple[str, CommandBody]:
            current = _listed(user, record_id)
            # A record this client deleted is not listed; its versions keep counting, and the
            # floor remembers the next one.
            version = (max(1, self.floors.records.get(record_id, 0)) if current is None
                       else int(current["record_version"]) + 1)
            # Sealed with the identity's own key pair, never a key the server names.
            envelope = seal_record(self.identity.records, self.user_id, record_id, version,
                                   plaintext, key_epoch=int(user.get("key_epoch") or 0))
            return ("POST" if current is None else "PUT"), PutRecord(record_id, version,
                                                                     envelope)

        return self._write(self._record_path(record_id), build)

    def delete(self, record_id: str) -> WriteResult:
        return self._write(self._record_path(record_id),
                           lambda _user: ("DELETE", DeleteRecord(record_id)))

    # ------------------------------------------------------------------ reads
    def user(self) -> dict[str, Any]:
        """The user document (public keys, version, record list), after our last write.
        Raises ``RecordRollbackError`` when it is older than what this client saw."""
        document: dict[str, Any] = self._request("GET", f"/v1/users/{self.user_id}",
                                                 params=self._after())
        self.floors.check_user(self.user_id, int(document["version"]))
        for listed in document.get("records", ()):
            self.floors.check_record(str(listed["record_id"]), int(listed["record_version"]))
        return document

    def get(self, record_id: str) -> Record:
        """The decrypted record (after our last write); ``NotFoundError`` if there is none,
        ``RecordDecryptionError`` if this user did not seal it for this record and version,
        ``RecordRollbackError`` if it is older than a version this client saw."""
        document = self._request("GET", self._record_path(record_id), params=self._after())
        version = int(document["record_version"])
        self.floors.check_record(record_id, version)
        try:
            plaintext = open_record(self.identity.records, self.user_id, record_id, version,
                                    base64.b64decode(document["ciphertext"]))
        except DecryptionError as exc:
            raise RecordDecryptionError(str(exc)) from exc
        self.floors.raise_record(record_id, version)  # verified: authentic, so a safe floor
        return Record(record_id, version, plaintext, int(document["updated_at_ms"]))

    # ------------------------------------------------------------------ plumbing
    def _record_path(self, record_id: str) -> str:
        return f"/v1/users/{self.user_id}/records/{record_id}"

    def _after(self) -> dict[str, str]:
        return {"min_offset": self.last_position} if self.last_position else {}

    def _write(self, path: str, build: Callable[[dict[str, Any]], tuple[str, CommandBody]], *,
               fresh: bool = False) -> WriteResult:
        """Read the user, build the body, sign it for the user's version, send it; rebuild on a
        lost version race (module doc). ``fresh``: a registration (version 0, nothing read)."""
        conflicts = 0
        while True:
            user = {"version": 0} if fresh else self.user()
            expected = int(user["version"])
            method, body = build(user)
            command = signed_command(self.identity.signing, self.user_id, str(uuid.uuid4()),
                                     body, issued_at_ms=int(time.time() * 1000),
                                     expected_version=expected)
            try:
                reply = self._send(method, path, command)
            except ConflictError as exc:
                if (fresh or exc.extra.get("code") != "version_conflict"
                        or conflicts >= self.conflict_retries):
                    raise
                conflicts += 1
                time.sleep(0.05 * conflicts)
                continue
            break
        position = reply.get("position")
        if position:
            self.last_position = str(position)
        self.floors.after_write(self.user_id, expected, body, user)
        return WriteResult(str(reply["command_id"]), int(reply["version"]), position)

    def _send(self, method: str, path: str, command: Command) -> Any:
        attempt = 0
        while True:
            try:
                return self._request(method, path, json=command_json(command))
            except UnavailableError as exc:
                # The command may already be on its way (e.g. the handler was slow to answer):
                # resending the same command id is idempotent.
                attempt += 1
                if attempt > self.retries:
                    raise
                time.sleep(min(exc.retry_after or 1.0, 5.0))

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise QuStreamError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            raise error_from_http(response)
        return response.json()


def _listed(user: dict[str, Any], record_id: str) -> dict[str, Any] | None:
    for listed in user.get("records", ()):
        if listed.get("record_id") == record_id:
            return dict(listed)
    return None


@dataclass
class VersionFloors:
    """The rollback memory of one client (module doc): the lowest versions it may still be
    shown. Raised only from what the client signed itself or verified, never from what a
    server merely claims (a lying server must not be able to poison it)."""

    records: dict[str, int] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def load(cls, path: Path | str) -> VersionFloors:
        target = Path(path)
        if not target.exists():
            return cls(path=target)
        data = json.loads(target.read_text())
        return cls({str(k): int(v) for k, v in data.get("records", {}).items()},
                   {str(k): int(v) for k, v in data.get("users", {}).items()}, target)

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"records": self.records, "users": self.users}))
        os.chmod(tmp, 0o600)
        tmp.replace(self.path)

    def check_record(self, record_id: str, version: int) -> None:
        floor = self.records.get(record_id, 0)
        if version < floor:
            raise RecordRollbackError(f"record {record_id!r}", version, floor)

    def check_user(self, user_id: str, version: int) -> None:
        floor = self.users.get(user_id, 0)
        if version < floor:
            raise RecordRollbackError(f"user {user_id}", version, floor)

    def raise_record(self, record_id: str, version: int) -> None:
        if version > self.records.get(record_id, 0):
            self.records[record_id] = version
            self._save()

    def after_write(self, user_id: str, expected: int, body: CommandBody,
                    user: dict[str, Any]) -> None:
        """An accepted write signed for user version ``expected`` (against the document
        ``user``): the user is past that version; a put record is at its version; a deleted
        record's next live version is two past the one it was deleted at (the delete itself
        takes one version)."""
        self.users[user_id] = max(self.users.get(user_id, 0), expected + 1)
        if isinstance(body, PutRecord):
            self.raise_record(body.record_id, body.record_version)
        elif isinstance(body, DeleteRecord):
            listed = _listed(user, body.record_id)
            if listed is not None:
                self.raise_record(body.record_id, int(listed["record_version"]) + 2)
        self._save()


def command_json(command: Command) -> dict[str, Any]:
    """The JSON body the gateway's user endpoints take for a signed command."""
    return {"command_id": command.command_id, "command_type": command.command_type,
            "payload": base64.b64encode(command.payload).decode(),
            "signature": base64.b64encode(command.signature).decode(),
            "issued_at_ms": command.issued_at_ms, "expected_version": command.expected_version,
            "device_id": command.device_id, "user_id": command.user_id}
