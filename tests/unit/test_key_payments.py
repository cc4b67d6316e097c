"""One payment, one delivery (issue 16, item 12), and deliveries only the gateway could make
(item 15).

The chain is real (``sdk.testing``: signed blocks, the real ledger): some key payments are in
its blocks, one is front-run by a transfer with the same nonce, one fails on execution. The
gateways' ``PaymentBook`` is fed from that chain exactly as the gateway's follower feeds it
(``key_payment_outcomes`` on each block). Several gateways share one claim store
(``MemorySpentPayments`` here; Cassandra in ``tests/integration/test_key_payments_cassandra.py``).
"""

from __future__ import annotations

import asyncio
import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.keydelivery import delivery_kek, delivery_transcript, request_commitment
from protocol.keys import SigningKey
from sdk.errors import KeyDeliveryError
from sdk.keys import open_delivery
from sdk.testing import LocalChain, make_local_chain
from services.gateway.api import Gateway, create_app
from services.gateway.auth import ApiKeyStore
from services.gateway.chain import ChainView
from services.gateway.keys import BufferPool, KeyRequest, KeyService, LedgerView
from services.gateway.payments import (
    MemorySpentPayments,
    PaymentBook,
    SpentPayments,
    key_payment_outcomes,
)
from services.gateway.problems import Problem
from services.ledger.core.chain_spec import ChainSpec
from services.ledger.core.tx import (
    PayForService,
    ServiceKind,
    Transfer,
    encode_signed_tx,
    sign_tx,
    tx_hash,
)
from streams.chain_wire import decode_finalized

CHAIN_ID = "qustream-test"
PAID = 6  # key payments included and executed, account 0, nonces 0..5


@dataclass(frozen=True)
class Client:
    """One key request's key pairs and its signed payment."""

    x_private: Any
    k_private: Any
    length: int
    payment: bytes

    @property
    def request(self) -> KeyRequest:
        return KeyRequest(self.x_private.public_key().public_bytes_raw(),
                          self.k_private.public_key().public_bytes_raw(), self.length,
                          self.payment)

    @property
    def commitment(self) -> bytes:
        return request_commitment(self.request.x25519_public, self.request.mlkem_public,
                                  self.length)


def client(account: SigningKey, nonce: int, *, units: int = 1, length: int = 32) -> Client:
    x_private = x25519.X25519PrivateKey.generate()
    k_private = mlkem.MLKEM768PrivateKey.generate()
    commitment = request_commitment(x_private.public_key().public_bytes_raw(),
                                    k_private.public_key().public_bytes_raw(), length)
    payment = encode_signed_tx(sign_tx(account, CHAIN_ID, nonce, 1_000, PayForService(
        ServiceKind.KEY_MATERIAL, units, commitment)))
    return Client(x_private, k_private, length, payment)


@dataclass
class World:
    chain: LocalChain
    state: Any
    book: PaymentBook
    paid: list[Client]  # on chain, executed
    front_run: Client  # its nonce went to a transfer first
    failed: Client  # on chain, its body failed (cannot pay the units)
    account: SigningKey


def make_world(directory: Path, paid: int = PAID) -> World:
    """A chain whose block 2 holds ``paid`` key payments of account 0 (nonces 0..paid-1),
    block 3 a transfer that takes nonce ``paid`` before the payment with that nonce, block 4 a
    payment that cannot pay its units; the book fed from it as a gateway's follower feeds it."""
    made: dict[str, Any] = {}

    def txs(height: int, _chain: Any, accounts: tuple[SigningKey, ...]) -> tuple[bytes, ...]:
        payer = accounts[0]
        if height == 2:
            made["paid"] = [client(payer, n) for n in range(paid)]
            return tuple(c.payment for c in made["paid"])
        if height == 3:  # the payer sends another tx with nonce `paid` before its payment
            made["front_run"] = client(payer, paid)
            return (encode_signed_tx(sign_tx(payer, CHAIN_ID, paid, 1_000,
                                             Transfer(accounts[1].address, 1))),
                    made["front_run"].payment)
        if height == 4:  # more units than the account can pay: fee charged, body fails
            made["failed"] = client(payer, paid + 1, units=10**13)
            return (made["failed"].payment,)
        return ()

    chain = make_local_chain(directory, 6, txs=txs)
    spec = ChainSpec.load(chain.genesis)
    follower = spec.follower()
    book = PaymentBook()
    for raw in chain.records:  # what the gateway's on_block does for each verified block
        record = decode_finalized(raw)
        previous = follower.chain
        follower.accept(record)
        book.record(key_payment_outcomes(previous, spec.app, record))
    return World(chain, follower.chain.app_state, book, made["paid"], made["front_run"],
                 made["failed"], chain.account_keys[0])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("payments"))


