"""Who may issue a command: the key a command must be signed with, and its verification.

The signed bytes are ``protocol.users.signing_bytes``. The user's own key signs with
``device_id == ""``; a linked, not revoked device signs with its id.
"""

from __future__ import annotations

from collections.abc import Callable

from protocol.keys import KeyError_, PublicKey
from protocol.users import Command, RegisterUser, signing_bytes
from services.shard_writer.core.rejections import ForgedSignatureError
from services.shard_writer.core.user import User


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
