"""Who may issue a command: canonical signing bytes, the command digest, and verification.

A command is signed (ML-DSA-65 by default, Ed25519 allowed) over its canonical encoding, which
names the user, the idempotency key, the expected version, the type, the payload bytes as sent,
the issue time and the signing device. The user's own key signs with ``device_id == ""``; a
linked, not revoked device signs with its id.
"""

from __future__ import annotations

from collections.abc import Callable

from services.shard_writer.core.commands import Command, CommandBody, RegisterUser
from services.shard_writer.core.rejections import ForgedSignatureError
from services.shard_writer.core.user import User
from services.shard_writer.core.wire import encode_body
from streams.canonical import CanonicalWriter, sha256
from streams.keys import KeyError_, PublicKey, SigningKey


def signing_bytes(command: Command) -> bytes:
    return (
        CanonicalWriter("UserCommand")
        .text(command.user_id)
        .text(command.command_id)
        .i64(-1 if command.expected_version is None else command.expected_version)
        .text(command.command_type)
        .bytes(command.payload)
        .u64(command.issued_at_ms)
        .text(command.device_id)
        .finish()
    )


def command_digest(command: Command) -> bytes:
    """What identifies a command for idempotency: the digest of its signed content."""
    return sha256(signing_bytes(command))


def user_id_for(signing_key: str) -> str:
    """The pseudonymous user id of a public signing key: its address, in hex."""
    return PublicKey.from_text(signing_key).address_hex


def signed_command(
    key: SigningKey,
    user_id: str,
    command_id: str,
    body: CommandBody,
    *,
    issued_at_ms: int,
    expected_version: int | None = None,
    device_id: str = "",
) -> Command:
    """Build and sign a command (what the SDK, the CLI and the gateway call)."""
    unsigned = Command(user_id, command_id, expected_version, body, encode_body(body),
                       issued_at_ms, device_id)
    return Command(user_id, command_id, expected_version, body, unsigned.payload, issued_at_ms,
                   device_id, key.sign(signing_bytes(unsigned)))


def _signer_key(state: User | None, command: Command) -> str | None:
    if isinstance(command.body, RegisterUser) and state is None:
        return command.body.signing_key if command.device_id == "" else ""
    if state is None or state.deleted:
        return None  # nothing to authenticate against; decide() rejects the command
    if command.device_id == "":
        return state.signing_key
    device = state.devices.get(command.device_id)
    return "" if device is None or device.revoked else device.device_key


def authenticate(
    state: User | None, command: Command,
    verify: Callable[[PublicKey, bytes, bytes], bool] | None = None,
) -> None:
    """Raise ``ForgedSignatureError`` unless the command is signed by a key the user authorised.

    Commands for unknown or erased users pass: there is no key to check, and ``decide``
    rejects them anyway without effect.
    """
    key_text = _signer_key(state, command)
    if key_text is None:
        return
    if key_text == "":
        raise ForgedSignatureError(
            f"command {command.command_id} of user {command.user_id}: device "
            f"{command.device_id!r} is not linked or was revoked")
    try:
        key = PublicKey.from_text(key_text)
    except KeyError_ as exc:
        raise ForgedSignatureError(f"command {command.command_id}: unusable key: {exc}") from exc
    check = verify or (lambda k, message, signature: k.verify(message, signature))
    if not check(key, signing_bytes(command), command.signature):
        raise ForgedSignatureError(
            f"command {command.command_id} of user {command.user_id}: signature does not verify "
            f"with the {'user' if command.device_id == '' else 'device'} key")
