"""Submitting user commands and awaiting their outcome (used by the CLI and the gateway).

``submit`` produces a signed command to ``users.commands`` (key = user id) and returns the
partition it landed on; ``wait_reply`` reads that partition of ``users.replies`` until the
handler's answer for the command arrives. An accepted reply names the event's position, which
``UserQueries.wait_for_offset`` turns into read-your-own-writes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from services.shard_writer.core import Command, command_digest, command_to_record
from streams.codec import CodecError, default_codec
from streams.errors import DeliveryError
from streams.kafka import Delivery, Position, make_consumer, make_producer
from streams.settings import Settings


class ReplyTimeoutError(TimeoutError):
    """No answer for the command arrived within the timeout."""


@dataclass(frozen=True, slots=True)
class Reply:
    user_id: str
    command_id: str
    accepted: bool
    version: int | None  # the event's per-user version when accepted
    partition: int
    offset: int | None  # the event's users.events offset when accepted (None: unknown)
    code: str | None = None  # rejection code
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Submitted:
    command: Command
    partition: int
    replies_from: int  # replies offset to start reading at


class UserClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.codec = default_codec()
        self.producer = make_producer(settings)
        self.commands_topic = settings.topic("users.commands")
        self.replies_topic = settings.topic("users.replies")

    def submit(self, command: Command, *, timeout_s: float = 30.0) -> Submitted:
        """Produce the command; where its reply will be. The replies' ends are read *before*
        the command is produced: a handler may answer within milliseconds of the command's
        acknowledgement, before a position read afterwards, which would start past the reply
        and wait for it in vain. (Which partition the command lands on is only known after,
        so the ends of all of them are read, in one request.)"""
        reader = make_consumer(self.settings, f"{self.replies_topic}.client")
        try:
            ends = reader.end_offsets(self.replies_topic, timeout_s)
        finally:
            reader.close()
        delivered: list[Delivery] = []
        self.producer.produce(
            self.commands_topic, key=command.user_id.encode(),
            value=self.codec.encode("UserCommandIssued", command_to_record(command)),
            on_delivery=delivered.append)
        self.producer.flush(timeout_s)
        if not delivered or delivered[0].error is not None:
            raise DeliveryError(f"command {command.command_id} not acknowledged: "
                                f"{delivered[0].error if delivered else 'timeout'}")
        partition = delivered[0].partition
        return Submitted(command, partition, ends.get(partition, 0))

    def wait_reply(self, submitted: Submitted, *, timeout_s: float = 30.0) -> Reply:
        command = submitted.command
        digest = command_digest(command)
        reader = make_consumer(self.settings, f"{self.replies_topic}.client")
        deadline = time.monotonic() + timeout_s
        try:
            reader.assign([Position(self.replies_topic, submitted.partition,
                                    submitted.replies_from)])
            while time.monotonic() < deadline:
                message = reader.poll(0.2)
                if message is None:
                    continue
                try:
                    decoded = self.codec.decode(message.value)
                except CodecError:
                    continue
                r = decoded.record
                if r["user_id"] != command.user_id or r["command_id"] != command.command_id:
                    continue
                if r.get("command_digest") not in (None, digest):
                    continue  # another command under the same key (a forgery): not ours
                if decoded.schema == "UserCommandAccepted":
                    return Reply(r["user_id"], r["command_id"], True, r["version"],
                                 r["partition"], None if r["offset"] < 0 else r["offset"])
                return Reply(r["user_id"], r["command_id"], False, None, submitted.partition,
                             None, r["code"], r["reason"])
        finally:
            reader.close()
        raise ReplyTimeoutError(f"no reply to command {command.command_id} of user "
                                f"{command.user_id} within {timeout_s}s (is the handler up?)")

    def execute(self, command: Command, *, timeout_s: float = 30.0) -> Reply:
        return self.wait_reply(self.submit(command, timeout_s=timeout_s), timeout_s=timeout_s)
