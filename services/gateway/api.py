"""The gateway's HTTP API (``/v1``), built by ``create_app`` from explicit components.

Nothing connects at import: ``build_gateway(settings, genesis, ...)`` wires the real
components (chain follower, private pool, Kafka transaction sink, Cassandra reads) and
``create_app`` starts their threads in the app's lifespan. Tests and benches pass their own
components (e.g. a ``ChainView`` filled from ``sdk.testing``).

Endpoints (scopes in brackets; every error is an RFC 9457 problem document):
``GET /v1/chain/head``, ``/v1/blocks/{height}``, ``/v1/blocks?from=&to=``,
``/v1/validators/{height}``, the beacon (``services.gateway.beacon``: latest, by height, by
time, ranges, health), ``/v1/stream/blocks`` (SSE, with heartbeat events) [read, or no key at
all: public reads, ``services.gateway.public``]; ``/v1/accounts/{address}`` [read];
``POST /v1/keys`` [keys];
``POST /v1/users``, ``GET /v1/users/{id}``, ``POST|PUT|GET|DELETE
/v1/users/{id}/records/{rid}`` [users]; ``/healthz``, ``/readyz``, ``/metrics`` (no key).
The web explorer (pages under ``/``, ``/docs``, the keyless read-only ``/explorer/api``) is
added by ``services.gateway.explorer.routes``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.responses import Response, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from protocol.keydelivery import MAX_LENGTH, MIN_LENGTH
from services.gateway.auth import REFRESH_S, ApiKeyRecord, ApiKeyStore, key_from_headers
from services.gateway.beacon import IMMUTABLE, NO_CACHE, cached, install_beacon
from services.gateway.chain import (
    ChainView,
    StoredBlock,
    _dumps,
    block_document,
    etag_of,
    sse_document,
    sse_event,
    validators_document,
)
from services.gateway.explorer.documents import GenesisAnchor
from services.gateway.explorer.feeds import NetworkFeeds
from services.gateway.explorer.routes import install_explorer
from services.gateway.keys import KeyRequest, KeyService, LedgerView
from services.gateway.problems import (
    PROBLEM_JSON,
    Problem,
    install,
    not_offered,
    problem_body,
    too_many,
    unavailable,
)
from services.gateway.public import PublicReads, anonymous_record, is_public
from services.gateway.pulses import GatewayPulses
from services.gateway.ratelimit import Limited, RateLimiter, StreamSlots
from services.gateway.users import (
    SignedCommandIn,
    UserBackend,
    build_command,
    parse_min_offset,
    record_document,
    reply_document,
    user_document,
)

JSON = "application/json"
MAX_RANGE = 100
NOT_RETAINED = ("block %d is older than this gateway's window and neither its block store nor "
                "chain.blocks (at an offset it verified) gives it")
STREAM_PATH = "/v1/stream/blocks"
HEARTBEAT_S = 15.0  # an SSE heartbeat event at least this often on an idle stream
RECHECK_S = 2.0  # an open stream re-checks its API key at least this often (revocation)
ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"

# Annotation aliases live at module level: with postponed annotations FastAPI resolves them
# in the module's namespace.
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
bearer = HTTPBearer(auto_error=False)
height_path = Annotated[int, PathParam(ge=1, le=2**62)]
user_path = Annotated[str, PathParam(pattern=r"^[0-9a-f]{40}$")]
record_path = Annotated[str, PathParam(pattern=ID_PATTERN)]
min_offset_query = Annotated[str | None, Query(pattern=r"^\d{1,9}:\d{1,18}$",
                                               description="partition:offset of a write")]


@dataclass
class Gateway:
    """The components one gateway process serves from."""

    view: ChainView
    keys: ApiKeyStore
    limiter: RateLimiter = field(default_factory=RateLimiter)
    streams: StreamSlots = field(default_factory=StreamSlots)
    ledger: LedgerView = field(default_factory=LedgerView)
    key_service: KeyService | None = None
    users: UserBackend | None = None
    max_body_bytes: int = 256 * 1024
    genesis: GenesisAnchor | None = None  # what the explorer checks block 1 against
    feeds: NetworkFeeds | None = None  # QRNG status and alerts for the explorer
    starters: list[Callable[[], None]] = field(default_factory=list)
    stoppers: list[Callable[[], None]] = field(default_factory=list)
    public: PublicReads = field(default_factory=PublicReads)  # keyless reads' limits
    pulses: GatewayPulses | None = None  # lookups by time (default: the view alone)
    block_interval_ms: int = 1000  # the nominal interval, until blocks show the real one
    heartbeat_s: float = HEARTBEAT_S


# ------------------------------------------------------------------------- request models


class KeyRequestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x25519_public_key: str = Field(description="base64, 32 bytes", max_length=64)
    mlkem768_public_key: str = Field(description="base64, 1184 bytes", max_length=1600)
    length: int = Field(32, ge=MIN_LENGTH, le=MAX_LENGTH,
                        description="bytes of key material wanted")
    payment_tx: str = Field(description="base64 encoded signed PayForService(KEY_MATERIAL, "
                                        "units, request commitment)", max_length=16_384)


class SignedCommand(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command_id: str = Field(pattern=ID_PATTERN, description="idempotency key")
    command_type: str = Field(max_length=32)
    payload: str = Field(max_length=200_000, description="base64 of the body as signed")
    signature: str = Field(max_length=8_000, description="base64")
    issued_at_ms: int = Field(ge=0, le=2**63 - 1)
    expected_version: int | None = Field(None, ge=0, le=2**62)
    device_id: str = Field("", max_length=128)
    user_id: str | None = Field(None, pattern=r"^[0-9a-f]{40}$",
                                description="the user the command was signed for (optional; "
                                            "422 when it is not the URL's)")

    def as_input(self) -> SignedCommandIn:
        return SignedCommandIn(self.command_id, self.command_type, self.payload, self.signature,
                               self.issued_at_ms, self.expected_version, self.device_id,
                               self.user_id)


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": {PROBLEM_JSON: {"schema": {
        "$ref": "#/components/schemas/Problem"}}}}
    for status, text in ((400, "Bad request"), (401, "Missing or unknown API key"),
                         (403, "API key lacks the scope"), (404, "Not found"),
                         (413, "Request too large"),
                         (422, "Invalid request"), (429, "Rate limit or quota exceeded"),
                         (501, "Not offered by this gateway"),
                         (503, "Temporarily unavailable"))
}


def _json(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type=JSON)


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("qustream_gateway_requests", "HTTP requests",
                                ("endpoint", "status"), registry=self.registry)
        self.latency = Histogram("qustream_gateway_request_seconds", "Request latency",
                                 ("endpoint",), registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, 1, 5))
        self.head = Gauge("qustream_gateway_chain_head", "Verified head height",
                          registry=self.registry)
        self.pool = Gauge("qustream_gateway_private_pool_bytes", "Private pool bytes ready",
                          registry=self.registry)
        self.keys_served = Counter("qustream_gateway_keys_delivered", "Key deliveries",
                                   registry=self.registry)
        self.store_refused = Gauge("qustream_gateway_block_store_refused",
                                   "Block store rows that failed the gateway's checks (not "
                                   "served)", registry=self.registry)


class _Guard:
    """Pure-ASGI middleware: request size limit (413) and metrics per endpoint."""

    def __init__(self, app: Any, gateway: Gateway, metrics: _Metrics) -> None:
        self.app = app
        self.gateway = gateway
        self.metrics = metrics

    def _record(self, scope: dict[str, Any]) -> ApiKeyRecord | None:
        """The valid API key record of the request (X-API-Key or Authorization: Bearer); with
        no key at all on a public read, the anonymous client of its address."""
        headers = dict(scope.get("headers", ()))
        key = key_from_headers(headers.get(b"x-api-key", b"").decode("latin-1"),
                               headers.get(b"authorization", b"").decode("latin-1"))
        if key:
            return self.gateway.keys.lookup(key)
        public = self.gateway.public
        if public.enabled and is_public(scope["method"], scope["path"]):
            return anonymous_record(_client_address(scope), public)
        return None

    async def _fast_beacon(self, record: ApiKeyRecord, scope: dict[str, Any],
                           send: Callable[[Any], Awaitable[None]]) -> bool:
        """``GET /v1/beacon/latest`` without the framework: the serialized pulse is cached per
        block, so this is a key lookup, a token and one send. Same checks as the route (which
        documents it and answers every case this declines: errors, missing scope ...)."""
        view = self.gateway.view
        # the ETag first: ``add`` sets the body before the ETag, so this pair is never an old
        # body under a new ETag (a client would keep the old body on 304)
        etag = view.latest_etag
        body = view.latest_beacon
        if body is None or "read" not in record.scopes:
            return False
        try:
            self.gateway.limiter.take(record.key_id, record.rate_per_s, record.burst)
        except Limited:
            return False  # the route answers 429 (nothing was taken)
        assert body is not None
        for name, value in scope.get("headers", ()):
            if name == b"if-none-match" and etag in value:
                await send({"type": "http.response.start", "status": 304,
                            "headers": [(b"etag", etag), (b"cache-control", b"no-cache")]})
                await send({"type": "http.response.body", "body": b""})
                return True
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"etag", etag), (b"cache-control", b"no-cache")]})
        await send({"type": "http.response.body", "body": body})
        self.metrics.requests.labels("beacon_latest", "200").inc()
        return True

    async def _stream(self, record: ApiKeyRecord, scope: dict[str, Any],
                      receive: Callable[[], Awaitable[Any]],
                      send: Callable[[Any], Awaitable[None]]) -> None:
        """An event stream holds one of its key's slots for exactly as long as its ASGI call
        runs (it ends when the client goes, the stream ends, or the key is revoked)."""
        try:
            self.gateway.streams.acquire(record.key_id, record.max_streams)
        except Limited as exc:
            self.metrics.requests.labels("stream_blocks", "429").inc()
            await _send_problem(send, 429, "too-many-streams", f"over the {exc.what}",
                                {"Retry-After": str(exc.retry_after_s)})
            return
        try:
            await self._guarded(scope, receive, send)
        finally:
            self.gateway.streams.release(record.key_id)

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith("/v1/"):
            # Authentication comes before anything else under /v1 (so a request without a
            # valid key learns nothing but 401); scopes and limits are checked per route.
            record = self._record(scope)
            if record is None:
                await _send_problem(send, 401, "invalid-api-key",
                                    "send a valid API key in X-API-Key or as Authorization: "
                                    "Bearer", {"WWW-Authenticate": 'Bearer realm="qustream"'})
                return
            if (scope["path"] == "/v1/beacon/latest" and scope["method"] == "GET"
                    and await self._fast_beacon(record, scope, send)):
                return
            if scope["path"] == STREAM_PATH:
                await self._stream(record, scope, receive, send)
                return
        await self._guarded(scope, receive, send)

    async def _guarded(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        """Size limit and metrics around the application."""
        limit = self.gateway.max_body_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                await _send_problem(send, 413, "request-too-large",
                                    f"request bodies are limited to {limit} bytes")
                return
        started = time.perf_counter()
        status = [500]
        received = [0]

        async def counting_receive() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > limit:
                    raise Problem(413, "request-too-large",
                                  f"request bodies are limited to {limit} bytes")
            return message

        async def tracking_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        finally:
            endpoint = scope.get("endpoint")
            name = getattr(endpoint, "__name__", "unmatched")
            self.metrics.requests.labels(name, str(status[0])).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - started)


def _client_address(scope: Mapping[str, Any]) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


async def _send_problem(send: Callable[[Any], Awaitable[None]], status: int, slug: str,
                        detail: str, headers: dict[str, str] | None = None) -> None:
    body = problem_body(status, slug, detail)
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", PROBLEM_JSON.encode()),
                            (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


def create_app(gateway: Gateway) -> FastAPI:
    """The FastAPI application over ``gateway`` (see module doc)."""
    metrics = _Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        for start in gateway.starters:
            start()
        try:
            yield
        finally:
            for stop in gateway.stoppers:
                stop()

    app = FastAPI(
        title="QuStream gateway", version="1.0.0", lifespan=lifespan,
        description="Verified quantum randomness beacon, quantum-safe key delivery and "
                    "private user records. Errors are RFC 9457 problem documents.",
        responses=PROBLEM_RESPONSES,
        docs_url=None, redoc_url=None,  # the explorer serves /docs from local assets
    )
    install(app)
    app.add_middleware(_Guard, gateway=gateway, metrics=metrics)
    view = gateway.view

    def scoped(scope: str) -> Callable[..., Awaitable[ApiKeyRecord]]:
        async def dependency(
            request: Request,
            api_key: Annotated[str | None, Security(api_key_header)] = None,
            credentials: Annotated[HTTPAuthorizationCredentials | None,
                                   Security(bearer)] = None,
        ) -> ApiKeyRecord:
            key = api_key or (credentials.credentials if credentials is not None else None)
            public = gateway.public
            if (not key and scope == "read" and public.enabled
                    and is_public(request.method, request.url.path)):
                anonymous = anonymous_record(_client_address(request.scope), public)
                try:
                    gateway.limiter.take(anonymous.key_id, anonymous.rate_per_s,
                                         anonymous.burst)
                except Limited as exc:
                    raise too_many("rate-limited", f"over the anonymous {exc.what} per client "
                                   "address (send an API key for more)",
                                   exc.retry_after_s) from exc
                return anonymous
            if not key:
                raise Problem(401, "missing-api-key", "send an API key in X-API-Key or as "
                                                      "Authorization: Bearer",
                              headers={"WWW-Authenticate": 'Bearer realm="qustream"'})
            record = gateway.keys.lookup(key)
            if record is None:
                raise Problem(401, "invalid-api-key", "the API key is not known to this "
                                                      "gateway (revoked or mistyped)",
                              headers={"WWW-Authenticate": 'Bearer realm="qustream"'})
            if scope not in record.scopes:
                raise Problem(403, "missing-scope", f"the API key lacks the {scope!r} scope "
                                                    f"(it has {', '.join(record.scopes)})")
            try:
                gateway.limiter.take(record.key_id, record.rate_per_s, record.burst)
            except Limited as exc:
                raise too_many("rate-limited", f"over the {exc.what}",
                               exc.retry_after_s) from exc
            return record
        dependency.__name__ = f"require_{scope}"
        return dependency

    read = Depends(scoped("read"))
    keys_scope = Depends(scoped("keys"))
    users_scope = Depends(scoped("users"))

    async def older_block(height: int, kind: str = "block",
                          render: Callable[[StoredBlock], Any] = block_document
                          ) -> tuple[bytes, bytes] | None:
        """A block older than the window, from the archive (the block store, or chain.blocks
        at the offset verified here), read off the event loop."""
        if not 1 <= height < view.first_height or height > view.head_height:
            return None
        return await asyncio.to_thread(pulses.older_document, kind, height, render)

    def stored_or_problem(height: int, body: bytes | None, request: Request | None = None,
                          older: tuple[bytes, bytes] | None = None) -> Response:
        if body is not None:
            stored = view.get(height)
            if stored is None:
                return _json(body)
            # a finalized height's documents never change
            return cached(body, etag_of(stored.record.block.hash), IMMUTABLE, request)
        if older is not None:
            return cached(older[0], etag_of(older[1]), IMMUTABLE, request)
        if height > view.head_height:
            raise Problem(404, "block-not-found", f"no finalized block at height {height} yet "
                                                  f"(head is {view.head_height})")
        raise Problem(410, "block-not-retained", NOT_RETAINED % height)


    # ------------------------------------------------------------------ operations
    @app.get("/healthz", tags=["operations"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Readiness: the chain view is current",
             responses={503: PROBLEM_RESPONSES[503]})
    def readyz() -> Response:
        pool = gateway.key_service.pool.status() if gateway.key_service else None
        if view.error or not view.caught_up:
            raise unavailable("not-ready", view.error or "still reading the chain", 2)
        users_ready = getattr(gateway.users, "ready", None)
        if users_ready is not None and not users_ready():
            raise unavailable("not-ready", "the user projection's tables do not exist yet", 2)
        import json

        return _json(json.dumps({"status": "ready", "head": view.head_height,
                                 "private_pool": pool}).encode())

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics",
             response_class=Response)
    def prometheus_metrics() -> Response:
        metrics.head.set(view.head_height)
        # only the block store's archive refuses rows (Kafka is read at offsets verified here)
        metrics.store_refused.set(getattr(pulses.archive, "refused", 0))
        if gateway.key_service is not None:
            metrics.pool.set(gateway.key_service.pool.status().get("available_bytes", 0))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------------ chain
    @app.get("/v1/chain/head", tags=["chain"], summary="Latest verified block")
    async def chain_head(_key: ApiKeyRecord = read) -> Response:
        return Response(_dumps(view.head_document()), media_type=JSON,
                        headers={"Cache-Control": NO_CACHE})

    @app.get("/v1/blocks/{height}", tags=["chain"],
             summary="Block, commit certificate and the record to verify it")
    async def get_block(request: Request, height: height_path,
                        _key: ApiKeyRecord = read) -> Response:
        body = view.block_json(height)
        older = None if body is not None else await older_block(height)
        return stored_or_problem(height, body, request, older)

    @app.get("/v1/blocks", tags=["chain"], summary="A bounded range of blocks (paginated)")
    async def get_blocks(
        from_: Annotated[int, Query(alias="from", ge=1, le=2**62)] = 1,
        to: Annotated[int | None, Query(ge=1, le=2**62)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_RANGE)] = 20,
        _key: ApiKeyRecord = read,
    ) -> Response:
        last = min(to if to is not None else view.head_height, from_ + limit - 1)
        if to is not None and to < from_:
            raise Problem(400, "invalid-range", "to must not be below from")
        parts = []
        for height in range(from_, min(last, view.head_height) + 1):
            body = view.block_json(height)
            if body is None:
                older = await older_block(height)
                if older is None:
                    raise Problem(410, "block-not-retained", NOT_RETAINED % height)
                body = older[0]
            parts.append(body)
        following = last + 1
        more = following <= (to if to is not None else view.head_height)
        next_link = (f'"/v1/blocks?from={following}&limit={limit}'
                     f'{"&to=" + str(to) if to is not None else ""}"') if more else "null"
        body = b'{"from":%d,"to":%d,"blocks":[%s],"next":%s}' % (
            from_, last, b",".join(parts), next_link.encode())
        return _json(body)

    @app.get("/v1/validators/{height}", tags=["chain"],
             summary="The validator set that governs a height (check its hash in the header)")
    async def get_validators(request: Request, height: height_path,
                             _key: ApiKeyRecord = read) -> Response:
        body = view.validators_json(height)
        if body is None and 1 <= height < view.first_height and height <= view.head_height:
            validators = await asyncio.to_thread(pulses.validators_at, height)
            if validators is not None:
                body = _dumps(validators_document(height, validators))
        if body is not None and view.get(height) is None:  # older than the window
            return cached(body, etag_of(hashlib.sha256(body).digest()), IMMUTABLE, request)
        return stored_or_problem(height, body, request)

    genesis_time_ms = gateway.genesis.time_ms if gateway.genesis is not None else 0
    pulses = gateway.pulses or GatewayPulses(view, genesis_time_ms, gateway.block_interval_ms)
    install_beacon(app, view, pulses, read)

    @app.get("/v1/stream/blocks", tags=["chain"], response_class=StreamingResponse,
             summary="Server-sent events of finalized blocks; resume with Last-Event-ID",
             responses={200: {"content": {"text/event-stream": {}}}})
    async def stream_blocks(
        from_: Annotated[int | None, Query(alias="from", ge=1, le=2**62)] = None,
        until: Annotated[int | None, Query(ge=1, le=2**62)] = None,
        last_event_id: Annotated[str | None, Header(max_length=24)] = None,
        key: ApiKeyRecord = read,
    ) -> StreamingResponse:
        if last_event_id is not None:
            if not last_event_id.isdigit():
                raise Problem(400, "invalid-last-event-id", "Last-Event-ID is a block height")
            start = int(last_event_id) + 1
        else:
            start = from_ if from_ is not None else max(1, view.head_height)
        if (start < view.first_height and view.head_height
                and await older_block(start, "sse", sse_document) is None):
            raise Problem(410, "block-not-retained", NOT_RETAINED % start)

        async def events() -> AsyncIterator[bytes]:
            # Ends when the key is revoked (checked before every event and at least every
            # RECHECK_S while idle) or at ``until``. An idle stream sends a heartbeat event
            # (no id, so resuming is unaffected) every ``heartbeat_s``: the head it knows.
            height = start
            quiet_since = time.monotonic()
            recheck = min(RECHECK_S, gateway.heartbeat_s)
            yield b"retry: 1000\n\n"
            anonymous = not key.key_hash  # an anonymous reader has no key to revoke
            while (until is None or height <= until) and (
                    anonymous or gateway.keys.still_valid(key)):
                event = view.sse_event(height)
                if event is None and height < view.first_height:  # older than the window
                    older = await older_block(height, "sse", sse_document)
                    if older is None:
                        return  # not in the archive either: the client resumes elsewhere
                    event = sse_event(height, older[0])
                if event is not None:
                    yield event
                    height += 1
                    quiet_since = time.monotonic()
                elif (not await view.wait_beyond(height - 1, recheck)
                      and time.monotonic() - quiet_since >= gateway.heartbeat_s):
                    yield b"event: heartbeat\ndata: {\"head\":%d,\"time_ms\":%d}\n\n" % (
                        view.head_height, int(time.time() * 1000))
                    quiet_since = time.monotonic()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    @app.get("/v1/accounts/{address}", tags=["chain"],
             summary="Balance and nonces of an account (for building transactions)")
    async def get_account(address: Annotated[str, PathParam(pattern=r"^[0-9a-f]{40}$")],
                    _key: ApiKeyRecord = read) -> dict[str, Any]:
        return gateway.ledger.account(bytes.fromhex(address))

    # ------------------------------------------------------------------ keys
    @app.post("/v1/keys", tags=["keys"],
              summary="Fresh key material from the private QRNG pool, sealed to your keys")
    async def post_keys(body: KeyRequestIn, key: ApiKeyRecord = keys_scope) -> dict[str, Any]:
        if gateway.key_service is None:
            raise not_offered("this gateway does not serve key material (started --no-keys)")
        try:
            request = KeyRequest(base64.b64decode(body.x25519_public_key, validate=True),
                                 base64.b64decode(body.mlkem768_public_key, validate=True),
                                 body.length, base64.b64decode(body.payment_tx, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise Problem(422, "invalid-base64", f"a field is not base64: {exc}") from exc

        def charge() -> None:
            try:
                gateway.limiter.charge_quota(key.key_id, body.length, key.key_bytes_per_day)
            except Limited as exc:
                raise too_many("quota-exceeded", f"over the {exc.what}",
                               exc.retry_after_s) from exc

        result = await gateway.key_service.deliver(request, charge)
        metrics.keys_served.inc()
        return result

    # ------------------------------------------------------------------ users
    def users_backend() -> UserBackend:
        if gateway.users is None:
            raise not_offered("this gateway does not serve user records (started --no-users)")
        return gateway.users


    @app.post("/v1/users/{user_id}", tags=["users"], status_code=202,
              summary="Register a user (a signed RegisterUser command)")
    def register_user(user_id: user_path, command: SignedCommand,
                      _key: ApiKeyRecord = users_scope) -> dict[str, Any]:
        built = build_command(user_id, command.as_input(), expect_type=("RegisterUser",))
        return reply_document(users_backend().execute(built))

    @app.get("/v1/users/{user_id}", tags=["users"], summary="A user's keys and record list")
    def get_user(user_id: user_path, min_offset: min_offset_query = None,
                 _key: ApiKeyRecord = users_scope) -> dict[str, Any]:
        user = users_backend().get_user(user_id, parse_min_offset(min_offset))
        if user is None:
            raise Problem(404, "user-not-found", f"user {user_id} is not registered")
        return user_document(user)

    def write_record(user_id: str, record_id: str, command: SignedCommand,
                     types: tuple[str, ...]) -> dict[str, Any]:
        built = build_command(user_id, command.as_input(), expect_type=types,
                              record_id=record_id)
        return reply_document(users_backend().execute(built))

    @app.post("/v1/users/{user_id}/records/{record_id}", tags=["users"], status_code=202,
              summary="Create a record (signed PutRecord with client-side ciphertext)")
    def post_record(user_id: user_path, record_id: record_path, command: SignedCommand,
                    _key: ApiKeyRecord = users_scope) -> dict[str, Any]:
        return write_record(user_id, record_id, command, ("PutRecord",))

    @app.put("/v1/users/{user_id}/records/{record_id}", tags=["users"], status_code=202,
             summary="Replace a record (signed PutRecord of the next version)")
    def put_record(user_id: user_path, record_id: record_path, command: SignedCommand,
                   _key: ApiKeyRecord = users_scope) -> dict[str, Any]:
        return write_record(user_id, record_id, command, ("PutRecord",))

    @app.delete("/v1/users/{user_id}/records/{record_id}", tags=["users"], status_code=202,
                summary="Delete a record (signed DeleteRecord)")
    def delete_record(user_id: user_path, record_id: record_path, command: SignedCommand,
                      _key: ApiKeyRecord = users_scope) -> dict[str, Any]:
        return write_record(user_id, record_id, command, ("DeleteRecord",))

    @app.get("/v1/users/{user_id}/records/{record_id}", tags=["users"],
             summary="A record's ciphertext; min_offset waits for your own write")
    def get_record(user_id: user_path, record_id: record_path,
                   min_offset: min_offset_query = None,
                   _key: ApiKeyRecord = users_scope) -> dict[str, Any]:
        record = users_backend().get_record(user_id, record_id, parse_min_offset(min_offset))
        if record is None:
            raise Problem(404, "record-not-found", f"user {user_id} has no record {record_id}")
        return record_document(record)

    install_explorer(app, gateway)
    _add_problem_schema(app)
    return app


def _add_problem_schema(app: FastAPI) -> None:
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = {
            "type": "object", "required": ["type", "title", "status", "detail"],
            "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                           "status": {"type": "integer"}, "detail": {"type": "string"}},
            "additionalProperties": True}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_gateway(settings: Any, genesis: Path, api_keys: Path, *, keys: bool = True,
                  users: bool = True, retain: int = 5000,
                  key_refresh_s: float = REFRESH_S, delivery_key: Path | None = None,
                  inclusion_timeout_s: float = 20.0, block_interval_ms: int = 1000,
                  block_store: bool = False) -> Gateway:
    """Wire the real components (connections are opened here, threads start with the app).
    ``delivery_key``: the key deliveries are signed with (made on first use; clients pin its
    public key). Blocks older than the ``retain`` window are read from the block store in
    Cassandra with ``block_store`` (``services.gateway.store_archive``), and from chain.blocks
    where it has none (``services.gateway.pulses``)."""
    from services.gateway.chain import ChainFollower, load_view
    from services.gateway.keys import KafkaTxSink, PrivatePool
    from services.gateway.payments import PaymentBook, key_payment_outcomes
    from services.gateway.pulses import BlockArchive, KafkaBlockArchive
    from services.ledger.core.chain_spec import ChainSpec, source_registry
    from streams.kafka import make_consumer

    spec = ChainSpec.load(genesis)
    # Kafka first, within the connect timeout: a gateway that cannot reach the cluster it
    # serves stops with one line naming the address (KafkaUnreachableError), before it opens
    # Cassandra or starts threads that would retry forever in the background.
    make_consumer(settings, f"gateway-probe-{time.time_ns()}").close()
    view = load_view(spec, retain)
    feeds = NetworkFeeds(settings)
    gateway = Gateway(view=view, keys=ApiKeyStore(api_keys, refresh_s=key_refresh_s),
                      genesis=GenesisAnchor.of_spec(spec), feeds=feeds)
    gateway.starters.append(feeds.start)
    gateway.stoppers.append(feeds.stop)
    kafka_archive = KafkaBlockArchive(settings, view, spec=spec)
    gateway.stoppers.append(kafka_archive.close)
    archive: BlockArchive = kafka_archive
    if block_store:
        from services.gateway.store_archive import CassandraBlockArchive

        stored = CassandraBlockArchive.connect(settings, spec, view, fallback=kafka_archive)
        gateway.stoppers.append(stored.close)
        archive = stored
    gateway.pulses = GatewayPulses(view, spec.initial.tip.previous_time_ms, block_interval_ms,
                                   archive)
    gateway.block_interval_ms = block_interval_ms
    gateway.ledger.state = spec.initial.app_state
    # The registry is swapped whole (never cleared and refilled: the pool's thread reads it),
    # and only when the chain's registered sources change.
    registry = [source_registry(spec.initial.app_state)]
    sources = [spec.initial.app_state.qrng_sources]
    payments = PaymentBook()
    previous = [spec.initial]  # the chain before the next block on_block sees

    def on_block(verified: Any) -> None:
        state = verified.chain.app_state
        if keys:
            payments.record(key_payment_outcomes(previous[0], spec.app, verified.record))
        previous[0] = verified.chain
        gateway.ledger.state = state
        if state.qrng_sources is not sources[0]:
            registry[0], sources[0] = source_registry(state), state.qrng_sources

    def on_start(follower: Any) -> None:
        """Started from a verified snapshot: the state there, as if folded up to it."""
        previous[0] = follower.chain
        gateway.ledger.state = state = follower.chain.app_state
        registry[0], sources[0] = source_registry(state), state.qrng_sources

    follower = ChainFollower(settings, genesis, view, on_block, on_start=on_start,
                             state_dir=settings.state_dir / "gateway")
    gateway.starters.append(follower.start)
    gateway.stoppers.append(follower.stop)
    if keys:
        from services.gateway.spent import CassandraSpentPayments
        from services.shard_writer.store import connect

        cluster, session = connect(settings)
        spent = CassandraSpentPayments(
            session, settings.cassandra.keyspace,
            replication_factor=settings.cassandra.replication_factor,
            datacenter=settings.cassandra.local_datacenter)
        pool = PrivatePool(settings, lambda: registry[0])
        sink = KafkaTxSink(settings)
        gateway.key_service = KeyService(
            pool, sink, gateway.ledger, view.chain_id, payments=payments, spent=spent,
            signer=load_delivery_key(delivery_key or settings.state_dir / "gateway"
                                     / "delivery-key.json"),
            inclusion_timeout_s=inclusion_timeout_s)
        gateway.starters.append(pool.start)
        gateway.stoppers += [pool.stop, sink.close, cluster.shutdown]
    if users:
        from services.gateway.users import KafkaCassandraUsers

        backend = KafkaCassandraUsers(settings)
        gateway.users = backend
        gateway.stoppers.append(backend.close)
    return gateway


def load_delivery_key(path: Path) -> Any:
    """The gateway's delivery signing key at ``path`` (ML-DSA-65, mode 0600), made on first
    use; its public key is also written beside it, with the suffix ``.pub``, for clients to
    pin."""
    from protocol.keys import SigningKey

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        SigningKey.generate().save(path)
    key = SigningKey.load(path)
    public = path.with_suffix(".pub")
    text = key.public_key.to_text()
    if not public.exists() or public.read_text().strip() != text:
        public.write_text(text + "\n")
    return key
