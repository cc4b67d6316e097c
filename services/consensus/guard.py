"""The double-sign guard on disk: the validator's ``SignerState``, made durable before a
signature leaves the process.

Commit order (the edge "signature -> chain.consensus"): the core signs and returns the new
``SignerState``; ``SignGuard.persist`` writes it into the guard file and syncs it to disk; only
then does the shell produce the message. A crash at any point leaves either the old state
(nothing was sent) or the new one (the message may or may not have been sent; after a restart the
core returns the stored signature for the same sign-bytes and refuses different ones). So a
restarted validator can re-send what it signed, never sign something conflicting.

File format ``qustream-signer/2``: two slots of ``slot_size`` bytes each (the file is exactly two
slots long). A slot is ``b"QSG2" | u32 slot_size | u64 seq | u32 length | SHA-256(seq | length |
payload) | payload`` (big-endian integers), then whatever the slot held before. Each persist
writes the next ``seq`` into the slot the previous one did not use and syncs the data
(``fdatasync``: one write and one sync, no new file, no rename), so the other slot always holds
the previous state intact; a torn write fails its digest and loading takes the valid slot with
the highest ``seq``. Why not write a temporary file and rename it over the old one each time: that
costs two syncs (the file and its directory) and a file creation per signature — about 10 ms on a
loaded disk, twice per height, more than the signatures themselves at small network sizes. The
file is created (or grown, when a state outgrows its slot: many rounds in one height) that way:
temporary file, sync, rename, directory sync.

The payload is the JSON of format 1: ``{"format": "qustream-signer/1", "address": hex,
"height": H, "signed": [[round, step, sign_bytes hex, signature hex], ...]}``; a file holding
only that JSON (written by an earlier release) is read, and replaced by the slot format at the
next persist. A file of another validator key is refused (``GuardError``), so is a file with no
valid slot; a missing file means "never signed".
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, TypeVar

from protocol.errors import OperationError
from services.consensus.core.signer import SignerState, SignStep

FORMAT = "qustream-signer/1"  # the payload's format
MAGIC = b"QSG2"
_HEADER = struct.Struct(">4sIQI32s")  # magic, slot size, seq, payload length, digest
MIN_SLOT = 64 * 1024  # one round's three signatures take about 21 KB of JSON
_sync = getattr(os, "fdatasync", os.fsync)  # fdatasync where the platform has it
T = TypeVar("T")


class GuardError(OperationError):
    """The guard file cannot be read, belongs to another key, or cannot be made durable."""


def _digest(seq: int, payload: bytes) -> bytes:
    return hashlib.sha256(struct.pack(">QI", seq, len(payload)) + payload).digest()


def _slot_record(slot_size: int, seq: int, payload: bytes) -> bytes:
    return _HEADER.pack(MAGIC, slot_size, seq, len(payload), _digest(seq, payload)) + payload


def _read_slot(data: bytes, slot_size: int) -> tuple[int, bytes] | None:
    """(seq, payload) of a slot that is whole, or None."""
    if len(data) < _HEADER.size:
        return None
    magic, size, seq, length, digest = _HEADER.unpack_from(data)
    payload = data[_HEADER.size:_HEADER.size + length]
    if (magic != MAGIC or size != slot_size or len(payload) != length
            or _digest(seq, payload) != digest):
        return None
    return seq, payload


class SignGuard:
    def __init__(self, path: Path, address: bytes) -> None:
        self.path = path
        self.address = address
        self._last: SignerState | None = None
        self._seq = 0
        self._slot_size = 0  # 0: no slot file yet (missing, or format 1)
        self._fd: int | None = None

    def load(self) -> SignerState:
        if not self.path.exists():
            self._last = SignerState()
            return self._last
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise GuardError(f"cannot read guard file {self.path}: {exc}") from exc
        if data.startswith(MAGIC):
            slot_size = len(data) // 2
            slots = [_read_slot(data[i * slot_size:(i + 1) * slot_size], slot_size)
                     for i in (0, 1)]
            valid = [slot for slot in slots if slot is not None]
            if len(data) != 2 * slot_size or not valid:
                raise GuardError(f"guard file {self.path} has no valid slot")
            self._seq, payload = max(valid)
            self._slot_size = slot_size
        else:
            payload = data  # format 1: the JSON alone
        state = self._parse(payload)
        self._last = state
        return state

    def _parse(self, payload: bytes) -> SignerState:
        try:
            data = json.loads(payload)
            if data.get("format") != FORMAT:
                raise GuardError(f"{self.path}: not a {FORMAT} file")
            if bytes.fromhex(data["address"]) != self.address:
                raise GuardError(f"{self.path} belongs to validator {data['address']}")
            signed = {
                (int(r), SignStep(int(s))): (bytes.fromhex(b), bytes.fromhex(sig))
                for r, s, b, sig in data["signed"]
            }
            return SignerState(int(data["height"]), signed)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise GuardError(f"cannot read guard file {self.path}: {exc}") from exc

    def _payload(self, state: SignerState) -> bytes:
        data: dict[str, Any] = {
            "format": FORMAT,
            "address": self.address.hex(),
            "height": state.height,
            "signed": [
                [r, int(s), b.hex(), sig.hex()]
                for (r, s), (b, sig) in sorted(state.signed.items())
            ],
        }
        return json.dumps(data).encode()

    def persist(self, state: SignerState) -> None:
        """Make ``state`` durable (no-op when unchanged since the last persist)."""
        if state is self._last or state == self._last:
            return
        payload = self._payload(state)
        seq = self._seq + 1
        try:
            if _HEADER.size + len(payload) > self._slot_size:
                self._create(seq, payload)
            else:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_RDWR)
                record = _slot_record(self._slot_size, seq, payload)
                os.pwrite(self._fd, record, (seq % 2) * self._slot_size)
                _sync(self._fd)
        except OSError as exc:
            raise GuardError(f"cannot persist guard file {self.path}: {exc}") from exc
        self._seq = seq
        self._last = state

    def _create(self, seq: int, payload: bytes) -> None:
        """A new slot file holding ``payload`` in both slots, put in place atomically."""
        slot_size = MIN_SLOT
        while slot_size < 2 * (_HEADER.size + len(payload)):  # room to grow before the next
            slot_size *= 2
        slot = _slot_record(slot_size, seq, payload).ljust(slot_size, b"\0")
        self.close()
        tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            handle.write(slot + slot)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self._slot_size = slot_size

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class GuardOutbox(Generic[T]):
    """Signed messages held until the guard state that signed them is durable, the sync done
    on a thread of its own so the node goes on checking votes while the disk works.

    ``hold(state, messages)`` starts persisting ``state`` (in order: one thread, each state
    holding every signature of the ones before it) and keeps ``messages`` behind it;
    ``ready()`` gives the messages whose state is on disk, in the order they were held
    (``wait=True``: all of them, waiting for the disk). The commit order of the module doc is
    unchanged: nothing is handed out before its ``persist`` returned. A ``persist`` that
    failed raises its ``GuardError`` from ``ready`` and its messages are dropped.

    Why: a sync takes about a millisecond on this machine's disk, twice per height, time the
    node spent waiting while more than a hundred votes queued behind it (``bench.validator_scale``).
    The thread starts at the first ``hold``, after the verification workers forked."""

    def __init__(self, guard: SignGuard) -> None:
        self._guard = guard
        self._executor: ThreadPoolExecutor | None = None
        self._waiting: deque[tuple[Future[None], list[T]]] = deque()

    def hold(self, state: SignerState, messages: list[T]) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="sign-guard")
        self._waiting.append((self._executor.submit(self._guard.persist, state), messages))

    def ready(self, wait: bool = False) -> list[T]:
        released: list[T] = []
        while self._waiting and (wait or self._waiting[0][0].done()):
            future, messages = self._waiting.popleft()
            future.result()  # the GuardError of a failed persist: its messages never leave
            released.extend(messages)
        return released

    def __len__(self) -> int:
        return sum(len(messages) for _, messages in self._waiting)

    def __bool__(self) -> bool:  # asked after every record: no sum
        return bool(self._waiting)

    def close(self) -> None:
        """Wait for the persists under way (their messages are dropped) and stop the thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._waiting.clear()
