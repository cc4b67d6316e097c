"""The gateway in process: a local signed chain, an in-memory pool and transaction sink."""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from protocol.randomness import block_randomness
from sdk.errors import RateLimitedError, UnavailableError
from sdk.keys import KeyClient
from sdk.subscriber import BlockSubscriber, TrustedCheckpoint, parse_sse
from sdk.testing import LocalChain, make_local_chain
from services.gateway.api import Gateway, create_app
from services.gateway.auth import ApiKeyStore
from services.gateway.chain import ChainView
from services.gateway.keys import BufferPool, KeyService, LedgerView
from services.gateway.payments import PaymentBook, PaymentOutcome
from services.gateway.pulses import GatewayPulses
from services.ledger.core.chain_spec import ChainSpec
from streams.chain_wire import decode_finalized


class MemorySink:
    """A transaction sink without Kafka. With ``book``, it also plays a chain that includes
    every submitted key payment at once, successfully (what a gateway test or bench needs
    when the chain is not the subject)."""

    def __init__(self, book: PaymentBook | None = None) -> None:
        self.txs: list[bytes] = []
        self.book = book

    async def submit(self, raw: bytes) -> bytes:
        from services.ledger.core.tx import decode_signed_tx, tx_hash

        self.txs.append(raw)
        if self.book is not None:
            tx = decode_signed_tx(raw).tx
            self.book.record([PaymentOutcome(tx_hash(raw), tx.sender.address, tx.nonce, 0, 0,
                                             "ok")])
        return tx_hash(raw)


def fill_view(chain: LocalChain) -> tuple[ChainView, Any]:
    spec = ChainSpec.load(chain.genesis)
    view = ChainView(spec.chain_id, spec.initial.tip.previous_randomness)
    follower = spec.follower()
    for offset, raw in enumerate(chain.records):
        record = decode_finalized(raw)
        validators = follower.chain.validators
        follower.accept(record)
        view.add(raw, record, validators, offset, 0)
    view.caught_up = True
    return view, follower.chain.app_state


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> LocalChain:
    return make_local_chain(tmp_path_factory.mktemp("gw"), 8)


def make_gateway(chain: LocalChain, pool_bytes: int = 1 << 16) -> tuple[Gateway, dict[str, str]]:
    view, state = fill_view(chain)
    store = ApiKeyStore()
    keys = {scope: store.create((scope,), burst=1000, rate_per_s=1000)
            for scope in ("read", "keys", "users")}
    keys["all"] = store.create(("read", "keys", "users"), burst=1000, rate_per_s=1000)
    pool = BufferPool()
    if pool_bytes:
        pool.put("qrng-0", os.urandom(pool_bytes))
    ledger = LedgerView(state=state)
    book = PaymentBook()
    gateway = Gateway(view=view, keys=store, ledger=ledger,
                      key_service=KeyService(pool, MemorySink(book), ledger, view.chain_id,
                                             payments=book))
    return gateway, keys


@pytest.fixture
def gateway(chain: LocalChain) -> tuple[Gateway, dict[str, str]]:
    return make_gateway(chain)


def client(gateway: Gateway, key: str | None = None) -> TestClient:
    return TestClient(create_app(gateway), headers={"X-API-Key": key} if key else {})


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert {"type", "title", "status", "detail"} <= set(body) and body["status"] == status
    return body


def test_auth_missing_wrong_and_scope(gateway: tuple[Gateway, dict[str, str]]) -> None:
    gw, keys = gateway
    assert client(gw).get("/v1/chain/head").status_code == 200  # public read, no key
    assert_problem(client(gw).get(f"/v1/accounts/{'0' * 40}"), 401)
    assert_problem(client(gw).get(f"/v1/users/{'a' * 40}"), 401)
    assert_problem(client(gw, "qsk_nope_nope").get("/v1/chain/head"), 401)
    assert_problem(client(gw, keys["read"][:-2] + "xx").get("/v1/chain/head"), 401)
    assert_problem(client(gw, keys["keys"]).get("/v1/chain/head"), 403)
    assert client(gw).get("/healthz").status_code == 200
    bearer = TestClient(create_app(gw), headers={"Authorization": f"Bearer {keys['read']}"})
    assert bearer.get("/v1/chain/head").status_code == 200


def test_chain_endpoints(gateway: tuple[Gateway, dict[str, str]], chain: LocalChain) -> None:
    gw, keys = gateway
    http = client(gw, keys["read"])
    head = http.get("/v1/chain/head").json()
    assert head["height"] == 8 and head["caught_up"]
    block = http.get("/v1/blocks/3").json()
    assert base64.b64decode(block["record"]) == chain.records[2]
    assert block["commit"]["signed_power"] == block["commit"]["total_power"]
    page = http.get("/v1/blocks", params={"from": 2, "limit": 3}).json()
    assert [b["height"] for b in page["blocks"]] == [2, 3, 4]
    assert page["next"] == "/v1/blocks?from=5&limit=3"
    assert_problem(http.get("/v1/blocks", params={"from": 5, "to": 2}), 400)
    assert_problem(http.get("/v1/blocks/99"), 404)
    validators = http.get("/v1/validators/3").json()
    assert len(validators["validators"]) == 4
    assert http.get("/readyz").status_code == 200
    assert b"qustream_gateway_requests" in http.get("/metrics").content


