"""A partition's aggregates as canonical bytes: what the command handler's snapshots hold.

A snapshot is a ``PartitionState`` (the users' aggregates, the remembered rejections, each
user's latest event offset) together with the positions it covers: ``events_offset`` and
``replies_offset``, the next offsets of ``users.events`` and ``users.replies`` to read. It equals
the fold of the events before ``events_offset`` and of the rejections before ``replies_offset``,
so a handler that loads it and folds only what follows has the state of the full fold.

Why canonical bytes (``protocol.canonical``), not Avro or pickle: the snapshot is checked by its
SHA-256 before it is trusted, and one state has exactly one encoding, so two handlers that
folded the same events write the same bytes and a test compares a restored state with the full
fold byte for byte. Users, devices, records and the offsets are sorted by id; the idempotency
window and the remembered rejections keep their own order, which is part of the state (the
oldest is forgotten first). Layout, tag ``UserPartitionSnapshot``::

    u32 partition, u64 events_offset, u64 replies_offset,
    users:        seq of (text id, u64 version, text signing key, bytes encryption key,
                  u64 key epoch, bool deleted, devices: seq of (text id, text key, bool revoked),
                  records: seq of (text id, u64 record version, u64 size, bool deleted),
                  commands: seq of (text idempotency key, bytes digest, u64 version))
    last offsets: seq of (text user id, u64 users.events offset)
    rejected:     seq, oldest first, of (text user id, text idempotency key, bytes digest,
                  text code, text reason)

``decode`` is strict (wrong tag, truncation, trailing bytes, ids out of order or repeated) and
then checks what every state the handler folds satisfies (``check``): each user has a latest
offset and no offset names an unknown user, and ``events_offset`` is one past the newest of
them (zero for a partition without users): a snapshot cannot claim to cover an event it lacks.

Large states travel in pieces (``split`` / ``assemble``): a Kafka record holds about a
megabyte, a partition's users many times that. A piece names the whole state's digest and
chunk count, so pieces of two snapshots are never mixed (``candidates``).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

from protocol.canonical import (
    CanonicalDecodeError,
    CanonicalReader,
    CanonicalWriter,
)
from protocol.errors import InputError
from services.shard_writer.core.events import Event
from services.shard_writer.core.partition import MAX_REJECTIONS, PartitionState, Rejection
from services.shard_writer.core.user import DeviceState, RecordState, User

TAG = "UserPartitionSnapshot"
# Generous bounds for the strict reader: far above what a state holds (the handler's own caps
# are COMMAND_WINDOW and max_rejections), low enough that a forged count cannot make the reader
# allocate without end before the bytes run out.
MAX_ITEMS = 1 << 26


class SnapshotError(InputError):
    """A snapshot cannot be used: undecodable, incomplete, inconsistent, or not matching the log
    it claims to cover; says which and why. Dead-lettered as ``snapshot_rejected``."""

    code: ClassVar[str] = "snapshot_rejected"


# --- the state <-> canonical bytes -------------------------------------------------------------


def _write_user(w: CanonicalWriter, user: User) -> None:
    w.text(user.user_id).u64(user.version).text(user.signing_key).bytes(user.encryption_key)
    w.u64(user.key_epoch).boolean(user.deleted)
    w.sequence(sorted(user.devices.items()), _write_device)
    w.sequence(sorted(user.records.items()), _write_record)
    w.sequence(user.commands.items(), _write_command)


def _write_device(w: CanonicalWriter, item: tuple[str, DeviceState]) -> None:
    w.text(item[0]).text(item[1].device_key).boolean(item[1].revoked)


def _write_record(w: CanonicalWriter, item: tuple[str, RecordState]) -> None:
    w.text(item[0]).u64(item[1].record_version).u64(item[1].size).boolean(item[1].deleted)


def _write_command(w: CanonicalWriter, item: tuple[str, tuple[bytes, int]]) -> None:
    w.text(item[0]).bytes(item[1][0]).u64(item[1][1])


def _write_rejection(w: CanonicalWriter,
                     item: tuple[tuple[str, str], Rejection]) -> None:
    (user_id, command_id), rejection = item
    w.text(user_id).text(command_id).bytes(rejection.digest).text(rejection.code)
    w.text(rejection.reason)


def encode(partition: int, state: PartitionState) -> bytes:
    """The canonical bytes of ``state``, taken from ``users.events`` partition ``partition``."""
    w = CanonicalWriter(TAG)
    w.u32(partition).u64(state.events_offset).u64(state.replies_offset)
    w.sequence((state.users[user_id] for user_id in sorted(state.users)), _write_user)
    w.sequence(sorted(state.last_offsets.items()),
               lambda w, item: w.text(item[0]).u64(item[1]))
    w.sequence(state.rejected.items(), _write_rejection)
    return w.finish()


def _sorted_unique(keys: Iterable[Any], what: str) -> None:
    """Ids must come in strictly increasing order: one state, one encoding."""
    previous: Any = None
    for key in keys:
        if previous is not None and not previous < key:
            raise SnapshotError(f"{what} {key!r} out of order or repeated")
        previous = key


def _read_pairs(r: CanonicalReader, read_item: Any, what: str,
                *, ordered: bool = True) -> Mapping[Any, Any]:
    items = r.sequence(read_item, MAX_ITEMS)
    if ordered:
        _sorted_unique((key for key, _ in items), what)
    mapping = dict(items)
    if len(mapping) != len(items):
        raise SnapshotError(f"a {what} is repeated")
    return MappingProxyType(mapping)


def _read_user(r: CanonicalReader) -> User:
    user_id, version, signing_key = r.text(), r.u64(), r.text()
    encryption_key, key_epoch, deleted = r.bytes(), r.u64(), r.boolean()
    devices = _read_pairs(r, lambda r: (r.text(), DeviceState(r.text(), r.boolean())), "device")
    records = _read_pairs(r, lambda r: (r.text(), RecordState(r.u64(), r.u64(), r.boolean())),
                          "record")
    commands = _read_pairs(r, lambda r: (r.text(), (r.bytes(), r.u64())), "idempotency key",
                           ordered=False)
    if version < 1:
        raise SnapshotError(f"user {user_id} has version {version}")
    return User(user_id, version, signing_key, encryption_key, key_epoch, deleted, devices,
                records, commands)


def _read_rejection(r: CanonicalReader) -> tuple[tuple[str, str], Rejection]:
    key = (r.text(), r.text())
    return key, Rejection(r.bytes(), r.text(), r.text())


def decode(data: bytes, *, max_rejections: int = MAX_REJECTIONS) -> tuple[int, PartitionState]:
    """(partition, state) from ``encode``'s bytes; raises ``SnapshotError`` for anything
    ``encode`` could not have written or a state no fold produces (module doc)."""
    try:
        r = CanonicalReader(data, TAG)
        partition, events_offset, replies_offset = r.u32(), r.u64(), r.u64()
        users = r.sequence(_read_user, MAX_ITEMS)
        last_offsets = r.sequence(lambda r: (r.text(), r.u64()), MAX_ITEMS)
        rejected = r.sequence(_read_rejection, MAX_ITEMS)
        r.done()
    except CanonicalDecodeError as exc:
        raise SnapshotError(f"not a canonical {TAG}: {exc}") from exc
    _sorted_unique((user.user_id for user in users), "user")
    _sorted_unique((user_id for user_id, _ in last_offsets), "latest offset of user")
    state = PartitionState(users={user.user_id: user for user in users},
                           max_rejections=max_rejections, last_offsets=dict(last_offsets),
                           events_offset=events_offset, replies_offset=replies_offset)
    if len(OrderedDict(rejected)) != len(rejected):
        raise SnapshotError("a remembered rejection is repeated")
    for key, rejection in rejected:
        state.remember(key, rejection)
    check(state)
    return partition, state


def check(state: PartitionState) -> None:
    """Raise ``SnapshotError`` unless ``state`` is shaped like a fold of the events before its
    ``events_offset`` (module doc)."""
    if state.users.keys() != state.last_offsets.keys():
        raise SnapshotError("the users and the users with a latest event offset differ")
    newest = max(state.last_offsets.values(), default=-1)
    if state.events_offset != newest + 1:
        raise SnapshotError(f"events_offset {state.events_offset} is not one past the newest "
                            f"event the state holds ({newest})")


def check_newest(state: PartitionState, event: Event, offset: int) -> None:
    """Raise ``SnapshotError`` unless ``event``, read at ``offset`` of the log, is the newest
    event ``state`` holds: the record just before ``events_offset``. A handler reads the tail
    from there, so a snapshot of another log (a topic deleted and made again) or one that
    claims more or less than it holds is refused before anything is folded onto it."""
    newest = state.events_offset - 1
    if offset != newest:
        raise SnapshotError(f"the log has no event at offset {newest}, the newest the snapshot "
                            f"holds (the first record there is at {offset})")
    user = state.users.get(event.user_id)
    if state.last_offsets.get(event.user_id) != offset or user is None \
            or user.version != event.version:
        raise SnapshotError(
            f"the log's event at {offset} (user {event.user_id} v{event.version}) is not the "
            f"newest event of the snapshot")


# --- pieces -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotPiece:
    """One piece of a snapshot as it travels: where the state was taken, which snapshot the piece
    belongs to (``digest`` of the whole state and ``chunks``), and its part of the bytes."""

    events_topic: str
    partition: int
    events_offset: int
    replies_offset: int
    digest: bytes  # SHA-256 of the whole canonical state
    chunk: int
    chunks: int
    body: bytes

    @property
    def snapshot(self) -> tuple[int, int, bytes, int]:
        """What the pieces of one snapshot share (with the partition)."""
        return self.events_offset, self.replies_offset, self.digest, self.chunks


def split(events_topic: str, partition: int, state: PartitionState,
          chunk_bytes: int) -> tuple[SnapshotPiece, ...]:
    """``state`` encoded and cut into pieces of at most ``chunk_bytes`` (at least one)."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    data = encode(partition, state)
    digest = hashlib.sha256(data).digest()
    bodies = [data[i:i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]
    return tuple(SnapshotPiece(events_topic, partition, state.events_offset,
                               state.replies_offset, digest, index, len(bodies), body)
                 for index, body in enumerate(bodies))


def candidates(pieces: Iterable[SnapshotPiece]) -> dict[int, list[tuple[SnapshotPiece, ...]]]:
    """Per partition, the complete snapshots among ``pieces``, newest (largest events offset,
    then replies offset) first; each as its pieces in chunk order. Pieces of a snapshot that
    lacks one are left out: a half-written snapshot is never a candidate."""
    groups: dict[tuple[int, tuple[int, int, bytes, int]], dict[int, SnapshotPiece]] = {}
    for piece in pieces:
        groups.setdefault((piece.partition, piece.snapshot), {})[piece.chunk] = piece
    found: dict[int, list[tuple[SnapshotPiece, ...]]] = {}
    for (partition, (_, _, _, chunks)), by_chunk in groups.items():
        if sorted(by_chunk) == list(range(chunks)):
            found.setdefault(partition, []).append(tuple(by_chunk[i] for i in range(chunks)))
    for complete in found.values():
        complete.sort(key=lambda ps: (ps[0].events_offset, ps[0].replies_offset, ps[0].digest),
                      reverse=True)
    return found


def assemble(pieces: tuple[SnapshotPiece, ...], *, events_topic: str,
             max_rejections: int = MAX_REJECTIONS) -> PartitionState:
    """The state of one complete snapshot (``candidates``), checked: the bytes hash to the
    digest every piece names, decode strictly, and say what the pieces say (partition, offsets,
    the topic they were taken from)."""
    first = pieces[0]
    if first.events_topic != events_topic:
        raise SnapshotError(f"taken from {first.events_topic}, not {events_topic}")
    data = b"".join(piece.body for piece in pieces)
    if hashlib.sha256(data).digest() != first.digest:
        raise SnapshotError("the pieces do not hash to the snapshot's digest")
    partition, state = decode(data, max_rejections=max_rejections)
    if (partition, state.events_offset, state.replies_offset) != \
            (first.partition, first.events_offset, first.replies_offset):
        raise SnapshotError(
            f"the state says partition {partition} at {state.events_offset}/"
            f"{state.replies_offset}, its pieces {first.partition} at {first.events_offset}/"
            f"{first.replies_offset}")
    return state
