"""The explorer's routes on the gateway app, in-process: pages and assets without a key and
with a CSP forbidding other origins, the keyless read-only API, beacon lookup by time, the
event stream's slot accounting, and the per-address rate limit."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from protocol.codec import decode_block, decode_commit
from sdk.testing import LocalChain, make_local_chain
from services.gateway.api import Gateway, create_app
from services.gateway.explorer.routes import BURST, DIST
from services.gateway.ratelimit import RateLimiter
from streams.chain_wire import decode_finalized
from tests.browser.chains import local_gateway

HEIGHTS = 8


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> LocalChain:
    return make_local_chain(tmp_path_factory.mktemp("explorer-chain"), HEIGHTS)


@pytest.fixture
def gateway(chain: LocalChain) -> Gateway:
    return local_gateway(chain)


def test_pages_and_assets_need_no_key_and_load_nothing_from_elsewhere(gateway: Gateway) -> None:
    assert (DIST / "index.html").exists(), "the explorer is not built: make install"
    http = TestClient(create_app(gateway))
    for path in ("/", "/blocks", "/blocks/3", "/validators", "/qrng", "/beacon", "/docs"):
        page = http.get(path)
        assert page.status_code == 200, path
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "connect-src 'self'" in csp
        # Every script, stylesheet and icon the HTML names is local.
        for url in re.findall(r'(?:src|href)="([^"]+)"', page.text):
            assert url.startswith(("/", "data:")) and not url.startswith("//"), (path, url)
    packed = http.get("/assets/app.js", headers={"Accept-Encoding": "gzip"})
    assert packed.status_code == 200 and packed.headers["content-encoding"] == "gzip"
    assert packed.headers["content-type"].startswith("text/javascript")
    assert http.get("/assets/../explorer/routes.py").status_code == 404
    assert http.get("/assets/app.js.gz").status_code == 404
    assert http.get("/v1/chain/head").status_code == 200  # public read, no key
    assert http.get(f"/v1/users/{'a' * 40}").status_code == 401  # keyed parts stay guarded


def test_blocks_travel_as_the_canonical_bytes_the_chain_signed(gateway: Gateway,
                                                               chain: LocalChain) -> None:
    http = TestClient(create_app(gateway))
    doc = http.get("/explorer/api/chain").json()
    assert doc["head"]["height"] == HEIGHTS and doc["genesis"]["chain_id"] == doc["chain_id"]
    for height, raw in enumerate(chain.records, 1):
        record = decode_finalized(raw)
        served = http.get(f"/explorer/api/blocks/{height}").json()
        assert decode_block(base64.b64decode(served["block"])) == record.block
        assert decode_commit(base64.b64decode(served["commit"])) == record.commit
        header = http.get(f"/explorer/api/headers/{height}").json()["header"]
        assert base64.b64decode(header) == record.block.header.canonical()
    many = http.get("/explorer/api/blocks", params={"from": 2, "count": 100}).json()["blocks"]
    assert [b["height"] for b in many] == list(range(2, HEIGHTS + 1))
    assert http.get(f"/explorer/api/blocks/{HEIGHTS + 1}").status_code == 404
    timeline = http.get("/explorer/api/timeline").json()["blocks"]
    assert [b["height"] for b in timeline] == list(range(1, HEIGHTS + 1))


def test_beacon_by_time_is_the_pulse_in_force(gateway: Gateway, chain: LocalChain) -> None:
    http = TestClient(create_app(gateway))
    times = [decode_finalized(raw).block.header.time_ms for raw in chain.records]
    for height, at in enumerate(times, 1):
        for probe in (at, at + 1, (times[height] - 1) if height < HEIGHTS else at + 10_000):
            pulse = http.get("/explorer/api/beacon", params={"time_ms": probe}).json()
            assert pulse["height"] == height, (height, probe)
    early = http.get("/explorer/api/beacon", params={"time_ms": times[0] - 1})
    assert early.status_code == 404 and early.json()["status"] == 404


def test_staking_and_sources_documents(gateway: Gateway) -> None:
    http = TestClient(create_app(gateway))
    staking = http.get("/explorer/api/staking").json()
    assert len(staking["validators"]) == 4
    for row in staking["validators"]:
        assert row["tokens"] == row["self_stake"] + row["delegated_stake"]
        assert row["uptime"] == "1" * HEIGHTS and row["uptime_ratio"] == 1.0
        assert row["active"] and not row["jailed"] and not row["tombstoned"]
    qrng = http.get("/explorer/api/qrng").json()
    assert {s["source_id"] for s in qrng["sources"]} == {"qrng-0", "qrng-1"}
    assert all(s["registered"] and s["health_state"] == "UNKNOWN" for s in qrng["sources"])
    assert http.get("/explorer/api/alerts").json() == {"open": [], "recent": [],
                                                        "available": False}


def test_stream_sends_blocks_and_gives_its_slot_back(gateway: Gateway) -> None:
    http = TestClient(create_app(gateway))
    with http.stream("GET", "/explorer/api/stream", params={"from": 3, "until": 5}) as answer:
        events = [json.loads(line[6:]) for line in answer.iter_lines()
                  if line.startswith("data: ")]
    assert [e["height"] for e in events] == [3, 4, 5]
    assert gateway.streams.held("explorer:testclient") == 0


def test_keyless_api_is_rate_limited_per_address(gateway: Gateway) -> None:
    gateway.limiter = RateLimiter(clock=lambda: 0.0)  # no refill during the test
    http = TestClient(create_app(gateway))
    codes: list[Any] = [http.get("/explorer/api/chain").status_code for _ in range(BURST + 20)]
    assert codes[0] == 200 and codes[-1] == 429
    last = http.get("/explorer/api/chain")
    assert last.headers["content-type"].startswith("application/problem+json")
    assert Path(DIST).is_dir()


def test_feeds_fold_heartbeats_and_alerts() -> None:
    from services.gateway.explorer.feeds import RATE_HISTORY, AlertBoard, SourceBoard

    sources = SourceBoard()
    for at in range(RATE_HISTORY + 5):
        sources.apply("QrngHeartbeatEmitted", {
            "source_id": "q", "at_ms": 1000 * at, "bytes_per_s": float(at), "chunks_published": at,
            "last_seq": at - 1, "health_state": "HEALTHY", "simulated": False, "rct_failures": 1,
            "apt_failures": 2, "dropped_bytes": 0, "publish_latency_ms": 1.5})
    sources.apply("QrngAlertRaised", {"source_id": "q", "at_ms": 7, "kind": "HEALTH_FAILURE",
                                      "test": "RCT", "detail": "stuck"})
    [row] = sources.document(1000 * (RATE_HISTORY + 5), {"q": True})
    assert row["health_state"] == "HEALTHY" and row["failed_windows"] == 3
    assert row["simulated"] and row["registered"] and row["heartbeat_age_ms"] == 1000
    assert len(row["rates"]) == RATE_HISTORY and row["rates"][-1][1] == RATE_HISTORY + 4
    assert row["alerts"][0]["kind"] == "HEALTH_FAILURE"

    alerts = AlertBoard()
    common = {"alert_id": "a1", "rule": "qrng_rate", "severity": "warning", "subject": "q",
              "value": 0.0, "since_ms": 5, "summary": "slow"}
    alerts.apply("AlertRaised", {**common, "threshold": 1.0, "raised_at_ms": 6, "labels": {}})
    assert [a["subject"] for a in alerts.document()["open"]] == ["q"]
    alerts.apply("AlertResolved", {**common, "resolved_at_ms": 9})
    document = alerts.document()
    assert document["open"] == [] and [a["state"] for a in document["recent"]] == [
        "resolved", "raised"]


def test_chain_document_names_the_latest_random_pulse(tmp_path: Path) -> None:
    # Blocks 4 and 5 carry no fresh entropy (nor does 1: its chunks were committed to by
    # nothing), and 3 only one of two sources: the hint the page verifies for itself is block 2,
    # as /v1/beacon/latest would serve it.
    contributing = {1: 2, 2: 2, 3: 1, 4: 0, 5: 0}
    chain = make_local_chain(tmp_path, 5, sources_at=contributing.__getitem__)
    http = TestClient(create_app(local_gateway(chain)))
    doc = http.get("/explorer/api/chain").json()
    assert doc["head"]["height"] == 5 and doc["latest_random_height"] == 2
    statuses = [http.get(f"/explorer/api/beacon/{h}").json()["status"] for h in range(1, 6)]
    assert statuses == [257, 0, 512, 256, 256]