def test_beacon_proof_verifies(gateway: tuple[Gateway, dict[str, str]]) -> None:
    from protocol.block import EntropyRef
    from protocol.codec import decode_commit
    from protocol.commit import verify_commit
    from protocol.entropy.chain import HealthSummary
    from protocol.pulse import health_json

    gw, keys = gateway
    http = client(gw, keys["read"])
    latest = http.get("/v1/beacon/latest").json()
    assert latest["height"] == 8
    for height in (1, 5):
        pulse = http.get(f"/v1/beacon/{height}").json()
        proof = pulse["proof"]
        refs = [EntropyRef(e["source_id"], e["seq"], bytes.fromhex(e["digest"]),
                           HealthSummary.from_json(e["health"]), bytes.fromhex(e["next_digest"]),
                           e["committed"]) for e in proof["entropy"]]
        assert pulse["health"] == health_json(refs)
        derived = block_randomness(bytes.fromhex(proof["previous_randomness"]), height, refs)
        assert derived.hex() == pulse["randomness"]
        validators = gw.view.get(height).validators  # type: ignore[union-attr]
        commit = decode_commit(base64.b64decode(proof["commit"]))
        assert verify_commit(pulse["chain_id"], bytes.fromhex(pulse["block_hash"]), height,
                             commit, validators).ok


def test_sse_stream_resumes_with_last_event_id(gateway: tuple[Gateway, dict[str, str]],
                                               chain: LocalChain) -> None:
    gw, keys = gateway
    http = client(gw, keys["read"])
    first = http.get("/v1/stream/blocks", params={"from": 1, "until": 4})
    events = list(parse_sse(first.text.splitlines()))
    assert [int(e or 0) for e, _ in events] == [1, 2, 3, 4]
    rest = http.get("/v1/stream/blocks", params={"until": 8}, headers={"Last-Event-ID": "4"})
    more = list(parse_sse(rest.text.splitlines()))
    assert [int(e or 0) for e, _ in more] == [5, 6, 7, 8]

    class Replay:
        def records(self, after: int | None):  # type: ignore[no-untyped-def]
            for event_id, data in events + more:
                yield int(event_id or 0), base64.b64decode(json.loads(data)["record"])

    verified = list(BlockSubscriber(Replay(), checkpoint=TrustedCheckpoint.from_genesis(
        chain.genesis)))
    assert [b.height for b in verified] == list(range(1, 9))
    assert_problem(http.get("/v1/stream/blocks", headers={"Last-Event-ID": "x"}), 400)


def test_key_delivery_round_trip(gateway: tuple[Gateway, dict[str, str]],
                                 chain: LocalChain) -> None:
    gw, keys = gateway
    http = client(gw, keys["all"])
    kc = KeyClient("http://testserver", keys["all"], chain.account_keys[0], gw.view.chain_id,
                   client=http, gateway_keys=gw.key_service.public_key)  # type: ignore[union-attr]
    first, second = kc.request(32), kc.request(64)
    assert len(first.key) == 32 and len(second.key) == 64 and first.key != second.key[:32]
    sink = gw.key_service.sink  # type: ignore[union-attr]
    assert len(sink.txs) == 2  # type: ignore[union-attr]
    from services.ledger.core.tx import decode_signed_tx

    assert decode_signed_tx(sink.txs[0]).tx.body.commitment == first.commitment  # type: ignore[attr-defined,union-attr]
    # the same payment again is refused
    body = {"x25519_public_key": base64.b64encode(bytes(32)).decode(),
            "mlkem768_public_key": base64.b64encode(bytes(1184)).decode(), "length": 32,
            "payment_tx": base64.b64encode(sink.txs[0]).decode()}  # type: ignore[union-attr]
    assert_problem(http.post("/v1/keys", json=body), 422)  # commitment differs from the keys
    assert_problem(client(gw, keys["read"]).post("/v1/keys", json=body), 403)


def test_empty_pool_answers_503_with_retry_after(chain: LocalChain) -> None:
    gw, keys = make_gateway(chain, pool_bytes=0)
    http = client(gw, keys["all"])
    kc = KeyClient("http://testserver", keys["all"], chain.account_keys[1], gw.view.chain_id,
                   client=http, gateway_keys=gw.key_service.public_key)  # type: ignore[union-attr]
    with pytest.raises(UnavailableError) as caught:
        kc.request(32)
    assert caught.value.retry_after is not None and caught.value.retry_after >= 1
    assert gw.key_service.sink.txs == []  # type: ignore[union-attr,attr-defined]


