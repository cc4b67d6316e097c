"""The user pipeline's services (command handler, projector) run in threads of the test process,
against the real Kafka and Cassandra of the integration tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from cassandra.cluster import Session

from services.shard_writer.handler import CommandHandler
from services.shard_writer.projection import Projector
from streams.settings import Settings


@contextmanager
def running_handler_and_projector(settings: Settings, session: Session, instance_id: str, *,
                                  create_tables: bool = True
                                  ) -> Iterator[tuple[CommandHandler, Projector]]:
    """A command handler (``instance_id``) and a projector, each running in a daemon thread;
    on exit both are stopped, their threads joined and their clients closed."""
    handler = CommandHandler.create(settings, instance_id=instance_id)
    projector = Projector.create(settings, session, create_tables=create_tables)
    threads = [threading.Thread(target=service.run, daemon=True)
               for service in (handler, projector)]
    for thread in threads:
        thread.start()
    try:
        yield handler, projector
    finally:
        handler.stop()
        projector.stop()
        for thread in threads:
            thread.join(30)
        handler.close()
        projector.close()
