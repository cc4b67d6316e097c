"""User records over HTTP: writes are signed commands to Kafka, reads come from Cassandra.

The client signs every command (``sdk.users.UserStore`` does it); the gateway checks that the
command matches the URL (user id, record id, command type: 422 at once otherwise), forwards it
to ``users.commands`` and waits for the handler's reply: 202 with the event position
(``partition:offset``) when accepted (for a repeated command, a position at or after its
event), 409 with the handler's reason when rejected, 422 when its signature does not verify
with the user's keys (typically: signed for another user's URL). Reads take
``?min_offset=P:O`` and wait until the projection has applied that event (read your own
writes). Nodes only ever see ciphertext.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Protocol

from services.gateway.problems import Problem, unavailable


class UserBackend(Protocol):
    def execute(self, command: Any) -> Any: ...
    def get_user(self, user_id: str, after: tuple[int, int] | None) -> Any: ...
    def get_record(self, user_id: str, record_id: str, after: tuple[int, int] | None) -> Any: ...


def parse_min_offset(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    partition, sep, offset = value.partition(":")
    if not sep or not partition.isdigit() or not offset.isdigit():
        raise Problem(400, "invalid-min-offset", "min_offset reads <partition>:<offset>, as "
                                                 "returned in a write's position")
    return int(partition), int(offset)


@dataclass(frozen=True, slots=True)
class SignedCommandIn:
    command_id: str
    command_type: str
    payload: str  # base64 of the body bytes as signed
    signature: str  # base64
    issued_at_ms: int
    expected_version: int | None
    device_id: str
    user_id: str | None = None  # the user the client signed for (the SDK sends it)


def build_command(user_id: str, data: SignedCommandIn, *, expect_type: tuple[str, ...],
                  record_id: str | None = None) -> Any:
    """The ``Command`` of a request, checked against the URL; 400/422 problems otherwise."""
    from services.shard_writer.core import MalformedCommandError
    from services.shard_writer.core.wire import command_from_record

    if data.command_type not in expect_type:
        raise Problem(422, "wrong-command", f"this endpoint takes {' or '.join(expect_type)}, "
                                            f"not {data.command_type}")
    if data.user_id is not None and data.user_id != user_id:
        raise Problem(422, "wrong-user", f"the command was signed for user {data.user_id}, "
                                         f"not for {user_id} of the URL")
    try:
        payload = base64.b64decode(data.payload, validate=True)
        signature = base64.b64decode(data.signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Problem(422, "invalid-command", f"payload/signature must be base64: {exc}") from exc
    record = {"user_id": user_id, "command_id": data.command_id,
              "expected_version": -1 if data.expected_version is None else data.expected_version,
              "command_type": data.command_type, "payload": payload,
              "device_id": data.device_id, "signature": signature,
              "issued_at_ms": data.issued_at_ms}
    try:
        command = command_from_record(record)
    except (MalformedCommandError, KeyError, ValueError, TypeError) as exc:
        raise Problem(422, "invalid-command", str(exc)) from exc
    if record_id is not None and getattr(command.body, "record_id", None) != record_id:
        raise Problem(422, "wrong-record", "the command's record_id does not match the URL")
    _check_registration(user_id, command)
    return command


def _check_registration(user_id: str, command: Any) -> None:
    """A RegisterUser carries its key: it must be this URL's user's and sign the command."""
    from protocol.keys import KeyError_, PublicKey
    from protocol.users import RegisterUser, signing_bytes

    body = command.body
    if not isinstance(body, RegisterUser) or command.device_id:
        return
    try:
        key = PublicKey.from_text(body.signing_key)
    except KeyError_ as exc:
        raise Problem(422, "invalid-command", f"signing_key: {exc}") from exc
    if key.address_hex != user_id:
        raise Problem(422, "wrong-user", f"the registered key belongs to user "
                                         f"{key.address_hex}, not to {user_id} of the URL")
    if not key.verify(signing_bytes(command), command.signature):
        raise Problem(422, "signature-invalid", "the signature does not verify with the "
                                                "registered key")


def reply_document(reply: Any) -> dict[str, Any]:
    from services.shard_writer.core import ForgedSignatureError

    if not reply.accepted and reply.code == ForgedSignatureError.reply_code:
        raise Problem(422, "signature-invalid", f"the command's signature does not verify "
                                                f"with user {reply.user_id}'s keys (was it "
                                                "signed for another user's URL?)",
                      code=reply.code, command_id=reply.command_id)
    if not reply.accepted:
        raise Problem(409, "command-rejected", f"{reply.code}: {reply.reason}",
                      code=reply.code, command_id=reply.command_id)
    position = None if reply.offset is None else f"{reply.partition}:{reply.offset}"
    return {"accepted": True, "user_id": reply.user_id, "command_id": reply.command_id,
            "version": reply.version, "position": position, "partition": reply.partition,
            "offset": reply.offset}


def record_document(view: Any) -> dict[str, Any]:
    return {"user_id": view.user_id, "record_id": view.record_id,
            "record_version": view.record_version, "user_version": view.user_version,
            "ciphertext": base64.b64encode(view.ciphertext).decode(), "size": view.size,
            "updated_at_ms": view.updated_at_ms}


def user_document(view: Any) -> dict[str, Any]:
    return {"user_id": view.user_id, "version": view.version, "signing_key": view.signing_key,
            "encryption_key": base64.b64encode(view.encryption_key).decode(),
            "key_epoch": view.key_epoch, "deleted": view.deleted,
            "records": [{"record_id": r.record_id, "record_version": r.record_version,
                         "size": r.size} for r in view.records.values()]}


class KafkaCassandraUsers:
    """The real backend: ``UserClient`` for commands, ``UserQueries`` for reads.

    The projection's tables are made by the shard writer, which may start after the gateway:
    until they exist, reads answer 503 and ``ready()`` is False (``/readyz`` says not ready)
    instead of the gateway failing to start."""

    def __init__(self, settings: Any, *, timeout_s: float = 15.0) -> None:
        from services.shard_writer.client import UserClient
        from services.shard_writer.store import connect

        self.cluster, self._session = connect(settings)
        self._settings = settings
        self._queries: Any = None
        self.client = UserClient(settings)
        self.timeout_s = timeout_s

    @property
    def queries(self) -> Any:
        """The prepared projection queries; 503 while the projection's tables are missing."""
        if self._queries is None:
            from services.shard_writer.queries import UserQueries
            from services.shard_writer.store import StoreError

            try:
                self._queries = UserQueries(self._session, self._settings.cassandra.keyspace,
                                            self._settings.topic("users.events"))
            except StoreError as exc:
                raise unavailable("users-not-ready", "the user projection is not set up yet "
                                  f"(the shard writer creates its tables): {exc}", 5) from exc
        return self._queries

    def ready(self) -> bool:
        try:
            self.queries  # noqa: B018  (prepares the statements once the tables exist)
        except Problem:
            return False
        return True

    def execute(self, command: Any) -> Any:
        from services.shard_writer.client import ReplyTimeoutError
        from streams.errors import DeliveryError

        try:
            return self.client.execute(command, timeout_s=self.timeout_s)
        except (ReplyTimeoutError, DeliveryError) as exc:
            raise unavailable("users-unavailable", str(exc), 5) from exc

    def get_user(self, user_id: str, after: tuple[int, int] | None) -> Any:
        return self._read(lambda: self.queries.get_user(user_id, after_offset=after,
                                                        timeout_s=self.timeout_s))

    def get_record(self, user_id: str, record_id: str, after: tuple[int, int] | None) -> Any:
        return self._read(lambda: self.queries.get_record(user_id, record_id,
                                                          after_offset=after,
                                                          timeout_s=self.timeout_s))

    def _read(self, read: Any) -> Any:
        from services.shard_writer.queries import ProjectionTimeoutError
        from services.shard_writer.store import StoreError

        try:
            return read()
        except ProjectionTimeoutError as exc:
            raise unavailable("projection-behind", str(exc), 2) from exc
        except StoreError as exc:
            raise unavailable("users-unavailable", str(exc), 5) from exc

    def close(self) -> None:
        self.cluster.shutdown()