class CountingSink:
    def __init__(self) -> None:
        self.txs: list[bytes] = []

    async def submit(self, raw: bytes) -> bytes:
        self.txs.append(raw)
        return tx_hash(raw)


def gateway(world: World, spent: SpentPayments, *, timeout_s: float = 0.2) -> KeyService:
    pool = BufferPool()
    pool.put("qrng-0", os.urandom(1 << 16))
    return KeyService(pool, CountingSink(), LedgerView(state=world.state), CHAIN_ID,
                      payments=world.book, spent=spent, inclusion_timeout_s=timeout_s)


async def outcome(service: KeyService, request: KeyRequest) -> dict[str, Any] | Problem:
    try:
        return await service.deliver(request)
    except Problem as problem:
        return problem


def test_outcomes_come_from_the_chain(world: World) -> None:
    for paid in world.paid:
        found = world.book.get(tx_hash(paid.payment))
        assert found is not None and found.paid and found.height == 2
    front_run = world.book.get(tx_hash(world.front_run.payment))
    failed = world.book.get(tx_hash(world.failed.payment))
    assert front_run is not None and not front_run.paid  # the nonce was already used
    assert failed is not None and not failed.paid and failed.height == 4


def test_a_payment_on_chain_buys_exactly_one_key_across_gateways(world: World) -> None:
    spent = MemorySpentPayments()
    first, second = gateway(world, spent), gateway(world, spent)
    buyer = world.paid[0]
    delivered = asyncio.run(outcome(first, buyer.request))
    assert isinstance(delivered, dict)
    key = open_delivery(delivered, buyer.x_private, buyer.k_private, buyer.commitment,
                        gateway_keys=[first.signer.public_key], chain_id=CHAIN_ID,
                        tx_hash=tx_hash(buyer.payment))
    assert len(key.key) == 32
    for again in (first, second):  # the same request, on this gateway or another
        refused = asyncio.run(outcome(again, buyer.request))
        assert isinstance(refused, Problem) and refused.status == 409
    assert len(spent) == 1


def test_a_payment_that_is_not_on_chain_buys_nothing(world: World) -> None:
    spent = MemorySpentPayments()
    service = gateway(world, spent)
    # the nonce went to another transaction first: never a key
    front_run = asyncio.run(outcome(service, world.front_run.request))
    assert isinstance(front_run, Problem) and front_run.status == 409
    failed = asyncio.run(outcome(service, world.failed.request))
    assert isinstance(failed, Problem) and failed.status == 409
    # the next nonce, not in any block yet: submitted, then "pending" (resend later) ...
    pending = client(world.account, PAID + 2)

    async def same_nonce_three_times() -> list[dict[str, Any] | Problem]:
        return list(await asyncio.gather(*(outcome(service, c.request) for c in (
            pending, client(world.account, PAID + 2), client(world.account, PAID + 2)))))

    answers = asyncio.run(same_nonce_three_times())
    assert all(isinstance(a, Problem) and a.status == 503 for a in answers)
    assert tx_hash(pending.payment) in {tx_hash(t) for t in service.sink.txs}  # type: ignore[attr-defined]
    # ... and a nonce far in the future is refused outright
    far = asyncio.run(outcome(service, client(world.account, PAID + 1_000).request))
    assert isinstance(far, Problem) and far.status == 422
    # a used nonce with a payment the chain never saw
    used = asyncio.run(outcome(service, client(world.account, 0).request))
    assert isinstance(used, Problem) and used.status == 409
    assert len(spent) == 0  # nothing was delivered


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, PAID - 1), st.integers(0, 2)), min_size=1,
                max_size=24))
def test_property_concurrent_requests_on_several_gateways_deliver_each_payment_once(
        world: World, requests: list[tuple[int, int]]) -> None:
    spent = MemorySpentPayments()
    gateways = [gateway(world, spent) for _ in range(3)]

    async def race() -> list[dict[str, Any] | Problem]:
        return list(await asyncio.gather(*(outcome(gateways[g], world.paid[p].request)
                                           for p, g in requests)))

    answers = asyncio.run(race())
    delivered: dict[int, int] = {}
    for (payment, _), answer in zip(requests, answers, strict=True):
        if isinstance(answer, dict):
            delivered[payment] = delivered.get(payment, 0) + 1
        else:
            assert answer.status == 409
    assert delivered == {p: 1 for p, _ in requests}


