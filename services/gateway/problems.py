"""RFC 9457 problem documents: the one shape of every error the gateway returns.

Routes raise ``Problem`` (or a subclass); the handlers installed by ``install`` turn it, every
``HTTPException`` and every request-validation error into ``application/problem+json`` with
``type``, ``title``, ``status`` and ``detail`` (plus ``errors`` for validation). An unexpected
exception becomes a 500 problem that names no internals (it is logged with its trace).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from protocol.errors import QuStreamError

PROBLEM_JSON = "application/problem+json"
BASE = "https://qustream.dev/problems/"
log = logging.getLogger("qustream.gateway")

TITLES = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 409: "Conflict", 410: "Gone",
    413: "Content Too Large", 415: "Unsupported Media Type", 422: "Unprocessable Content",
    429: "Too Many Requests", 500: "Internal Server Error", 501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
}


class Problem(QuStreamError):
    """An error response: ``status``, a stable ``slug`` (the type URI's last part), a
    human ``detail``; ``headers`` (e.g. Retry-After) and ``extra`` members are optional."""

    def __init__(self, status: int, slug: str, detail: str, *,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


def unavailable(slug: str, detail: str, retry_after_s: int) -> Problem:
    return _retry_later(503, slug, detail, retry_after_s)


def too_many(slug: str, detail: str, retry_after_s: int) -> Problem:
    """Over a rate, quota or slot limit (429); ``retry_after_s`` says when to try again."""
    return _retry_later(429, slug, detail, retry_after_s)


def _retry_later(status: int, slug: str, detail: str, retry_after_s: int) -> Problem:
    return Problem(status, slug, detail, headers={"Retry-After": str(retry_after_s)},
                   retry_after_s=retry_after_s)


def not_offered(detail: str) -> Problem:
    """A part of the API this gateway was started without: permanent, so no Retry-After."""
    return Problem(501, "not-offered", detail)


def problem_body(status: int, slug: str, detail: str, **extra: Any) -> bytes:
    document = {"type": BASE + slug, "title": TITLES.get(status, "Error"), "status": status,
                "detail": detail, **extra}
    return json.dumps(document, separators=(",", ":"), default=str).encode()


def problem_response(status: int, slug: str, detail: str, headers: dict[str, str] | None = None,
                     **extra: Any) -> Response:
    return Response(problem_body(status, slug, detail, **extra), status_code=status,
                    headers=headers, media_type=PROBLEM_JSON)


_SLUGS = {404: "not-found", 405: "method-not-allowed", 400: "bad-request",
          401: "unauthorized", 403: "forbidden", 413: "request-too-large",
          415: "unsupported-media-type", 406: "not-acceptable"}


def install(app: FastAPI) -> None:
    """Register the handlers that make every error a problem document."""

    @app.exception_handler(Problem)
    async def _problem(_request: Request, exc: Problem) -> Response:
        return problem_response(exc.status, exc.slug, exc.detail, exc.headers, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return problem_response(exc.status_code, _SLUGS.get(exc.status_code, "error"), detail,
                                dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> Response:
        errors = [{"location": ".".join(str(p) for p in e.get("loc", ())),
                   "message": str(e.get("msg", ""))} for e in exc.errors()]
        first = errors[0] if errors else {"location": "request", "message": "invalid"}
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            # Not JSON at all: a malformed request (400), not invalid fields (422).
            return problem_response(400, "malformed-json",
                                    f"the body is not valid JSON: {first['message']}",
                                    errors=errors)
        return problem_response(422, "invalid-request",
                                f"{first['location']}: {first['message']}", errors=errors)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "internal-error",
                                "the gateway failed to handle the request; it has been logged")
