"""``UserStore``: private user records over the gateway's records API.

Records are encrypted here, on the client, before they leave the process (``protocol.records``:
AES-256-GCM under a fresh data key wrapped to the user's ML-KEM-768 key, bound to user id,
record id and record version); the gateway, Kafka and Cassandra only ever see the envelope.
Every write is a command signed with the user's signing key (ML-DSA-65 by default), so the
gateway cannot forge one either.

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
import time
import uuid
from dataclasses import dataclass
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
from sdk.errors import QuStreamError, UnavailableError, error_from_http


class RecordDecryptionError(QuStreamError):
    """A stored envelope does not open with this identity (wrong key, or tampered bytes)."""


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
                 timeout_s: float = 30.0, retries: int = 3, client: Any = None) -> None:
        """``retries``: how often a write answered with 503 is sent again (the very same
        signed command, so the handler applies it at most once)."""
        import httpx

        self.identity = identity
        self.retries = retries
        self.user_id = identity.user_id
        self._http = client or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s,
                                            headers={"X-API-Key": api_key})
        self.last_position: str | None = None

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
        return self._write("POST", f"/v1/users/{self.user_id}", body)

    def put(self, record_id: str, plaintext: bytes) -> WriteResult:
        """Encrypt ``plaintext`` and store it as the next version of ``record_id``."""
        user = self.user()
        current = next((r for r in user["records"] if r["record_id"] == record_id), None)
        version = 1 if current is None else int(current["record_version"]) + 1
        envelope = seal_record(base64.b64decode(user["encryption_key"]), self.user_id,
                               record_id, version, plaintext,
                               key_epoch=int(user.get("key_epoch") or 0))
        method = "POST" if current is None else "PUT"
        return self._write(method, self._record_path(record_id),
                           PutRecord(record_id, version, envelope))

    def delete(self, record_id: str) -> WriteResult:
        return self._write("DELETE", self._record_path(record_id), DeleteRecord(record_id))

    # ------------------------------------------------------------------ reads
    def user(self) -> dict[str, Any]:
        """The user document (public keys, version, record list), after our last write."""
        document: dict[str, Any] = self._request("GET", f"/v1/users/{self.user_id}",
                                                 params=self._after())
        return document

    def get(self, record_id: str) -> Record:
        """The decrypted record (after our last write); ``NotFoundError`` if there is none."""
        document = self._request("GET", self._record_path(record_id), params=self._after())
        version = int(document["record_version"])
        try:
            plaintext = open_record(self.identity.records, self.user_id, record_id, version,
                                    base64.b64decode(document["ciphertext"]))
        except DecryptionError as exc:
            raise RecordDecryptionError(str(exc)) from exc
        return Record(record_id, version, plaintext, int(document["updated_at_ms"]))

    # ------------------------------------------------------------------ plumbing
    def _record_path(self, record_id: str) -> str:
        return f"/v1/users/{self.user_id}/records/{record_id}"

    def _after(self) -> dict[str, str]:
        return {"min_offset": self.last_position} if self.last_position else {}

    def _write(self, method: str, path: str, body: CommandBody) -> WriteResult:
        command = signed_command(self.identity.signing, self.user_id, str(uuid.uuid4()), body,
                                 issued_at_ms=int(time.time() * 1000))
        attempt = 0
        while True:
            try:
                reply = self._request(method, path, json=command_json(command))
                break
            except UnavailableError as exc:
                # The command may already be on its way (e.g. the handler was slow to answer):
                # resending the same command id is idempotent.
                attempt += 1
                if attempt > self.retries:
                    raise
                time.sleep(min(exc.retry_after or 1.0, 5.0))
        position = reply.get("position")
        if position:
            self.last_position = str(position)
        return WriteResult(str(reply["command_id"]), int(reply["version"]), position)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise QuStreamError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            raise error_from_http(response)
        return response.json()


def command_json(command: Command) -> dict[str, Any]:
    """The JSON body the gateway's user endpoints take for a signed command."""
    return {"command_id": command.command_id, "command_type": command.command_type,
            "payload": base64.b64encode(command.payload).decode(),
            "signature": base64.b64encode(command.signature).decode(),
            "issued_at_ms": command.issued_at_ms, "expected_version": command.expected_version,
            "device_id": command.device_id, "user_id": command.user_id}
