"""The double-sign guard on disk: the validator's ``SignerState``, made durable before a
signature leaves the process.

Commit order (the edge "signature -> chain.consensus"): the core signs and returns the new
``SignerState``; ``SignGuard.persist`` writes it to ``<file>.tmp``, fsyncs it, renames it over
the guard file and fsyncs the directory; only then does the shell produce the message. A crash
at any point leaves either the old state (nothing was sent) or the new one (the message may or
may not have been sent; after a restart the core returns the stored signature for the same
sign-bytes and refuses different ones). So a restarted validator can re-send what it signed,
never sign something conflicting.

File format (JSON): ``{"format": "qustream-signer/1", "address": hex, "height": H,
"signed": [[round, step, sign_bytes hex, signature hex], ...]}``. A file of another validator
key is refused (``GuardError``), a missing file means "never signed".
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from protocol.errors import OperationError
from services.consensus.core.signer import SignerState, SignStep

FORMAT = "qustream-signer/1"


class GuardError(OperationError):
    """The guard file cannot be read, belongs to another key, or cannot be made durable."""


class SignGuard:
    def __init__(self, path: Path, address: bytes) -> None:
        self.path = path
        self.address = address
        self._last: SignerState | None = None

    def load(self) -> SignerState:
        if not self.path.exists():
            self._last = SignerState()
            return self._last
        try:
            data = json.loads(self.path.read_text())
            if data.get("format") != FORMAT:
                raise GuardError(f"{self.path}: not a {FORMAT} file")
            if bytes.fromhex(data["address"]) != self.address:
                raise GuardError(f"{self.path} belongs to validator {data['address']}")
            signed = {
                (int(r), SignStep(int(s))): (bytes.fromhex(b), bytes.fromhex(sig))
                for r, s, b, sig in data["signed"]
            }
            state = SignerState(int(data["height"]), signed)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise GuardError(f"cannot read guard file {self.path}: {exc}") from exc
        self._last = state
        return state

    def persist(self, state: SignerState) -> None:
        """Make ``state`` durable (no-op when unchanged since the last persist)."""
        if state is self._last or state == self._last:
            return
        data = {
            "format": FORMAT,
            "address": self.address.hex(),
            "height": state.height,
            "signed": [
                [r, int(s), b.hex(), sig.hex()]
                for (r, s), (b, sig) in sorted(state.signed.items())
            ],
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w") as handle:
                handle.write(json.dumps(data))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            raise GuardError(f"cannot persist guard file {self.path}: {exc}") from exc
        self._last = state
