"""The explorer's routes on the gateway's app: pages, assets, the local API reference and a
keyless, read-only JSON API under ``/explorer/api`` (rate limited per client address).

Pages are one HTML file (the script routes on the path) plus the assets built from npm packages
by ``make install`` into ``web/dist`` (``npm ci`` against the committed lock file, then esbuild):
nothing is fetched from another origin, and every page carries a Content-Security-Policy that
forbids it. Assets are served pre-compressed when the browser accepts gzip.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from services.gateway.explorer.documents import (
    block_document,
    chain_document,
    header_document,
    height_at_time,
    staking_document,
    timeline_document,
)
from services.gateway.explorer.feeds import SourceBoard
from services.gateway.problems import Problem, too_many, unavailable
from services.gateway.ratelimit import Limited

if TYPE_CHECKING:
    from services.gateway.api import Gateway

DIST = Path(__file__).resolve().parents[1] / "web" / "dist"
PAGES = ("/", "/blocks", "/validators", "/qrng", "/beacon")
PREFIX = "/explorer/api"
RATE_PER_S = 50.0  # per client address, keyless
BURST = 200
STREAMS_PER_CLIENT = 16
MAX_RANGE = 100
KEEP_ALIVE_S = 15.0
# What a page may load: itself only (no CDN, no font service, no analytics); inline styles for
# the API reference's widgets.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html",
         ".json": "application/json", ".png": "image/png", ".svg": "image/svg+xml",
         ".map": "application/json"}

height_path = Annotated[int, PathParam(ge=1, le=2**62)]
NOT_BUILT = ("<!doctype html><title>QuStream explorer</title><p>The explorer's assets are not "
             "built. Run <code>make install</code> (it runs <code>npm ci</code> and "
             "<code>npm run build</code> in services/gateway/web).</p>")


def _json(document: Any) -> Response:
    return Response(json.dumps(document, separators=(",", ":")).encode(),
                    media_type="application/json")


def _stored(body: bytes | None, height: int, view: Any) -> Response:
    if body is None:
        if view.head_height and height < view.first_height:
            raise Problem(410, "block-not-retained",
                          f"blocks before {view.first_height} are not kept here")
        raise Problem(404, "block-not-found", f"no block {height} yet")
    return Response(body, media_type="application/json")


def install_explorer(app: FastAPI, gateway: Gateway) -> None:
    """Add the explorer's pages, assets, ``/docs`` and the ``/explorer/api`` routes."""
    view = gateway.view

    def client(request: Request) -> str:
        """Charge the keyless client's address; 429 when over its rate."""
        address = request.client.host if request.client else "unknown"
        try:
            gateway.limiter.take(f"explorer:{address}", RATE_PER_S, BURST)
        except Limited as exc:
            raise too_many("rate-limited", f"over the {exc.what}", exc.retry_after_s) from exc
        return address

    def page() -> Response:
        index = DIST / "index.html"
        if not index.exists():
            return HTMLResponse(NOT_BUILT, status_code=503, headers=PAGE_HEADERS)
        return FileResponse(index, media_type="text/html", headers=PAGE_HEADERS)

    for path in PAGES:
        app.add_api_route(path, page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/blocks/{height}", page, methods=["GET"], include_in_schema=False)

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        index = DIST / "docs.html"
        if not index.exists():
            return HTMLResponse(NOT_BUILT, status_code=503, headers=PAGE_HEADERS)
        return FileResponse(index, media_type="text/html", headers=PAGE_HEADERS)

    @app.get("/assets/{name:path}", include_in_schema=False)
    def asset(name: str, accept_encoding: Annotated[str, Header()] = "") -> Response:
        file = (DIST / name).resolve()
        if DIST.resolve() not in file.parents or not file.is_file() or file.suffix == ".gz":
            raise Problem(404, "not-found", f"no asset {name}")
        headers = {"Cache-Control": "public, max-age=300", "Vary": "Accept-Encoding",
                   "X-Content-Type-Options": "nosniff"}
        media_type = TYPES.get(file.suffix, "application/octet-stream")
        packed = file.with_name(file.name + ".gz")
        if "gzip" in accept_encoding and packed.is_file():
            return FileResponse(packed, media_type=media_type,
                                headers={**headers, "Content-Encoding": "gzip"})
        return FileResponse(file, media_type=media_type, headers=headers)

    # ------------------------------------------------------------------ keyless JSON API
    def route(path: str, summary: str, **kwargs: Any) -> Callable[[Any], Any]:
        return app.get(f"{PREFIX}{path}", tags=["explorer"], summary=summary, **kwargs)

    @route("/chain", "Chain id, the genesis a page checks block 1 against, and the head")
    def explorer_chain(request: Request) -> Response:
        client(request)
        return _json(chain_document(view, gateway.genesis))

    @route("/blocks/{height}", "A block's canonical bytes and certificate (base64), to verify "
                               "in the page; times, offset and state hash as reported")
    def explorer_block(height: height_path, request: Request) -> Response:
        client(request)
        return _stored(view.rendered("explorer-block", height, block_document), height, view)

    @route("/headers/{height}", "A block header's canonical bytes (the link the next block "
                                "is checked against)")
    def explorer_header(height: height_path, request: Request) -> Response:
        client(request)
        return _stored(view.rendered("explorer-header", height, header_document), height, view)

    @route("/blocks", "Up to 100 consecutive blocks (as /explorer/api/blocks/{height})")
    def explorer_blocks(
        request: Request,
        from_: Annotated[int, Query(alias="from", ge=1, le=2**62)] = 1,
        count: Annotated[int, Query(ge=1, le=MAX_RANGE)] = 10,
    ) -> Response:
        client(request)
        parts = [view.rendered("explorer-block", h, block_document) or b"null"
                 for h in view.heights(from_, from_ + count - 1)]
        return Response(b'{"blocks":[%s]}' % b",".join(parts), media_type="application/json")

    @route("/timeline", "Times of the last blocks: block time, proposal and finality as the "
                        "tally observed them (the charts)")
    def explorer_timeline(request: Request,
                          count: Annotated[int, Query(ge=1, le=2000)] = 300) -> Response:
        client(request)
        return _json({"blocks": timeline_document(view, count)})

    @route("/validators/{height}", "The validator set of a height (its hash is in the header)")
    def explorer_validator_set(height: height_path, request: Request) -> Response:
        client(request)
        return _stored(view.validators_json(height), height, view)

    @route("/staking", "Validators: power, commission, self and delegated stake, missed "
                       "blocks, jail, and their signing record over the last 100 blocks")
    def explorer_staking(request: Request) -> Response:
        client(request)
        state = gateway.ledger.state
        if state is None:
            raise unavailable("chain-not-ready", "the gateway has not read the chain yet", 2)
        return _json(staking_document(state, view))

    @route("/qrng", "QRNG sources: rate, health state, simulated flag, their own alerts")
    def explorer_qrng(request: Request) -> Response:
        client(request)
        state = gateway.ledger.state
        registered = ({s.source_id: s.simulated for s in state.qrng_sources.values()}
                      if state is not None else {})
        now_ms = time.time_ns() // 1_000_000
        feeds = gateway.feeds
        if feeds is None:  # the chain's registry alone
            return _json({"sources": SourceBoard().document(now_ms, registered),
                          "error": "this gateway does not follow qrng.status"})
        with feeds.lock:
            sources = feeds.sources.document(now_ms, registered)
        return _json({"sources": sources, "error": feeds.error})

    @route("/alerts", "The monitor's open alerts and recent alert events (alerts topic)")
    def explorer_alerts(request: Request) -> Response:
        client(request)
        feeds = gateway.feeds
        if feeds is None or not feeds.alerts_available:
            return _json({"open": [], "recent": [], "available": False})
        with feeds.lock:
            return _json({**feeds.alerts.document(), "available": True})

    @route("/beacon/{height}", "The pulse of a height with its proof")
    def explorer_beacon(height: height_path, request: Request) -> Response:
        client(request)
        return _stored(view.beacon_json(height) if view.get(height) is not None else None,
                       height, view)

    @route("/beacon", "The pulse in force at a time: the last block at or before time_ms")
    def explorer_beacon_at(request: Request,
                           time_ms: Annotated[int, Query(ge=0, le=2**62)]) -> Response:
        client(request)
        height = height_at_time(view, time_ms)
        if height is None:
            raise Problem(404, "no-pulse-at-time",
                          f"no retained block at or before {time_ms} (first retained block: "
                          f"{view.first_height})")
        return _stored(view.beacon_json(height), height, view)

    @route("/stream", "Server-sent events of blocks (as /explorer/api/blocks/{height}); "
                      "resume with Last-Event-ID", response_class=StreamingResponse,
           responses={200: {"content": {"text/event-stream": {}}}})
    async def explorer_stream(
        request: Request,
        from_: Annotated[int | None, Query(alias="from", ge=1, le=2**62)] = None,
        until: Annotated[int | None, Query(ge=1, le=2**62)] = None,
        last_event_id: Annotated[str | None, Header(max_length=24)] = None,
    ) -> StreamingResponse:
        address = client(request)
        if last_event_id is not None and not last_event_id.isdigit():
            raise Problem(400, "invalid-last-event-id", "Last-Event-ID is a block height")
        start = (int(last_event_id) + 1 if last_event_id is not None
                 else from_ if from_ is not None else max(1, view.head_height + 1))
        start = max(start, view.first_height)
        slot = f"explorer:{address}"
        try:
            gateway.streams.acquire(slot, STREAMS_PER_CLIENT)
        except Limited as exc:
            raise too_many("too-many-streams", f"over the {exc.what}", exc.retry_after_s) from exc
        held = [True]

        def release() -> None:
            # Once, from whichever comes first: the stream's end or the response's end (a
            # client that leaves before the first event never runs the generator at all).
            if held[0]:
                held[0] = False
                gateway.streams.release(slot)

        async def events() -> AsyncIterator[bytes]:
            height = start
            quiet_since = time.monotonic()
            try:
                yield b"retry: 1000\n\n"
                while until is None or height <= until:
                    body = view.rendered("explorer-block", height, block_document)
                    if body is not None:
                        yield b"id: %d\nevent: block\ndata: %s\n\n" % (height, body)
                        height += 1
                        quiet_since = time.monotonic()
                    elif (not await view.wait_beyond(height - 1, 2.0)
                          and time.monotonic() - quiet_since >= KEEP_ALIVE_S):
                        yield b": keep-alive\n\n"
                        quiet_since = time.monotonic()
            finally:
                release()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"},
                                 background=BackgroundTask(release))
