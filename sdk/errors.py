"""Typed exceptions of the QuStream SDK.

Every API error the gateway answers with (an RFC 9457 problem document) becomes an
``ApiError`` subclass chosen by the HTTP status; every block the subscriber refuses becomes a
``BlockRejectedError`` naming the height and the reason. Callers catch ``QuStreamError`` for
anything the SDK raises on purpose.
"""

from __future__ import annotations

from typing import Any

from protocol.errors import QuStreamError as QuStreamError  # re-exported for SDK callers
from protocol.light import BlockGapError as BlockGapError  # the light client's, re-exported
from protocol.light import BlockRejectedError as BlockRejectedError
from protocol.light import ForkDetectedError as ForkDetectedError
from protocol.light import TrustExpiredError as TrustExpiredError


class ApiError(QuStreamError):
    """The gateway answered with an error; the fields are those of its problem document."""

    def __init__(self, status: int, title: str, detail: str, *, problem_type: str = "about:blank",
                 retry_after: float | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.problem_type = problem_type
        self.retry_after = retry_after
        self.extra = extra or {}


class BadRequestError(ApiError):
    """400/413/422: the request is malformed or too large."""


class UnauthorizedError(ApiError):
    """401: no API key, or one the gateway does not know."""


class ForbiddenError(ApiError):
    """403: the API key lacks the scope the endpoint needs."""


class NotFoundError(ApiError):
    """404 (or 410 for blocks beyond the gateway's retention)."""


class PulseNotYetError(NotFoundError):
    """The pulse asked for (a height, or the pulse at or after a time) does not exist yet;
    ``expected_at_ms`` says when it should (``extra`` has ``head_height``)."""

    @property
    def expected_at_ms(self) -> int | None:
        value = self.extra.get("expected_at_ms")
        return int(value) if value is not None else None


class BeforeGenesisError(BadRequestError):
    """A time before the chain's genesis (or, for ``previous``, before its first pulse)."""


class ConflictError(ApiError):
    """409: a version conflict, a reused idempotency key or transaction, a rejected command."""


class RateLimitedError(ApiError):
    """429: per-key rate limit or quota exhausted; ``retry_after`` says when to try again."""


class UnavailableError(ApiError):
    """503: the gateway cannot serve now (private pool empty or unhealthy, chain not caught
    up, backend down); ``retry_after`` is its hint."""


class ServerError(ApiError):
    """Any other 5xx."""


class KeyDeliveryError(QuStreamError):
    """Delivered key material does not decrypt or does not match its commitment."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequestError, 401: UnauthorizedError, 403: ForbiddenError, 404: NotFoundError,
    409: ConflictError, 410: NotFoundError, 413: BadRequestError, 422: BadRequestError,
    429: RateLimitedError, 503: UnavailableError,
}


_BY_TYPE: dict[str, type[ApiError]] = {
    "pulse-not-yet": PulseNotYetError, "before-genesis": BeforeGenesisError,
}


def error_from_response(status: int, body: Any, retry_after: str | None) -> ApiError:
    """The typed error for a gateway response with ``status`` and JSON ``body`` (by the
    problem type where the SDK has a finer class, else by status)."""
    problem = body if isinstance(body, dict) else {}
    slug = str(problem.get("type", "")).rsplit("/", 1)[-1]
    cls = _BY_TYPE.get(slug) or _BY_STATUS.get(status, ServerError if status >= 500
                                               else ApiError)
    retry: float | None = None
    if retry_after is not None:
        try:
            retry = float(retry_after)
        except ValueError:
            retry = None
    extra = {k: v for k, v in problem.items() if k not in ("type", "title", "status", "detail")}
    return cls(status, str(problem.get("title", "error")), str(problem.get("detail", body)),
               problem_type=str(problem.get("type", "about:blank")), retry_after=retry,
               extra=extra)


def error_from_http(response: Any) -> ApiError:
    """The typed error for an ``httpx`` response that is not a success (its problem document,
    or its text when the body is not JSON; its ``Retry-After``)."""
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text}
    return error_from_response(response.status_code, body, response.headers.get("Retry-After"))
