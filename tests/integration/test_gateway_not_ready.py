"""A gateway started before the shard writer has made the projection's tables does not exit:
``/readyz`` answers 503 not-ready and user reads 503 until the tables exist, then both work
(``make demo`` starts every service at once, so this is the order a newcomer meets)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from services.gateway.api import Gateway, create_app
from services.gateway.auth import ApiKeyStore
from services.gateway.chain import ChainView
from services.gateway.users import KafkaCassandraUsers
from services.shard_writer.store import create_schema, drop_keyspace
from streams.settings import Settings


def test_readyz_waits_for_the_projection_tables(cassandra_settings: Settings,
                                                cassandra_session: Any) -> None:
    users = KafkaCassandraUsers(cassandra_settings)  # the keyspace has no tables yet
    keys = ApiKeyStore(None)
    key = keys.create(scopes=("users",), label="t")
    view = ChainView("qustream-test", bytes(64))
    view.caught_up = True
    gateway = Gateway(view=view, keys=keys, users=users)
    try:
        with TestClient(create_app(gateway)) as http:
            ready = http.get("/readyz")
            assert ready.status_code == 503 and "projection" in ready.json()["detail"]
            read = http.get("/v1/users/" + "a" * 40, headers={"X-API-Key": key})
            assert read.status_code == 503 and read.json()["type"].endswith("users-not-ready")
            create_schema(cassandra_session, cassandra_settings.cassandra.keyspace)
            assert http.get("/readyz").status_code == 200
            assert http.get("/v1/users/" + "a" * 40, headers={"X-API-Key": key}
                            ).status_code == 404
    finally:
        users.close()
        drop_keyspace(cassandra_session, cassandra_settings.cassandra.keyspace)
