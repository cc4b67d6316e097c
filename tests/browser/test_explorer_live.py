"""The explorer in a real Chromium against a running network (4 validators, the tally, two
QRNG servers on Kafka), served by an in-process gateway whose data source is the test's: it
serves block ``TAMPERED`` with one bit of its randomness flipped (a ``ChainView`` subclass, not
a gateway flag).

Every page: loads with no console error and no request off loopback, weighs under 500 KB
(the crypto library aside), has no horizontal scroll at 390 px, and leaves a screenshot under
the test's directory. Live blocks appear within seconds; a block page says "verified"; the
tampered block's page names the randomness check, and its successor's the hash link.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from protocol.finalized import FinalizedRecord
from protocol.mmr import History
from protocol.validators import ValidatorSet
from services.gateway.api import Gateway, create_app
from services.gateway.auth import ApiKeyStore
from services.gateway.chain import ChainFollower, ChainView
from services.gateway.explorer.documents import GenesisAnchor
from services.gateway.explorer.feeds import NetworkFeeds
from services.ledger.core.chain_spec import ChainSpec
from streams.chain_wire import decode_finalized
from streams.settings import Settings
from tests.browser.chains import TAMPERINGS
from tests.browser.harness import (
    at_phone_width,
    chromium,
    horizontal_overflow,
    report,
    served,
    wait_for,
)
from tests.integration.test_chain_e2e import network_factory  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

TAMPERED = 3
GOOD = 5
MAX_PAGE_BYTES = 500_000
LIVE_WITHIN_S = 15.0


class TamperingView(ChainView):
    """The test's data source: block ``TAMPERED`` is stored (and so served) with a flipped
    randomness bit, as a compromised gateway or cache would serve it."""

    def add(self, raw: bytes, record: FinalizedRecord, validators: ValidatorSet, offset: int,
            written_at_ms: int, history: History | None = None) -> None:
        if record.height == TAMPERED:
            raw = TAMPERINGS["randomness bit"][1](raw)
            record = decode_finalized(raw)
        super().add(raw, record, validators, offset, written_at_ms, history)


def _gateway(settings: Settings, genesis: Path) -> Gateway:
    spec = ChainSpec.load(genesis)
    view = TamperingView(spec.chain_id, spec.initial.tip.previous_randomness)
    feeds = NetworkFeeds(settings)
    gateway = Gateway(view=view, keys=ApiKeyStore(None), genesis=GenesisAnchor.of_spec(spec),
                      feeds=feeds)

    def on_block(verified: Any) -> None:
        gateway.ledger.state = verified.chain.app_state

    follower = ChainFollower(settings, genesis, view, on_block)
    gateway.starters += [follower.start, feeds.start]
    gateway.stoppers += [follower.stop, feeds.stop]
    return gateway


def _ready(driver: Any, path: str) -> None:
    if path == "/docs":
        wait_for(driver, "return document.querySelectorAll('.opblock').length > 5", 60)
    else:
        state = wait_for(driver, "return document.body.dataset.ready", 90)
        assert state == "true", driver.find_element("id", "app").text


def test_explorer_against_a_running_network(network_factory: Any, settings: Settings,  # noqa: F811
                                            tmp_path: Path) -> None:
    network = network_factory()
    genesis = network.root / "net" / "genesis.json"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with served(create_app(_gateway(settings, genesis))) as url, \
            chromium(tmp_path / "profile") as driver:
        deadline = time.monotonic() + 180
        head = 0
        while head < GOOD + 1:
            assert time.monotonic() < deadline, f"head {head}\n{network.log('tally')}"
            network.supervisor.tick()
            head = (httpx.get(f"{url}/explorer/api/chain").json()["head"] or {}).get("height", 0)
            time.sleep(0.5)
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
        good_time = decode_time(url, GOOD)
        pages = ["/", "/blocks", f"/blocks/{GOOD}", f"/blocks/{TAMPERED}",
                 f"/blocks/{TAMPERED + 1}", "/validators", "/qrng", "/beacon",
                 f"/beacon?time_ms={good_time}", "/docs"]
        weights: dict[str, int] = {}
        for path in pages:
            driver.get(url + path)
            _ready(driver, path)
            if path == "/":
                _live_blocks_appear(driver)
            if path.startswith("/blocks/"):
                wait_for(driver, "return document.querySelector('#verdict [data-verdict]')")
            name = path.strip("/").replace("/", "-").replace("?", "-").replace("=", "-") or "home"
            driver.save_screenshot(str(shots / f"{name}.png"))
            page = report(driver)
            assert not page.console_errors, (path, page.console_errors)
            assert not page.off_loopback, (path, page.off_loopback)
            weights[path] = page.weight(exclude=("/assets/crypto.js",))
            if path != "/docs":  # Swagger UI's own bundle is the API reference's weight
                assert weights[path] < MAX_PAGE_BYTES, (path, weights[path])
            at_phone_width(driver)
            driver.get(url + path)
            _ready(driver, path)
            assert horizontal_overflow(driver) <= 0, (path, horizontal_overflow(driver))
            driver.save_screenshot(str(shots / f"{name}-390px.png"))
            driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
            page = report(driver)
            assert not page.console_errors, (path, page.console_errors)

            if path == f"/blocks/{GOOD}":
                assert _verdict(driver) == ("verified", "✔ Verified in your browser")
                assert _pulse(driver) in ("true", "false")  # decided here, from the header
            elif path == f"/blocks/{TAMPERED}":
                check, text = _verdict(driver)
                assert check == "randomness" and "randomness check failed" in text, text
                assert _pulse(driver) == "unknown"  # an unverified header proves nothing
            elif path == f"/blocks/{TAMPERED + 1}":
                assert _verdict(driver)[0] == "hash_link"
            elif path.startswith("/beacon?time_ms"):
                assert driver.find_element("css selector", "#pulse h2").text == f"Pulse {GOOD}"
                assert _verdict(driver)[0] == "verified"
        print("page weights (bytes, crypto library aside):", weights)
    assert sorted(p.name for p in shots.iterdir()) and len(list(shots.iterdir())) == 2 * len(pages)


def decode_time(url: str, height: int) -> int:
    return int(httpx.get(f"{url}/explorer/api/beacon/{height}").json()["time_ms"])


def _verdict(driver: Any) -> tuple[str, str]:
    element = driver.find_element("css selector", "#verdict strong[data-verdict]")
    return element.get_attribute("data-verdict"), element.text


def _pulse(driver: Any) -> str:
    return str(driver.find_element("css selector", "#pulse-status").get_attribute("data-random"))


def _live_blocks_appear(driver: Any) -> None:
    """A block newer than those the page loaded with arrives over SSE, verified, in seconds."""
    wait_for(driver, "return document.querySelectorAll('#blocks tr[data-height]').length >= 3")
    first = driver.execute_script(
        "return Math.max(...[...document.querySelectorAll('#blocks tr[data-height]')]"
        ".map(r => Number(r.dataset.height)))")
    started = time.monotonic()
    wait_for(driver, f"return [...document.querySelectorAll('#blocks tr[data-height]')]"
                     f".some(r => Number(r.dataset.height) > {first}"
                     f" && r.querySelector('[data-verdict=verified]'))", LIVE_WITHIN_S)
    assert time.monotonic() - started < LIVE_WITHIN_S
