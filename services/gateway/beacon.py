"""Beacon routes: pulses by height and by time, ranges, long polls and health.

``GET /v1/beacon/latest`` the latest random pulse; ``/v1/beacon/{h}`` a height (``?wait=s``
long-polls until it exists, at most ``MAX_WAIT_S``); ``/v1/beacon/at?time=T`` the first pulse
at or after T, ``/v1/beacon/next?time=T`` strictly after, ``/v1/beacon/previous?time=T``
strictly before (T: ms since the epoch or ISO 8601; ``at`` takes ``wait`` too);
``/v1/beacon?from=&to=`` up to ``MAX_PULSES`` compact pulses verifiable with one certificate
(the last block's) and the hash links between headers; ``/v1/beacon/{h}/proof?head=H`` the
pulse of h proven against head H (default: the gateway's head) with H's certificate and an
O(log n) inclusion path into H's history root (``protocol.mmr``); ``/v1/beacon/health`` the
latest pulse's age against the expected period.

Errors are typed problems: ``pulse-not-yet`` (404, with ``expected_at_ms`` and Retry-After),
``before-genesis`` (400), ``block-not-retained`` (410), ``head-not-above`` (409: a proof needs
a head above the pulse), ``proof-not-available`` (410: a pulse this gateway cannot prove, below
the snapshot it started from). Caching: a pulse of a finalized height
never changes, so it is served ``immutable`` with its block hash as ETag; the latest pulse, the
head and health are ``no-cache`` (ETag still given, ``If-None-Match`` answers 304).
"""

from __future__ import annotations

import asyncio
import base64
import math
import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response

from protocol.finalized import FinalizedRecord
from protocol.mmr import HistoryProofError
from protocol.pulse import PULSE_RANGE_MEDIA_TYPE, encode_pulse_range, is_random, pulse_status
from protocol.pulse_index import (
    BeforeGenesisError,
    InvalidTimeError,
    PulseNotRetainedError,
    PulseNotYetError,
    block_interval_ms,
    pulse_after,
    pulse_at_height,
    pulse_at_or_after,
    pulse_before,
)
from protocol.pulse_index import parse_time_ms as parse_time
from services.gateway.chain import (
    ChainView,
    _dumps,
    compact_pulse,
    etag_of,
    pulse_document,
    range_entry,
)
from services.gateway.problems import Problem
from services.gateway.pulses import GatewayPulses

MAX_PULSES = 1000
MAX_WAIT_S = 60.0
IMMUTABLE = "public, max-age=31536000, immutable"
NO_CACHE = "no-cache"
STALE_PERIODS = 3  # health: stale when the latest pulse is older than this many periods
JSON = "application/json"

# module level: with postponed annotations FastAPI resolves them in the module's namespace
wait_query = Annotated[float, Query(ge=0, le=MAX_WAIT_S,
                                    description="seconds to wait for a future pulse")]
time_query = Annotated[str, Query(alias="time", max_length=40,
                                  description="ms since the epoch, or ISO 8601")]


def parse_time_ms(text: str) -> int:
    """``protocol.pulse_index.parse_time_ms`` answering 422 for a malformed time."""
    try:
        return parse_time(text)
    except InvalidTimeError as exc:
        raise Problem(422, "invalid-time", str(exc)) from exc


def cached(body: bytes, etag: bytes, cache_control: str, request: Request | None, *,
           media_type: str = JSON, headers: dict[str, str] | None = None) -> Response:
    headers = {"ETag": etag.decode(), "Cache-Control": cache_control, **(headers or {})}
    if request is not None and etag.decode() in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


def _wants(request: Request, media_type: str) -> bool:
    """Whether ``Accept`` names ``media_type`` (with a non-zero quality) and prefers it to
    JSON: the one negotiation the range endpoint does (JSON is the default)."""
    preferred: dict[str, float] = {}
    for part in request.headers.get("accept", "").split(","):
        name, *parameters = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        preferred[name.lower()] = max(quality, preferred.get(name.lower(), 0.0))
    wanted = preferred.get(media_type, 0.0)
    return wanted > 0 and wanted >= max(preferred.get(JSON, 0.0), preferred.get("*/*", 0.0))


def lookup_problem(exc: Exception) -> Problem:
    """The problem document of a lookup error (``protocol.pulse_index``)."""
    if isinstance(exc, PulseNotYetError):
        retry = max(1, math.ceil((exc.expected_at_ms - time.time() * 1000) / 1000))
        return Problem(404, "pulse-not-yet", str(exc), headers={"Retry-After": str(retry),
                                                                "Cache-Control": "no-store"},
                       head_height=exc.head_height, expected_at_ms=exc.expected_at_ms,
                       height=exc.height, time_ms=exc.time_ms)
    if isinstance(exc, BeforeGenesisError):
        return Problem(400, "before-genesis", str(exc), time_ms=exc.time_ms,
                       genesis_time_ms=exc.genesis_time_ms)
    if isinstance(exc, PulseNotRetainedError):
        return Problem(410, "block-not-retained", f"{exc}; read chain.blocks with the SDK",
                       first_height=exc.first_height)
    raise exc


