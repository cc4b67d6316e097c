"""API keys revoked while a gateway runs, and the per-key cap on event streams (issue 16,
items 14 and 17).

Revocation goes through the key file exactly as ``qustream gateway api-key revoke`` does it
(another ``ApiKeyStore`` on the same file). Event streams are driven through the ASGI interface
directly, so several can be open at once and a client can go away mid-stream.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway.api import RECHECK_S, Gateway, create_app
from services.gateway.auth import REFRESH_S, ApiKeyStore, parse_key
from services.gateway.chain import ChainView


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=40, deadline=None)
@given(st.floats(0.05, 30.0), st.lists(st.floats(0.0, 60.0), max_size=6))
def test_property_a_revoked_key_is_refused_once_the_refresh_interval_passed(
        refresh_s: float, waits: list[float]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "api-keys.json"
        key = ApiKeyStore(path).create(("read",))
        clock = FakeClock()
        gateway_store = ApiKeyStore(path, refresh_s=refresh_s, clock=clock)
        assert gateway_store.lookup(key) is not None
        for wait in waits:  # the gateway keeps serving while nothing changes
            clock.now += wait
            assert gateway_store.lookup(key) is not None
        time.sleep(0.002)  # a new modification time, as a real revoke seconds later has
        assert ApiKeyStore(path).revoke(parse_key(key))  # the CLI, in another process
        clock.now += refresh_s + 1e-6  # (in float seconds)
        assert gateway_store.lookup(key) is None
        record = ApiKeyStore(path).records()
        assert record == []


def test_a_key_revoked_with_the_cli_stops_working_in_a_running_gateway(tmp_path: Path) -> None:
    path = tmp_path / "api-keys.json"
    key = ApiKeyStore(path).create(("read",))
    other = ApiKeyStore(path).create(("read",))
    gateway = Gateway(view=ChainView("qustream-test", bytes(64)), keys=ApiKeyStore(path))
    http = TestClient(create_app(gateway))
    assert http.get("/v1/chain/head", headers={"X-API-Key": key}).status_code == 200
    ApiKeyStore(path).revoke(parse_key(key))
    deadline = time.monotonic() + REFRESH_S + 2.0
    while http.get("/v1/chain/head", headers={"X-API-Key": key}).status_code == 200:
        assert time.monotonic() < deadline, "the revoked key still works"
        time.sleep(0.05)
    assert http.get("/v1/chain/head", headers={"X-API-Key": key}).status_code == 401
    assert http.get("/v1/chain/head", headers={"X-API-Key": other}).status_code == 200


def test_a_missing_or_unreadable_key_file_refuses_every_key(tmp_path: Path) -> None:
    path = tmp_path / "api-keys.json"
    key = ApiKeyStore(path).create(("read",))
    clock = FakeClock()
    store = ApiKeyStore(path, clock=clock)
    assert store.lookup(key) is not None
    path.write_text("{not json")
    clock.now += REFRESH_S + 1e-6
    assert store.lookup(key) is None
    path.unlink()
    clock.now += REFRESH_S + 1e-6
    assert store.lookup(key) is None


# --- event streams over ASGI ----------------------------------------------------------------


class Stream:
    """One ``GET /v1/stream/blocks`` call on the ASGI app; ``leave()`` disconnects."""

    def __init__(self, app: Any, key: str) -> None:
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._gone = asyncio.Event()
        self._asked = False
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": "/v1/stream/blocks",
                 "raw_path": b"/v1/stream/blocks", "query_string": b"from=1", "root_path": "",
                 "headers": [(b"x-api-key", key.encode()), (b"host", b"testserver")],
                 "server": ("testserver", 80), "client": ("127.0.0.1", 5000)}
        self.task = asyncio.ensure_future(app(scope, self._receive, self.messages.put))

    async def _receive(self) -> dict[str, Any]:
        if not self._asked:
            self._asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def status(self) -> int:
        start = await asyncio.wait_for(self.messages.get(), 10)
        assert start["type"] == "http.response.start"
        return int(start["status"])

    async def leave(self) -> None:
        self._gone.set()
        await asyncio.wait_for(self.task, 10)


def stream_gateway(max_streams: int, path: Path | None = None,
                   refresh_s: float = REFRESH_S) -> tuple[Gateway, Any, list[str]]:
    store = ApiKeyStore(path, refresh_s=refresh_s)
    keys = [store.create(("read",), max_streams=max_streams) for _ in range(2)]
    gateway = Gateway(view=ChainView("qustream-test", bytes(64)), keys=store)
    return gateway, create_app(gateway), keys


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 4), st.lists(st.booleans(), min_size=1, max_size=12))
def test_property_open_streams_per_key_never_exceed_the_cap(cap: int,
                                                            opens: list[bool]) -> None:
    """``True`` opens a stream, ``False`` closes the oldest open one: an open succeeds exactly
    when fewer than ``cap`` are open, and another key is never affected."""

    async def scenario() -> None:
        gateway, app, (key, bystander) = stream_gateway(cap)
        key_id = parse_key(key)
        open_streams: list[Stream] = []
        for want_open in opens:
            if want_open:
                stream = Stream(app, key)
                status = await stream.status()
                if len(open_streams) < cap:
                    assert status == 200
                    open_streams.append(stream)
                else:
                    assert status == 429
                    await asyncio.wait_for(stream.task, 10)
            elif open_streams:
                await open_streams.pop(0).leave()
            assert gateway.streams.held(key_id) == len(open_streams) <= cap
        other = Stream(app, bystander)
        assert await other.status() == 200
        await other.leave()
        for stream in open_streams:
            await stream.leave()
        assert gateway.streams.held(key_id) == 0

    asyncio.run(scenario())


def test_an_open_stream_ends_when_its_key_is_revoked(tmp_path: Path) -> None:
    path = tmp_path / "api-keys.json"

    async def scenario() -> None:
        gateway, app, (key, other) = stream_gateway(2, path, refresh_s=0.1)
        revoked, kept = Stream(app, key), Stream(app, other)
        assert await revoked.status() == 200 and await kept.status() == 200
        time.sleep(0.002)
        ApiKeyStore(path).revoke(parse_key(key))
        await asyncio.wait_for(revoked.task, RECHECK_S + 5)  # the server ended it
        assert not kept.task.done()
        assert gateway.streams.held(parse_key(key)) == 0
        await kept.leave()

    asyncio.run(scenario())
