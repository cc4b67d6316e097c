"""Property-based fuzzing of the published OpenAPI spec with schemathesis (in-process ASGI).

For every operation: no 5xx but the documented 501 (not offered) and 503, every 4xx/5xx is a
well-formed problem document, and requests without a key or with a wrong key get 401/403 and
nothing else.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings

from sdk.testing import make_local_chain
from services.gateway.api import create_app
from services.gateway.public import is_public
from tests.unit.test_gateway_api import make_gateway

CHAIN = make_local_chain(Path(tempfile.mkdtemp(prefix="gw-fuzz-")), 6)
GATEWAY, KEYS = make_gateway(CHAIN, pool_bytes=1 << 20)
APP = create_app(GATEWAY)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
EXAMPLES = int(os.environ.get("QUSTREAM_FUZZ_EXAMPLES", "20"))


def check_problem(response: Any) -> None:
    # 501: a part this gateway was started without (here: user records), 503: not ready yet
    assert response.status_code < 500 or response.status_code in (501, 503), response.text
    if response.status_code >= 400:
        assert response.headers["content-type"][0].startswith("application/problem+json")
        body = response.json()
        assert {"type", "title", "status", "detail"} <= set(body), body
        assert body["status"] == response.status_code


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_with_a_valid_key(case: Any) -> None:
    if case.path in ("/v1/stream/blocks", "/explorer/api/stream"):
        case.query = {**(case.query or {}), "until": 3}
    if case.query and "wait" in case.query:  # long polls are bounded; keep the fuzzer quick
        case.query = {**case.query, "wait": 0}
    response = case.call(headers={"X-API-Key": KEYS["all"]})
    check_problem(response)


@schema.parametrize()
@settings(max_examples=max(5, EXAMPLES // 3), deadline=None,
          suppress_health_check=list(HealthCheck))
def test_without_or_with_a_wrong_key(case: Any) -> None:
    if not case.path.startswith("/v1/"):
        return
    public = is_public(case.method.upper(), case.path)  # readable without a key
    for headers in ({}, {"X-API-Key": "qsk_0000_wrong"}, {"X-API-Key": KEYS["read"][:-1]},
                    {"Authorization": "Bearer qsk_1_2"}):
        if public and not headers:
            continue
        response = case.call(headers=headers)
        check_problem(response)
        assert response.status_code == 401, (headers, case.method, case.formatted_path,
                                             response.status_code)
    response = case.call(headers={"X-API-Key": KEYS["keys" if "users" in case.path or
                                                   case.path == "/v1/keys/" else "users"]})
    check_problem(response)
    if case.operation.method.upper() == case.method.upper() and case.path != "/v1/keys":
        assert response.status_code in (400, 403, 413, 422), (case.method, case.formatted_path,
                                                         response.status_code)
