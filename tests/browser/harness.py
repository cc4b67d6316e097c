"""Browser test support: an in-process gateway on loopback and a headless Debian Chromium
driven by Selenium, with what a page did recorded from the DevTools performance log.

The browser resolves no host but 127.0.0.1 (``--host-resolver-rules``), and every request it
attempts is read back from the log, so a page that reaches for a CDN both fails and is named.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
         "--window-size=1280,1000")
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def served(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port, in a thread; yields its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def chromium(profile: Path) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a fresh profile, logging the console and the network."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(120)
    driver.get("about:blank")
    report(driver)  # the browser's own start-up pages are not the explorer's
    try:
        yield driver
    finally:
        driver.quit()


@dataclass
class PageReport:
    """What the browser did since the last report: console errors, requests, bytes."""

    console_errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    bytes_by_url: dict[str, int] = field(default_factory=dict)

    @property
    def off_loopback(self) -> list[str]:
        return [url for url in self.urls if urlparse(url).scheme in ("http", "https", "ws", "wss")
                and urlparse(url).hostname not in LOOPBACK]

    def weight(self, exclude: tuple[str, ...] = ()) -> int:
        """Bytes received over HTTP (compressed, headers included), ``exclude``d URLs aside."""
        return sum(size for url, size in self.bytes_by_url.items()
                   if urlparse(url).scheme in ("http", "https")
                   and not any(part in url for part in exclude))


def report(driver: webdriver.Chrome) -> PageReport:
    """Drain the logs (each call reports what happened since the previous one)."""
    out = PageReport()
    for entry in driver.get_log("browser"):
        if entry["level"] == "SEVERE":
            out.console_errors.append(entry["message"])
    urls: dict[str, str] = {}
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            urls[params["requestId"]] = params["request"]["url"]
            out.urls.append(params["request"]["url"])
        elif message["method"] == "Network.loadingFinished":
            url = urls.get(params["requestId"])
            if url is not None:
                out.bytes_by_url[url] = out.bytes_by_url.get(url, 0) + int(
                    params.get("encodedDataLength", 0))
        elif message["method"] == "Network.loadingFailed":
            url = urls.get(params["requestId"], "?")
            if params.get("errorText") != "net::ERR_ABORTED":
                out.console_errors.append(f"request failed: {url} {params.get('errorText')}")
    return out


def wait_for(driver: webdriver.Chrome, script: str, timeout_s: float = 60.0) -> Any:
    """Poll ``script`` (returning a value) until it is truthy; the value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {script}\n{driver.page_source[:3000]}")
        time.sleep(0.2)


def at_phone_width(driver: webdriver.Chrome, width: int = 390) -> None:
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": 844, "deviceScaleFactor": 1, "mobile": True})


def horizontal_overflow(driver: webdriver.Chrome) -> int:
    """Pixels the page is wider than the viewport (0: no horizontal scroll)."""
    return int(driver.execute_script(
        "return Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
        " - window.innerWidth"))