def test_concurrent_draws_never_overlap() -> None:
    pool = BufferPool()
    for index in range(4):
        pool.put(f"s{index}", b"".join(i.to_bytes(4, "big") for i in
                                       range(index * 4096, (index + 1) * 4096)))
    drawn: list[bytes] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(64):
            data, _sources = pool.draw(32)
            with lock:
                drawn.append(bytes(data))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    words = [piece[i:i + 4] for piece in drawn for i in range(0, 32, 4)]
    assert len(words) == len(set(words)) == 8 * 64 * 8
    assert pool.available == 4 * 16384 - 8 * 64 * 32


def test_rate_limit_gives_429_with_retry_after(chain: LocalChain) -> None:
    gw, _keys = make_gateway(chain)
    key = gw.keys.create(("read",), rate_per_s=0.5, burst=2)
    http = client(gw, key)
    assert http.get("/v1/chain/head").status_code == 200
    assert http.get("/v1/chain/head").status_code == 200
    body = assert_problem(http.get("/v1/chain/head"), 429)
    assert body["retry_after_s"] >= 1
    from sdk.errors import error_from_response

    response = http.get("/v1/chain/head")
    error = error_from_response(response.status_code, response.json(),
                                response.headers.get("Retry-After"))
    assert isinstance(error, RateLimitedError) and error.retry_after


def test_body_size_limit_and_users_disabled(gateway: tuple[Gateway, dict[str, str]]) -> None:
    gw, keys = gateway
    http = client(gw, keys["all"])
    assert_problem(http.post("/v1/keys", content=b"x" * (300 * 1024),
                             headers={"content-type": "application/json"}), 413)
    assert_problem(http.get("/v1/users/" + "a" * 40), 501)  # not offered here (no users)


def test_published_openapi_matches(gateway: tuple[Gateway, dict[str, str]]) -> None:
    gw, _keys = gateway
    published = Path(__file__).resolve().parents[2] / "services" / "gateway" / "openapi.json"
    generated = json.dumps(create_app(gw).openapi(), indent=2, sort_keys=True) + "\n"
    if os.environ.get("QUSTREAM_REGENERATE_OPENAPI"):
        published.write_text(generated)
    assert published.read_text() == generated, (
        "services/gateway/openapi.json is stale: rerun with QUSTREAM_REGENERATE_OPENAPI=1")


def test_blocks_older_than_the_window_are_read_back_not_refused(chain: LocalChain) -> None:
    """The window keeps 3 of 8 blocks; older ones come back through the archive (Kafka in the
    service: the record at the offset the view recorded when it verified the height), with the
    validator set of their height. Only a height the archive no longer has answers 410."""
    spec = ChainSpec.load(chain.genesis)
    view = ChainView(spec.chain_id, spec.initial.tip.previous_randomness, retain=3)
    follower = spec.follower()
    for offset, raw in enumerate(chain.records):
        record = decode_finalized(raw)
        validators = follower.chain.validators
        follower.accept(record)
        view.add(raw, record, validators, 10 + offset, 0)
    view.caught_up = True
    assert view.first_height == 6

    class Archive:
        def __init__(self) -> None:
            self.reads: list[int] = []
            self.gone: set[int] = set()

        def block(self, height: int) -> Any:
            self.reads.append(height)
            if height in self.gone:
                return None
            return decode_finalized(chain.records[height - 1])

        def at_or_after(self, time_ms: int) -> Any:
            return None

        def range(self, first: int, last: int) -> list[Any]:
            return [self.block(height) for height in range(first, last + 1)]

        def stored(self, height: int) -> Any:
            return None  # only heights the view verified

    archive = Archive()
    gateway = Gateway(view=view, keys=ApiKeyStore(),
                      pulses=GatewayPulses(view, 0, 1000, archive))
    http = client(gateway)
    old = http.get("/v1/blocks/2")
    assert old.status_code == 200, old.text
    document = old.json()
    assert base64.b64decode(document["record"]) == chain.records[1]
    assert document["kafka_offset"] == 11
    assert document["commit"]["signed_power"] == document["commit"]["total_power"] == 40_000
    assert old.headers["etag"] and "immutable" in old.headers["cache-control"]
    assert http.get("/v1/blocks/2").json() == document and archive.reads == [2]  # cached
    page = http.get("/v1/blocks", params={"from": 4, "limit": 4}).json()
    assert [b["height"] for b in page["blocks"]] == [4, 5, 6, 7]
    validators = http.get("/v1/validators/1").json()
    first = decode_finalized(chain.records[0]).block.header
    assert validators["hash"] == first.validators_hash.hex()
    stream = http.get("/v1/stream/blocks", params={"from": 1, "until": 7})
    events = list(parse_sse(stream.text.splitlines()))
    assert [int(e or 0) for e, _ in events] == list(range(1, 8))  # from Kafka, then the window
    assert [base64.b64decode(json.loads(d)["record"]) for _, d in events] == \
        list(chain.records[:7])
    archive.gone.add(3)
    assert_problem(http.get("/v1/blocks/3"), 410)
    assert_problem(http.get("/v1/blocks", params={"from": 3, "limit": 2}), 410)
    assert_problem(http.get("/v1/blocks/9"), 404)
