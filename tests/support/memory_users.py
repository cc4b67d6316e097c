"""An in-process user backend for the gateway: the real pure core, no Kafka, no Cassandra.

``MemoryUsers`` implements ``services.gateway.users.UserBackend`` with the aggregate's own
``authenticate``/``decide``/``evolve`` and the read model's ``evolve_view``, so the gateway and
the SDK run unchanged over it. Its ``views`` are the "Cassandra" of these tests: an attacker who
can write the projection (or ``users.events``, or sits on the HTTP path) is simulated by editing
them directly. Positions are the per-user event count (partition 0).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from services.shard_writer import core
from services.shard_writer.client import Reply


@dataclass
class MemoryUsers:
    users: dict[str, core.User] = field(default_factory=dict)
    views: dict[str, core.UserView] = field(default_factory=dict)
    events: list[core.Event] = field(default_factory=list)
    commands: list[core.Command] = field(default_factory=list)  # every command received, in order
    lock: threading.Lock = field(default_factory=threading.Lock)

    def execute(self, command: core.Command) -> Reply:
        with self.lock:
            self.commands.append(command)
            state = self.users.get(command.user_id)
            try:
                core.authenticate(state, command)
            except core.ForgedSignatureError as exc:
                return Reply(command.user_id, command.command_id, False, None, 0, None,
                             "forged", str(exc))
            decision = core.decide(state, command, 1_000 + len(self.events))
            if isinstance(decision, core.CommandRejectedError):
                return Reply(command.user_id, command.command_id, False, None, 0, None,
                             decision.code, decision.reason)
            if isinstance(decision, core.AlreadyApplied):
                return Reply(command.user_id, command.command_id, True, decision.version, 0,
                             None)
            assert isinstance(decision, core.Accepted)
            for event in decision.events:
                self.users[event.user_id] = core.evolve(self.users.get(event.user_id), event)
                self.views[event.user_id] = core.evolve_view(self.views.get(event.user_id), event)
                self.events.append(event)
            return Reply(command.user_id, command.command_id, True, decision.events[-1].version,
                         0, len(self.events) - 1)

    def get_user(self, user_id: str, after: tuple[int, int] | None) -> Any:
        return self.views.get(user_id)

    def get_record(self, user_id: str, record_id: str, after: tuple[int, int] | None) -> Any:
        view = self.views.get(user_id)
        return None if view is None else view.records.get(record_id)
