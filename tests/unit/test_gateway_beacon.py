"""The gateway's beacon routes: public reads, caching, time lookups, long polls, health, SSE."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from protocol.codec import decode_pulse_range
from protocol.pulse import PULSE_RANGE_MEDIA_TYPE
from sdk.testing import LocalChain, make_local_chain
from services.gateway.api import Gateway, create_app
from services.gateway.public import PublicReads
from services.gateway.pulses import GatewayPulses
from services.ledger.core.chain_spec import ChainSpec
from streams.chain_wire import decode_finalized
from tests.unit.test_gateway_api import assert_problem, make_gateway

HEIGHTS = 12


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> LocalChain:
    return make_local_chain(tmp_path_factory.mktemp("beacon-routes"), HEIGHTS)


def partial_gateway(chain: LocalChain, upto: int) -> tuple[Gateway, Any, dict[str, str]]:
    """A gateway whose view holds blocks 1..upto, and a function adding the next one."""
    full, keys = make_gateway(chain)
    view = full.view
    fresh = type(view)(view.chain_id, view.genesis_randomness)
    spec = ChainSpec.load(chain.genesis)
    follower = spec.follower()
    verified = []
    for offset, raw in enumerate(chain.records):
        record = decode_finalized(raw)
        verified.append((raw, record, follower.chain.validators, offset))
        follower.accept(record)
    for raw, record, validators, offset in verified[:upto]:
        fresh.add(raw, record, validators, offset, 0)
    fresh.caught_up = True
    full.view = fresh
    position = [upto]

    def add_next() -> None:
        raw, record, validators, offset = verified[position[0]]
        fresh.add(raw, record, validators, offset, 0)
        position[0] += 1

    return full, add_next, keys


def test_beacon_and_chain_reads_need_no_key_and_are_limited_per_address(
        chain: LocalChain) -> None:
    gateway, _add, keys = partial_gateway(chain, HEIGHTS)
    gateway.public = PublicReads(rate_per_s=0.001, burst=3)
    anonymous = TestClient(create_app(gateway))
    for path in ("/v1/beacon/latest", "/v1/beacon/3", "/v1/chain/head"):
        assert anonymous.get(path).status_code == 200, path
    limited = assert_problem(anonymous.get("/v1/blocks/2"), 429)
    assert "anonymous" in limited["detail"]
    other = TestClient(create_app(gateway), client=("10.0.0.9", 5000))
    assert other.get("/v1/beacon/3").status_code == 200  # another address, its own bucket
    keyed = TestClient(create_app(gateway), headers={"X-API-Key": keys["read"]})
    assert keyed.get("/v1/blocks/2").status_code == 200  # a key is not limited as anonymous
    assert_problem(anonymous.get("/v1/beacon/3", headers={"X-API-Key": "qsk_a_b"}), 401)
    assert_problem(anonymous.post("/v1/keys", json={}), 401)
    gateway.public = PublicReads(enabled=False)
    assert_problem(TestClient(create_app(gateway)).get("/v1/beacon/3"), 401)


def test_finalized_pulses_are_immutable_and_the_latest_is_revalidated(
        chain: LocalChain) -> None:
    gateway, _add, keys = partial_gateway(chain, HEIGHTS)
    http = TestClient(create_app(gateway), headers={"X-API-Key": keys["read"]})
    pulse = http.get("/v1/beacon/4")
    assert "immutable" in pulse.headers["cache-control"]
    assert pulse.json()["block_hash"].startswith(pulse.headers["etag"].strip('"'))
    assert http.get("/v1/beacon/4", headers={"If-None-Match": pulse.headers["etag"]}
                    ).status_code == 304
    latest = http.get("/v1/beacon/latest")
    assert latest.headers["cache-control"] == "no-cache" and latest.headers["etag"]
    assert http.get("/v1/beacon/latest", headers={"If-None-Match": latest.headers["etag"]}
                    ).status_code == 304
    assert http.get("/v1/chain/head").headers["cache-control"] == "no-cache"
    assert "immutable" in http.get("/v1/blocks/4").headers["cache-control"]
    partial = http.get("/v1/beacon", params={"from": 2, "to": HEIGHTS + 5})
    assert partial.headers["cache-control"] == "no-cache"  # not complete yet
    assert "immutable" in http.get("/v1/beacon", params={"from": 2, "to": 5}
                                   ).headers["cache-control"]


def test_time_lookups_and_their_errors(chain: LocalChain) -> None:
    gateway, _add, keys = partial_gateway(chain, HEIGHTS)
    spec = ChainSpec.load(chain.genesis)
    gateway.genesis = type("Anchor", (), {"time_ms": spec.initial.tip.previous_time_ms})()  # type: ignore[assignment]
    http = TestClient(create_app(gateway), headers={"X-API-Key": keys["read"]})
    t5 = http.get("/v1/beacon/5").json()["time_ms"]
    assert http.get("/v1/beacon/at", params={"time": t5}).json()["height"] == 5
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t5 / 1000)) + f".{t5 % 1000:03d}Z"
    assert http.get("/v1/beacon/at", params={"time": iso}).json()["height"] == 5
    assert http.get("/v1/beacon/next", params={"time": t5}).json()["height"] == 6
    assert http.get("/v1/beacon/previous", params={"time": t5}).json()["height"] == 4
    early = assert_problem(http.get("/v1/beacon/at", params={"time": 5}), 400)
    assert early["type"].endswith("/before-genesis")
    late = assert_problem(http.get("/v1/beacon/at", params={"time": t5 + 10**6}), 404)
    assert late["type"].endswith("/pulse-not-yet") and late["expected_at_ms"] >= t5 + 10**6
    ahead = assert_problem(http.get(f"/v1/beacon/{HEIGHTS + 2}"), 404)
    assert ahead["head_height"] == HEIGHTS and ahead["expected_at_ms"] > t5
    assert_problem(http.get("/v1/beacon/at", params={"time": "soon"}), 422)


def test_a_long_poll_returns_the_pulse_once_it_exists_or_times_out(chain: LocalChain) -> None:
    gateway, add_next, keys = partial_gateway(chain, HEIGHTS - 2)
    http = TestClient(create_app(gateway), headers={"X-API-Key": keys["read"]})
    timer = threading.Timer(0.4, add_next)
    timer.start()
    started = time.monotonic()
    pulse = http.get(f"/v1/beacon/{HEIGHTS - 1}", params={"wait": 10})
    assert pulse.status_code == 200 and pulse.json()["height"] == HEIGHTS - 1
    assert time.monotonic() - started < 9
    timed_out = assert_problem(http.get(f"/v1/beacon/{HEIGHTS}", params={"wait": 0.3}), 404)
    assert timed_out["type"].endswith("/pulse-not-yet") and timed_out["waited_s"] == 0.3
    assert_problem(http.get(f"/v1/beacon/{HEIGHTS}", params={"wait": 61}), 422)


def test_health_and_range_pages(chain: LocalChain) -> None:
    gateway, _add_next, keys = partial_gateway(chain, HEIGHTS - 1)
    http = TestClient(create_app(gateway), headers={"X-API-Key": keys["read"]})
    stale = assert_problem(http.get("/v1/beacon/health"), 503)  # the chain is a minute old
    assert stale["expected_period_ms"] == 1000 and stale["age_ms"] > 3000
    assert stale["random"] is True and stale["height"] == HEIGHTS - 1
    page = http.get("/v1/beacon", params={"from": 3, "to": HEIGHTS}).json()
    assert page["from"] == 3 and page["to"] == HEIGHTS - 1
    assert page["next"] == f"/v1/beacon?from={HEIGHTS}&to={HEIGHTS}"
    assert_problem(http.get("/v1/beacon", params={"from": HEIGHTS + 1, "to": HEIGHTS + 2}),
                   404)
    assert_problem(http.get("/v1/beacon", params={"from": 5, "to": 4}), 400)


def test_a_range_whose_previous_block_cannot_be_read_is_unavailable_not_unverifiable(
        chain: LocalChain, monkeypatch: pytest.MonkeyPatch) -> None:
    """An archive that cannot give the block before ``from`` right now: 503 with Retry-After,
    not a range without the previous header (which no client can verify)."""
    gateway, _add_next, keys = partial_gateway(chain, HEIGHTS)
    http = TestClient(create_app(gateway), headers={"X-API-Key": keys["read"]})
    readable = GatewayPulses.block
    monkeypatch.setattr(GatewayPulses, "block",
                        lambda self, height: None if height == 4 else readable(self, height))
    problem = assert_problem(http.get("/v1/beacon", params={"from": 5, "to": 9}), 503)
    assert problem["type"].endswith("archive-unavailable") and "pulse 4" in problem["detail"]
    assert http.get("/v1/beacon", params={"from": 1, "to": 3}).status_code == 200


@pytest.mark.parametrize("accept, binary", [
    (PULSE_RANGE_MEDIA_TYPE, True),
    (f"{PULSE_RANGE_MEDIA_TYPE}, application/json;q=0.5", True),
    (f"application/json, {PULSE_RANGE_MEDIA_TYPE};q=0.9", False),
    (f"{PULSE_RANGE_MEDIA_TYPE};q=0", False),
    ("*/*", False),
    ("text/html, */*;q=0.8", False),
    ("", False),
])
def test_a_range_is_binary_only_when_the_client_prefers_it(chain: LocalChain, accept: str,
                                                            binary: bool) -> None:
    gateway, _add_next, keys = partial_gateway(chain, HEIGHTS - 1)
    http = TestClient(create_app(gateway), headers={"X-API-Key": keys["read"]})
    answer = http.get("/v1/beacon", params={"from": 3, "to": HEIGHTS}, headers={"Accept": accept})
    assert answer.status_code == 200 and answer.headers["vary"] == "Accept"
    assert answer.headers["content-type"].startswith(
        PULSE_RANGE_MEDIA_TYPE if binary else "application/json")
    json_etag = http.get("/v1/beacon", params={"from": 3, "to": HEIGHTS}).headers["etag"]
    assert (answer.headers["etag"] != json_etag) is binary  # one tag per representation
    if binary:  # the same pulses, in the encodings that are hashed; the rest by a Link
        page = decode_pulse_range(answer.content)
        records = [decode_finalized(r) for r in chain.records]
        assert [header for header, _ in page.pulses] == [
            r.block.header for r in records[2:HEIGHTS - 1]]
        assert [entropy for _, entropy in page.pulses] == [
            r.block.body.entropy for r in records[2:HEIGHTS - 1]]
        assert page.previous_header == records[1].block.header
        assert answer.headers["link"] == f'</v1/beacon?from={HEIGHTS}&to={HEIGHTS}>; rel="next"'
        assert answer.headers["cache-control"] == "no-cache"
        assert http.get("/v1/beacon", params={"from": 3, "to": HEIGHTS}, headers={
            "Accept": accept, "If-None-Match": answer.headers["etag"]}).status_code == 304
        whole = http.get("/v1/beacon", params={"from": 1, "to": 4}, headers={"Accept": accept})
        assert decode_pulse_range(whole.content).previous_header is None
        assert "immutable" in whole.headers["cache-control"] and "link" not in whole.headers


def test_an_idle_event_stream_sends_heartbeats(chain: LocalChain) -> None:
    gateway, add_next, keys = partial_gateway(chain, HEIGHTS - 1)
    gateway.heartbeat_s = 0.1
    http = TestClient(create_app(gateway), headers={"X-API-Key": keys["read"]})
    timer = threading.Timer(0.8, add_next)
    timer.start()
    text = http.get("/v1/stream/blocks", params={"from": HEIGHTS, "until": HEIGHTS}).text
    assert "event: heartbeat" in text and f"id: {HEIGHTS}\n" in text
    assert text.index("event: heartbeat") < text.index(f"id: {HEIGHTS}\n")


def test_the_sdk_awaits_a_future_pulse_by_height_and_by_time(chain: LocalChain) -> None:
    from sdk.beacon import BeaconClient
    from sdk.errors import PulseNotYetError
    from sdk.subscriber import TrustedCheckpoint

    gateway, add_next, keys = partial_gateway(chain, HEIGHTS - 2)
    http = TestClient(create_app(gateway), headers={"X-API-Key": keys["read"]})
    beacon = BeaconClient("http://testserver", client=http,
                          checkpoint=TrustedCheckpoint.from_genesis(chain.genesis))
    future_time = decode_finalized(chain.records[HEIGHTS - 1]).block.header.time_ms
    with pytest.raises(PulseNotYetError) as caught:
        beacon.at_or_after(future_time)
    assert caught.value.expected_at_ms is not None
    threading.Timer(0.3, add_next).start()
    assert beacon.wait_for_height(HEIGHTS - 1, timeout_s=10).height == HEIGHTS - 1
    threading.Timer(0.3, add_next).start()
    pulse = beacon.wait_for_time(future_time, timeout_s=10)
    assert pulse.height == HEIGHTS and pulse.time_ms >= future_time
    with pytest.raises(PulseNotYetError):
        beacon.wait_for_height(HEIGHTS + 1, timeout_s=0.3)


def test_a_pulse_is_proven_against_a_later_head_or_a_typed_problem(chain: LocalChain) -> None:
    gateway, add_next, keys = partial_gateway(chain, HEIGHTS - 2)
    http = TestClient(create_app(gateway), headers={"X-API-Key": keys["read"]})
    latest = http.get("/v1/beacon/3/proof")
    assert latest.status_code == 200 and latest.headers["cache-control"] == "no-cache"
    assert (latest.json()["head"], latest.json()["history"]["size"]) == (HEIGHTS - 2,
                                                                         HEIGHTS - 3)
    pinned = http.get("/v1/beacon/3/proof", params={"head": 6})
    assert "immutable" in pinned.headers["cache-control"]
    assert pinned.json()["history"] == {
        "size": 5, "index": 2, "root": decode_finalized(chain.records[5]).block.header
        .history_root.hex(), "path": pinned.json()["history"]["path"]}
    assert_problem(http.get("/v1/beacon/6/proof", params={"head": 6}), 409)
    assert_problem(http.get(f"/v1/beacon/{HEIGHTS - 2}/proof"), 409)
    assert_problem(http.get("/v1/beacon/3/proof", params={"head": HEIGHTS}), 404)
    add_next()
    assert http.get("/v1/beacon/3/proof", params={"head": HEIGHTS - 1}).status_code == 200


def test_a_gateway_that_started_above_height_one_proves_what_it_can(chain: LocalChain) -> None:
    full, keys = make_gateway(chain)
    spec = ChainSpec.load(chain.genesis)
    follower = spec.follower()
    started = type(full.view)(full.view.chain_id, full.view.genesis_randomness)
    blind = type(full.view)(full.view.chain_id, full.view.genesis_randomness)
    for offset, raw in enumerate(chain.records):
        record = decode_finalized(raw)
        validators = follower.chain.validators
        follower.accept(record)
        if record.height >= 8:  # as if from a snapshot after height 7
            started.add(raw, record, validators, offset, 0, follower.chain.tip.accumulator)
            blind.add(raw, record, validators, offset, 0)
    full.view = started
    http = TestClient(create_app(full), headers={"X-API-Key": keys["read"]})
    assert http.get("/v1/beacon/10/proof").status_code == 200
    missing = assert_problem(http.get("/v1/beacon/3/proof"), 410)
    assert missing["type"].endswith("/proof-not-available")
    assert missing["first_provable_height"] == 9
    full.view = blind  # it was given no history with its first block
    http = TestClient(create_app(full), headers={"X-API-Key": keys["read"]})
    unknown = assert_problem(http.get("/v1/beacon/10/proof"), 410)
    assert unknown["type"].endswith("/proof-not-available")
    assert unknown.get("first_provable_height") is None
