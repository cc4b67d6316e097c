"""Two gateways racing on one payment deliver exactly one key (issue 16, item 12), on the real
Cassandra: each gateway has its own driver connection and claims through the lightweight
transaction of ``services.gateway.spent`` (``INSERT ... IF NOT EXISTS``, SERIAL).

The payments are genuinely on chain (``tests.unit.test_key_payments.make_world``: signed blocks,
the real ledger, the book fed as a gateway's follower feeds it); the subject here is the one
thing a single process cannot show, the claim shared by gateways. Each gateway runs its own
event loop in its own thread, and every payment is requested several times on both at once.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.gateway.keys import BufferPool, KeyService, LedgerView, PoolUnavailable
from services.gateway.problems import Problem
from services.gateway.spent import CassandraSpentPayments
from services.ledger.core.tx import tx_hash
from streams.settings import load_settings
from tests.unit.test_key_payments import CHAIN_ID, CountingSink, World, make_world

PAYMENTS = 8
REQUESTS_PER_GATEWAY = 4  # concurrent requests for each payment on each gateway


@pytest.fixture
def keyspace(cassandra_session: Any) -> Iterator[str]:
    name = f"ks_pay_{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        cassandra_session.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=60)


def connection(cassandra_contact: tuple[str, int]) -> tuple[Any, Any]:
    """A gateway's own Cassandra connection, made the way the gateway makes it."""
    from services.shard_writer.store import connect

    host, port = cassandra_contact
    base = load_settings()
    settings = base.model_copy(update={"cassandra": base.cassandra.model_copy(update={
        "contact_points": host, "port": port})})
    return connect(settings)


def gateway(world: World, session: Any, keyspace: str, pool_bytes: int = 1 << 16) -> KeyService:
    pool = BufferPool()
    if pool_bytes:
        pool.put("qrng-0", os.urandom(pool_bytes))
    return KeyService(pool, CountingSink(), LedgerView(state=world.state), CHAIN_ID,
                      payments=world.book, spent=CassandraSpentPayments(session, keyspace),
                      inclusion_timeout_s=1.0)


def run_gateway(service: KeyService, requests: list[Any], start: threading.Barrier,
                out: list[tuple[int, dict[str, Any] | Problem]]) -> None:
    """One gateway process's event loop: all its requests at once, after the barrier."""

    async def one(index: int, request: Any) -> tuple[int, dict[str, Any] | Problem]:
        try:
            return index, await service.deliver(request)
        except Problem as problem:
            return index, problem

    async def everything() -> list[tuple[int, dict[str, Any] | Problem]]:
        return list(await asyncio.gather(*(one(i, r) for i, r in requests)))

    start.wait(30)
    out.extend(asyncio.run(everything()))


def test_two_gateways_racing_on_each_payment_deliver_exactly_one_key(
        cassandra_contact: tuple[str, int], keyspace: str, tmp_path: Path) -> None:
    world = make_world(tmp_path, PAYMENTS)
    connections = [connection(cassandra_contact) for _ in range(2)]
    try:
        gateways = [gateway(world, session, keyspace) for _, session in connections]
        requests = [(p, world.paid[p].request) for p in range(PAYMENTS)
                    for _ in range(REQUESTS_PER_GATEWAY)]
        start = threading.Barrier(len(gateways))
        answers: list[list[tuple[int, Any]]] = [[] for _ in gateways]
        threads = [threading.Thread(target=run_gateway, args=(g, requests, start, answers[i]))
                   for i, g in enumerate(gateways)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(t.is_alive() for t in threads), "a gateway did not finish in time"
        delivered: dict[int, list[int]] = {}
        for which, gateway_answers in enumerate(answers):
            assert len(gateway_answers) == len(requests)
            for payment, answer in gateway_answers:
                if isinstance(answer, dict):
                    assert answer["tx_hash"] == tx_hash(world.paid[payment].payment).hex()
                    delivered.setdefault(payment, []).append(which)
                else:
                    assert answer.status == 409 and answer.slug == "payment-reused", answer
        assert {p: len(w) for p, w in delivered.items()} == {p: 1 for p in range(PAYMENTS)}
        rows = list(connections[0][1].execute(
            f"SELECT sender, nonce, tx_hash, claimant FROM {keyspace}.key_payments_claimed"))
        assert sorted(r.nonce for r in rows) == list(range(PAYMENTS))
        claimants = {g.claimant: i for i, g in enumerate(gateways)}
        for row in rows:
            assert delivered[row.nonce] == [claimants[row.claimant]]
    finally:
        for cluster, _ in connections:
            cluster.shutdown()


class DryPool:
    """Says it can serve, then cannot (the pool ran dry between the check and the draw)."""

    def status(self) -> dict[str, Any]:
        return {"healthy": True, "available_bytes": 1 << 20}

    def draw(self, n: int) -> tuple[bytearray, tuple[str, ...]]:
        raise PoolUnavailable("ran dry", 1)


def test_a_gateway_that_cannot_serve_gives_its_claim_back(
        cassandra_contact: tuple[str, int], keyspace: str, tmp_path: Path) -> None:
    world = make_world(tmp_path, 1)
    connections = [connection(cassandra_contact) for _ in range(2)]
    try:
        empty = gateway(world, connections[0][1], keyspace)
        empty.pool = DryPool()
        full = gateway(world, connections[1][1], keyspace)
        buyer = world.paid[0].request

        async def attempt(service: KeyService) -> dict[str, Any] | Problem:
            try:
                return await service.deliver(buyer)
            except Problem as problem:
                return problem

        refused = asyncio.run(attempt(empty))  # claimed, then the draw failed
        assert isinstance(refused, Problem) and refused.status == 503
        served = asyncio.run(attempt(full))
        assert isinstance(served, dict)
        again = asyncio.run(attempt(empty))
        assert isinstance(again, Problem) and again.status == 409
    finally:
        for cluster, _ in connections:
            cluster.shutdown()