# --- the delivery is the gateway's: substitution on the way is detected ---------------------


def test_a_delivery_substituted_on_the_way_is_refused(world: World) -> None:
    service = gateway(world, MemorySpentPayments())
    buyer = world.paid[1]
    genuine = asyncio.run(outcome(service, buyer.request))
    assert isinstance(genuine, dict)
    pinned = [service.signer.public_key]
    common = {"gateway_keys": pinned, "chain_id": CHAIN_ID, "tx_hash": tx_hash(buyer.payment)}

    # Someone on a plain-HTTP path saw the request, so it has the client's public keys: it
    # seals key material of its own choosing to them, exactly as the protocol says.
    chosen = b"\x00" * 32
    ephemeral = x25519.X25519PrivateKey.generate()
    eph_public = ephemeral.public_key().public_bytes_raw()
    shared_k, kem_ct = buyer.k_private.public_key().encapsulate()
    kek = delivery_kek(ephemeral.exchange(buyer.x_private.public_key()), shared_k, eph_public,
                       buyer.request.x25519_public, kem_ct, buyer.commitment)
    nonce = os.urandom(12)
    forged = {**genuine, "x25519_ephemeral_public_key": base64.b64encode(eph_public).decode(),
              "mlkem768_ciphertext": base64.b64encode(kem_ct).decode(),
              "nonce": base64.b64encode(nonce).decode(),
              "ciphertext": base64.b64encode(AESGCM(kek).encrypt(nonce, chosen,
                                                                 buyer.commitment)).decode()}
    with pytest.raises(KeyDeliveryError):
        open_delivery(forged, buyer.x_private, buyer.k_private, buyer.commitment, **common)
    # ... signed with its own key: not a pinned one
    impostor = SigningKey.generate()
    signed = {**forged, "gateway_key": impostor.public_key.to_text(),
              "signature": base64.b64encode(impostor.sign(delivery_transcript(
                  CHAIN_ID, buyer.commitment, tx_hash(buyer.payment), 32, eph_public, kem_ct,
                  nonce, base64.b64decode(forged["ciphertext"]), tuple(genuine["sources"]),
                  genuine["delivered_at_ms"]))).decode()}
    with pytest.raises(KeyDeliveryError):
        open_delivery(signed, buyer.x_private, buyer.k_private, buyer.commitment, **common)
    # any field of the genuine delivery changed on the way
    for field, value in (("sources", ["forged-source"]), ("delivered_at_ms", 1),
                         ("tx_hash", "00" * 32)):
        with pytest.raises(KeyDeliveryError):
            open_delivery({**genuine, field: value}, buyer.x_private, buyer.k_private,
                          buyer.commitment, **common)
    assert len(open_delivery(genuine, buyer.x_private, buyer.k_private, buyer.commitment,
                             **common).key) == 32


def test_the_sdk_client_pins_the_gateway_key(world: World, tmp_path: Path) -> None:
    from sdk.keys import KeyClient
    from tests.unit.test_gateway_api import MemorySink

    keys = ApiKeyStore()
    api_key = keys.create(("read", "keys"), rate_per_s=1e6, burst=10**6)
    book = PaymentBook()
    pool = BufferPool()
    pool.put("qrng-0", os.urandom(1 << 14))
    ledger = LedgerView(state=world.state)
    service = KeyService(pool, MemorySink(book), ledger, CHAIN_ID, payments=book)
    app = create_app(Gateway(view=ChainView(CHAIN_ID, bytes(64)), keys=keys, ledger=ledger,
                             key_service=service))
    account = world.chain.account_keys[1]
    for pinned, ok in ((service.public_key, True), (SigningKey.generate().public_key, False)):
        http = TestClient(app, headers={"X-API-Key": api_key})
        kc = KeyClient("http://testserver", api_key, account, CHAIN_ID, gateway_keys=pinned,
                       client=http)
        if ok:
            assert len(kc.request(48).key) == 48
        else:
            with pytest.raises(KeyDeliveryError):
                kc.request(32)
