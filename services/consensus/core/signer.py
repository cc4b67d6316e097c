"""Double-sign protection: the state a validator must persist before any signature leaves it.

Like CometBFT's privval "last sign state", generalised to every signature of the current height:
``(round, step)`` -> (sign-bytes, signature). Asking again for the same sign-bytes returns the
stored signature (so a validator that crashes and replays its inputs re-emits byte-identical
messages even with a randomised scheme such as ML-DSA); asking for different bytes at a signed
(height, round, step), or for an earlier (height, round, step) than one already signed, raises
``DoubleSignError``. The shell persists ``SignerState`` before it broadcasts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from protocol.errors import OperationError
from protocol.keys import SigningKey


class DoubleSignError(OperationError):
    """Signing would contradict or precede a signature this validator already gave."""


class SignStep(IntEnum):
    PROPOSAL = 0
    PREVOTE = 1
    PRECOMMIT = 2


@dataclass(frozen=True, slots=True)
class SignerState:
    height: int = 0
    signed: Mapping[tuple[int, SignStep], tuple[bytes, bytes]] = field(default_factory=dict)

    def sign(
        self, key: SigningKey, height: int, round: int, step: SignStep, sign_bytes: bytes
    ) -> tuple[SignerState, bytes]:
        """Signature over ``sign_bytes`` and the state to persist before using it."""
        if height < self.height:
            raise DoubleSignError(f"asked to sign height {height} after height {self.height}")
        signed = self.signed if height == self.height else {}
        slot = (round, step)
        previous = signed.get(slot)
        if previous is not None:
            if previous[0] == sign_bytes:
                return self, previous[1]
            raise DoubleSignError(
                f"already signed different bytes at {height}/{round}/{step.name.lower()}"
            )
        if signed and slot < max(signed):
            raise DoubleSignError(
                f"asked to sign {height}/{round}/{step.name.lower()} after a later step"
            )
        signature = key.sign(sign_bytes)
        updated = dict(signed)
        updated[slot] = (sign_bytes, signature)
        return SignerState(height, updated), signature