def install_beacon(app: FastAPI, view: ChainView, pulses: GatewayPulses, read: Any) -> None:
    """Add the beacon routes (module doc) to ``app``; ``read`` is the read-scope dependency."""

    def document(record: FinalizedRecord) -> bytes:
        if view.get(record.height) is not None:
            body = view.beacon_json(record.height)
            if body is not None:
                return body
        previous = pulses.block(record.height - 1) if record.height > 1 else None
        return _dumps(pulse_document(view.chain_id, record, previous, view.genesis_randomness))

    def pulse_response(record: FinalizedRecord, request: Request) -> Response:
        return cached(document(record), etag_of(record.block.hash), IMMUTABLE, request)

    async def waiting(find: Callable[[], FinalizedRecord], wait_s: float) -> FinalizedRecord:
        """``find()``, retried as blocks arrive until ``wait_s`` passed. Lookups run in a
        worker thread: one older than the window reads Kafka."""
        deadline = time.monotonic() + wait_s
        while True:
            head = view.head_height
            try:
                return await asyncio.to_thread(find)
            except PulseNotYetError as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    problem = lookup_problem(exc)
                    if wait_s:
                        problem.detail += f" (waited {wait_s:g} s)"
                        problem.extra["waited_s"] = wait_s
                    raise problem from exc
                await view.wait_beyond(head, remaining)
            except (BeforeGenesisError, PulseNotRetainedError) as exc:
                raise lookup_problem(exc) from exc


    @app.get("/v1/beacon/latest", tags=["beacon"],
             summary="Latest random pulse (fresh entropy from enough sources) with its proof")
    async def beacon_latest(request: Request, _key: Any = read) -> Response:
        etag = view.latest_etag  # before the body (see ``api._Guard._fast_beacon``)
        body = view.latest_beacon
        if body is None:
            raise Problem(503, "no-beacon-yet", "no random pulse finalized yet (blocks without "
                          "fresh entropy are never served as the latest pulse)",
                          headers={"Retry-After": "2"}, retry_after_s=2)
        return cached(body, etag, NO_CACHE, request)

    @app.get("/v1/beacon/health", tags=["beacon"],
             summary="Latest pulse's age against the expected period, and whether it is random")
    async def beacon_health(_key: Any = read) -> Response:
        head = pulses.head()
        now_ms = int(time.time() * 1000)
        period = block_interval_ms(pulses, head)
        stale_after = STALE_PERIODS * max(period, 1000)
        if head is None:
            raise Problem(503, "beacon-stale", "no pulse finalized yet",
                          headers={"Retry-After": "2", "Cache-Control": "no-store"},
                          expected_period_ms=period, healthy=False)
        header = head.block.header
        age = now_ms - header.time_ms
        fields = {"height": head.height, "time_ms": header.time_ms, "age_ms": age,
                  "expected_period_ms": period, "stale_after_ms": stale_after,
                  "random": is_random(pulse_status(header)),
                  "latest_random_height": view.latest_random_height, "now_ms": now_ms}
        if age > stale_after:
            raise Problem(503, "beacon-stale", f"the latest pulse is {age} ms old, more than "
                          f"{STALE_PERIODS} expected periods of {period} ms",
                          headers={"Retry-After": "2", "Cache-Control": "no-store"},
                          healthy=False, **fields)
        return Response(_dumps({"healthy": True, **fields}), media_type=JSON,
                        headers={"Cache-Control": "no-store"})

    @app.get("/v1/beacon/at", tags=["beacon"],
             summary="The first pulse at or after a time (long-polls with wait)")
    async def beacon_at_time(request: Request, time_: time_query, wait: wait_query = 0.0,
                             _key: Any = read) -> Response:
        moment = parse_time_ms(time_)
        return pulse_response(await waiting(lambda: pulse_at_or_after(pulses, moment), wait),
                              request)

    @app.get("/v1/beacon/next", tags=["beacon"], summary="The first pulse strictly after a time")
    async def beacon_next(request: Request, time_: time_query, wait: wait_query = 0.0,
                          _key: Any = read) -> Response:
        moment = parse_time_ms(time_)
        return pulse_response(await waiting(lambda: pulse_after(pulses, moment), wait), request)

    @app.get("/v1/beacon/previous", tags=["beacon"],
             summary="The last pulse strictly before a time")
    async def beacon_previous(request: Request, time_: time_query,
                              _key: Any = read) -> Response:
        moment = parse_time_ms(time_)
        return pulse_response(await waiting(lambda: pulse_before(pulses, moment), 0.0), request)

    @app.get("/v1/beacon", tags=["beacon"],
             summary="Pulses from..to, verifiable with the last one's certificate and hash links")
    async def beacon_range(
        request: Request,
        from_: Annotated[int, Query(alias="from", ge=1, le=2**62)],
        to: Annotated[int, Query(ge=1, le=2**62)],
        _key: Any = read,
    ) -> Response:
        if to < from_:
            raise Problem(400, "invalid-range", "to must not be below from")
        if from_ > view.head_height:
            await waiting(lambda: pulse_at_height(pulses, from_), 0.0)
        wanted = min(to, from_ + MAX_PULSES - 1, view.head_height)

        def fetch() -> tuple[Sequence[FinalizedRecord], FinalizedRecord | None]:
            return (pulses.range(from_, wanted),
                    pulses.block(from_ - 1) if from_ > 1 else None)

        try:
            records, previous = await asyncio.to_thread(fetch)
        except PulseNotRetainedError as exc:
            raise lookup_problem(exc) from exc
        if not records or (from_ > 1 and previous is None):
            missing = from_ if not records else from_ - 1
            raise Problem(503, "archive-unavailable", f"pulse {missing} could not be read back "
                          "from chain.blocks", headers={"Retry-After": "2"}, retry_after_s=2)
        last = records[-1].height
        final = records[-1]
        complete = last == to
        etag = etag_of(final.block.hash)[:-1] + b"-%d\"" % from_
        cache_control = IMMUTABLE if complete else NO_CACHE
        if _wants(request, PULSE_RANGE_MEDIA_TYPE):
            binary = encode_pulse_range(
                view.chain_id,
                previous.block.header.canonical() if previous is not None else None,
                final.commit.canonical(),
                [view.pulse_entry(r.height) or range_entry(r) for r in records])
            headers = {"Vary": "Accept"}
            if not complete:
                headers["Link"] = f'</v1/beacon?from={last + 1}&to={to}>; rel="next"'
            return cached(binary, etag[:-1] + b"-b\"", cache_control, request,
                          media_type=PULSE_RANGE_MEDIA_TYPE, headers=headers)
        parts = [view.pulse_json(r.height) or _dumps(compact_pulse(r)) for r in records]
        following = f'"/v1/beacon?from={last + 1}&to={to}"' if not complete else "null"
        body = (b'{"chain_id":%s,"from":%d,"to":%d,"previous_header":%s,"commit":%s,'
                b'"validators_hash":"%s","validators_url":"/v1/validators/%d","next":%s,'
                b'"pulses":[%s]}') % (
            _dumps(view.chain_id), from_, last,
            _dumps(_b64(previous.block.header.canonical()) if previous is not None else None),
            _dumps(_b64(final.commit.canonical())),
            final.block.header.validators_hash.hex().encode(), last, following.encode(),
            b",".join(parts))
        return cached(body, etag, cache_control, request, headers={"Vary": "Accept"})

    @app.get("/v1/beacon/{height}/proof", tags=["beacon"],
             summary="Pulse of a height proven against a later head: its certificate and an "
                     "O(log n) path into the head's history root")
    async def beacon_proof(request: Request, height: Annotated[int, PathParam(ge=1, le=2**62)],
                           head: Annotated[int | None, Query(ge=2, le=2**62)] = None,
                           _key: Any = read) -> Response:
        at = view.head_height if head is None else head
        if at <= height:
            raise Problem(409, "head-not-above", f"a pulse is proven against a later head: head "
                          f"{at} is not above {height}", height=height, head_height=at)
        head_record = await waiting(lambda: pulse_at_height(pulses, at), 0.0)

        def fetch() -> tuple[tuple[bytes, ...], FinalizedRecord, FinalizedRecord | None]:
            path = view.history_path(at - 1, height - 1)  # first: it says what is provable
            return (path, pulse_at_height(pulses, height),
                    pulses.block(height - 1) if height > 1 else None)

        try:
            path, record, previous = await asyncio.to_thread(fetch)
        except (PulseNotRetainedError, PulseNotYetError) as exc:
            raise lookup_problem(exc) from exc
        except HistoryProofError as exc:
            raise Problem(410, "proof-not-available", f"pulse {height} cannot be proven here: "
                          f"{exc}", first_provable_height=view.first_provable_height) from exc
        if height > 1 and previous is None:
            raise Problem(503, "archive-unavailable", f"block {height - 1} could not be read "
                          "back from chain.blocks", headers={"Retry-After": "2"},
                          retry_after_s=2)
        head_header = head_record.block.header
        body = _dumps({
            "chain_id": view.chain_id, "height": height, "head": at,
            "pulse": compact_pulse(record),
            "previous_header": (_b64(previous.block.header.canonical())
                                if previous is not None else None),
            "head_header": _b64(head_header.canonical()),
            "commit": _b64(head_record.commit.canonical()),
            "validators_hash": head_header.validators_hash.hex(),
            "validators_url": f"/v1/validators/{at}",
            "history": {"size": at - 1, "index": height - 1,
                        "root": head_header.history_root.hex(),
                        "path": [node.hex() for node in path]},
        })
        return cached(body, etag_of(head_record.block.hash)[:-1] + b"-p%d\"" % height,
                      IMMUTABLE if head is not None else NO_CACHE, request)

    @app.get("/v1/beacon/{height}", tags=["beacon"],
             summary="Pulse of a height with its proof and status (wait long-polls)")
    async def beacon_at(request: Request, height: Annotated[int, PathParam(ge=1, le=2**62)],
                        wait: wait_query = 0.0, _key: Any = read) -> Response:
        return pulse_response(await waiting(lambda: pulse_at_height(pulses, height), wait),
                              request)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
