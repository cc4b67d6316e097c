"""What the command handler keeps per ``users.commands`` partition, and a batch's view of it.

``PartitionState`` holds the users' aggregates and the rejections already answered (so a resent
rejected command gets its first answer again). Both must stay bounded whatever the input:

- only rejections of *authenticated* commands are remembered: a command for an unknown or
  erased user is checked against no key (anyone can send one, for any user id), so remembering
  it would let anyone grow the state without bound, and poison a future user's idempotency
  keys. Such a command is simply decided again if it comes again (it is rejected again, with
  no effect, or, once the user exists, authenticated like any other command);
- the remembered rejections are capped (``max_rejections``, oldest forgotten first). Forgetting
  one only means a resend is decided afresh; it never lets a command apply twice (expected
  versions do that, see ``decide``).

``BatchState`` is one batch's working copy: reads fall through to the partition's state, writes
stay in the batch, so a batch costs what it touches, never a copy of the whole partition.
``commit`` folds the batch in after the Kafka transaction committed; an aborted batch is simply
dropped.

Both also carry the positions the state covers: ``events_offset`` and ``replies_offset``, the
next offsets of ``users.events`` and ``users.replies`` whose records are not folded in yet. A
snapshot (``core.snapshot``) stores them with the state, so a restart folds only what follows.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from services.shard_writer.core.events import Event
from services.shard_writer.core.rejections import (
    REJECTIONS,
    CommandRejectedError,
    ForgedSignatureError,
    IdempotencyKeyReusedError,
    UnknownUserError,
    UserDeletedError,
)
from services.shard_writer.core.user import User, evolve

MAX_REJECTIONS = 10_000  # per partition

RejectionKey = tuple[str, str]  # (user id, idempotency key)


@dataclass(frozen=True, slots=True)
class Rejection:
    digest: bytes
    code: str
    reason: str


def remembered(rejection: type[CommandRejectedError]) -> bool:
    """Whether a rejection of this type is kept to answer resends (module doc)."""
    return not issubclass(rejection, (UnknownUserError, UserDeletedError,
                                      IdempotencyKeyReusedError))


def remembered_code(code: str) -> bool:
    """``remembered`` for a code read back from ``users.replies`` (unknown codes: kept).

    A forged signature's rejection is answered but never remembered (the handler's module doc:
    remembering it would let a forger block the genuine command), so a rebuild does not
    remember it either: the rebuilt state is the state the handler had."""
    if code == ForgedSignatureError.reply_code:
        return False
    return remembered(REJECTIONS.get(code, CommandRejectedError))


@dataclass
class PartitionState:
    users: dict[str, User] = field(default_factory=dict)
    rejected: OrderedDict[RejectionKey, Rejection] = field(default_factory=OrderedDict)
    max_rejections: int = MAX_REJECTIONS
    # per user, the users.events offset of their latest event (the position a repeated
    # command's reply names)
    last_offsets: dict[str, int] = field(default_factory=dict)
    # the next offsets not folded in yet (module doc)
    events_offset: int = 0
    replies_offset: int = 0

    def remember(self, key: RejectionKey, rejection: Rejection) -> None:
        """Keep ``rejection`` (a first answer is never replaced), forgetting the oldest ones
        beyond the cap."""
        if key in self.rejected:
            return
        self.rejected[key] = rejection
        while len(self.rejected) > self.max_rejections:
            self.rejected.popitem(last=False)

    def apply(self, event: Event, offset: int) -> None:
        """Fold the event read at ``offset`` of ``users.events`` (a rebuild, in offset order);
        raises ``EventOrderError`` when it does not follow its user's state."""
        self.users[event.user_id] = evolve(self.users.get(event.user_id), event)
        self.last_offsets[event.user_id] = offset
        self.events_offset = offset + 1

    def apply_reply(self, offset: int,
                    rejection: tuple[RejectionKey, Rejection] | None = None) -> None:
        """Fold the reply read at ``offset`` of ``users.replies``: a rejection to remember, or
        a reply that only moves the position (an acceptance, a rejection not remembered)."""
        if rejection is not None:
            self.remember(*rejection)
        self.replies_offset = offset + 1

    def batch(self) -> BatchState:
        return BatchState(self)


@dataclass
class BatchState:
    base: PartitionState
    users: dict[str, User] = field(default_factory=dict)
    rejected: dict[RejectionKey, Rejection] = field(default_factory=dict)
    last_offsets: dict[str, int] = field(default_factory=dict)
    events_offset: int = 0
    replies_offset: int = 0

    def user(self, user_id: str) -> User | None:
        if user_id in self.users:
            return self.users[user_id]
        return self.base.users.get(user_id)

    def set_user(self, user: User) -> None:
        self.users[user.user_id] = user

    def rejection(self, key: RejectionKey) -> Rejection | None:
        found = self.rejected.get(key)
        return found if found is not None else self.base.rejected.get(key)

    def remember(self, key: RejectionKey, rejection: Rejection) -> None:
        self.rejected.setdefault(key, rejection)

    def last_offset(self, user_id: str) -> int:
        """The users.events offset of the user's latest event, -1 when none is known."""
        found = self.last_offsets.get(user_id)
        return found if found is not None else self.base.last_offsets.get(user_id, -1)

    def commit(self) -> None:
        """Fold this batch into the partition's state (after the transaction committed)."""
        self.base.users.update(self.users)
        self.base.last_offsets.update(self.last_offsets)
        self.base.events_offset = max(self.base.events_offset, self.events_offset)
        self.base.replies_offset = max(self.base.replies_offset, self.replies_offset)
        for key, rejection in self.rejected.items():
            self.base.remember(key, rejection)
