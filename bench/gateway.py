"""Gateway throughput: ``GET /v1/beacon/latest`` (with a key and anonymous), ``POST /v1/keys``
and verified pulse ranges, on one uvicorn worker.

The server runs in a child process (``python -m bench.gateway --serve PORT``): the real
``create_app`` over a locally made signed chain (``sdk.testing``), with an in-memory private
pool filled from OS random bytes and a transaction sink that does not write to Kafka and plays
a chain that includes every payment at once (so this measures the gateway, not block time:
auth, rate limit, payment checks with ML-DSA/Ed25519 verification, the payment claim, HKDF
mixing, X25519 + ML-KEM-768 sealing, AES-GCM, the ML-DSA-65 signature over the delivery,
JSON). The baseline is a bare ASGI app on the same uvicorn stack returning a fixed JSON body of
the beacon's size. The load generator in
this process keeps ``CONNECTIONS`` keep-alive HTTP/1.1 connections on loopback busy for
``SECONDS`` per endpoint. ``anonymous_beacon_rps`` is the same beacon read without a key (the
public path, limited per client address; the limit is lifted here), measured interleaved with
the keyed one (keyed, anonymous, anonymous, keyed: half of ``SECONDS`` each, so a change of the
machine's load during the run weighs on both alike), with their ratio.
``range_pulses_per_s`` is what one client verifies per second through
``GET /v1/beacon?from=&to=``: ``BeaconClient.range`` over the whole chain, again and again,
pages of ``MAX_PULSES`` in the binary form (``protocol.pulse.PULSE_RANGE_MEDIA_TYPE``)
fetched ahead and verified on ``RANGE_WORKERS`` processes (the machine's cores; one certificate,
the hash links and every pulse's entropy, randomness and health per page);
``range_serial_pulses_per_s`` is the same client verifying each page in its own process, half
of ``SECONDS`` each.
Last line: one JSON object.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import emit

CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
KEY_BODIES = int(os.environ.get("BENCH_KEY_BODIES", "6000"))
CHAIN_HEIGHTS = int(os.environ.get("BENCH_CHAIN_HEIGHTS", "2000"))
RANGE_PAGE = int(os.environ.get("BENCH_RANGE_PAGE", "1000"))  # the SDK's page (MAX_PULSES)
RANGE_WORKERS = int(os.environ.get("BENCH_RANGE_WORKERS", str(os.cpu_count() or 1)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(port: int, workdir: Path, baseline: bool) -> None:
    import uvicorn

    if baseline:
        body = (workdir / "beacon.json").read_bytes()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
        return
    from services.gateway.api import Gateway, create_app
    from services.gateway.auth import ApiKeyStore
    from services.gateway.keys import BufferPool, KeyService, LedgerView
    from services.gateway.payments import PaymentBook
    from services.gateway.public import PublicReads
    from tests.unit.test_gateway_api import MemorySink

    view, state = fill_view_from(workdir)  # the chain the load generator signs for
    store = ApiKeyStore(workdir / "keys.json")
    pool = BufferPool(max_bytes=1 << 26)
    pool.put("bench-os-random", os.urandom(32 << 20))
    ledger = LedgerView(state=state)
    book = PaymentBook()
    gateway = Gateway(view=view, keys=store, ledger=ledger,
                      key_service=KeyService(pool, MemorySink(book), ledger, view.chain_id,
                                             payments=book),
                      public=PublicReads(rate_per_s=1e9, burst=10**9))
    uvicorn.run(create_app(gateway), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)


def fill_view_from(workdir: Path) -> tuple[Any, Any]:
    import pickle
    from types import SimpleNamespace

    from tests.unit.test_gateway_api import fill_view

    genesis, records = pickle.loads((workdir / "chain.pickle").read_bytes())
    return fill_view(SimpleNamespace(genesis=genesis, records=records))  # type: ignore[arg-type]


async def _client(port: int, requests: list[bytes], deadline: float,
                  latencies: list[float], errors: list[int], index: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline:
            if index[0] >= len(requests):
                return
            request = requests[index[0] % len(requests)]
            index[0] += 1 if len(requests) > 1 else 0
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            status = int(head.split(b" ", 2)[1])
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                errors.append(status)
    finally:
        writer.close()


async def _load(port: int, requests: list[bytes], seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[int] = []
    index = [0]
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(_client(port, requests, deadline, latencies, errors, index)
                           for _ in range(CONNECTIONS)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    n = len(latencies)
    return {"rps": round(n / elapsed, 1),
            "p50_ms": round(latencies[n // 2] * 1000, 2) if n else 0.0,
            "p99_ms": round(latencies[min(n - 1, int(n * 0.99))] * 1000, 2) if n else 0.0,
            "requests": n, "errors": len(errors)}


def _wait_port(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server on {port} did not start")


def _get(path: str, key: str | None) -> bytes:
    auth = f"X-API-Key: {key}\r\n" if key else ""
    return (f"GET {path} HTTP/1.1\r\nHost: bench\r\n{auth}\r\n").encode()


def _interleaved(port: int, first: list[bytes], second: list[bytes], seconds: float
                 ) -> tuple[dict[str, float], dict[str, float]]:
    """Load ``first`` and ``second`` in the order first, second, second, first (``seconds / 2``
    each) and average each one's two runs."""
    runs: dict[int, list[dict[str, float]]] = {0: [], 1: []}
    for which in (0, 1, 1, 0):
        runs[which].append(asyncio.run(_load(port, (first, second)[which], seconds / 2)))

    def merged(parts: list[dict[str, float]]) -> dict[str, float]:
        return {"rps": round(sum(p["rps"] for p in parts) / len(parts), 1),
                "p50_ms": round(sum(p["p50_ms"] for p in parts) / len(parts), 2),
                "p99_ms": round(sum(p["p99_ms"] for p in parts) / len(parts), 2),
                "requests": sum(p["requests"] for p in parts),
                "errors": sum(p["errors"] for p in parts)}

    return merged(runs[0]), merged(runs[1])


def _verify_ranges(port: int, chain: Any, seconds: float, workers: int) -> dict[str, float]:
    """Fetch and verify the whole chain through the range endpoint, again and again for
    ``seconds``, with one client (``BeaconClient.range``): pages of ``RANGE_PAGE`` pulses,
    verified in this process (``workers`` 1) or fetched ahead and verified on ``workers``
    processes."""
    from sdk.beacon import BeaconClient
    from sdk.subscriber import TrustedCheckpoint

    anchor = TrustedCheckpoint.from_genesis(chain.genesis)
    client = BeaconClient(f"http://127.0.0.1:{port}", checkpoint=anchor)
    client.page_size = RANGE_PAGE
    heights = len(chain.records)
    verified = ranges = 0
    try:
        client.range(1, min(heights, RANGE_PAGE), workers=workers)  # start the processes
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            verified += len(client.range(1, heights, workers=workers))
            ranges += 1
        elapsed = time.perf_counter() - started
    finally:
        client.close()
    return {"pulses_per_s": round(verified / elapsed, 1), "ranges": ranges}


def _key_bodies(key: str, chain: Any, count: int) -> list[bytes]:
    from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

    from sdk.keys import KeyClient, request_commitment

    client = KeyClient.__new__(KeyClient)
    client.chain_id, client.fee = "qustream-test", 1_000
    out = []
    accounts = chain.account_keys
    for index in range(count):
        client.account = accounts[index % len(accounts)]
        x_pub = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
        k_pub = mlkem.MLKEM768PrivateKey.generate().public_key().public_bytes_raw()
        tx = client.signed_payment(request_commitment(x_pub, k_pub, 32), 32,
                                   index // len(accounts))
        body = json.dumps({"x25519_public_key": base64.b64encode(x_pub).decode(),
                           "mlkem768_public_key": base64.b64encode(k_pub).decode(),
                           "length": 32, "payment_tx": base64.b64encode(tx).decode()}).encode()
        out.append((f"POST /v1/keys HTTP/1.1\r\nHost: bench\r\nX-API-Key: {key}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                    ).encode() + body)
    return out


def main() -> None:
    import pickle

    from sdk.testing import make_local_chain
    from services.gateway.auth import ApiKeyStore

    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    chain = make_local_chain(workdir / "chain", CHAIN_HEIGHTS, accounts=8)
    (workdir / "chain.pickle").write_bytes(pickle.dumps((chain.genesis, chain.records)))
    key = ApiKeyStore(workdir / "keys.json").create(("read", "keys"), rate_per_s=1e9,
                                                    burst=10**9, key_bytes_per_day=10**12)
    port, base_port = _free_port(), _free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.gateway", "--serve", str(port),
                               str(workdir)])
    try:
        _wait_port(port)
        beacon_body = _beacon_body(port, key)
        (workdir / "beacon.json").write_bytes(beacon_body)
        baseline = subprocess.Popen([sys.executable, "-m", "bench.gateway", "--baseline",
                                     str(base_port), str(workdir)])
        try:
            _wait_port(base_port)
            base = asyncio.run(_load(base_port, [_get("/", key)], SECONDS))
        finally:
            baseline.terminate()
            baseline.wait(10)
        beacon, anonymous = _interleaved(port, [_get("/v1/beacon/latest", key)],
                                         [_get("/v1/beacon/latest", None)], SECONDS)
        serial = _verify_ranges(port, chain, SECONDS / 2, 1)
        ranges = _verify_ranges(port, chain, SECONDS / 2, RANGE_WORKERS)
        bodies = _key_bodies(key, chain, KEY_BODIES)
        keys = asyncio.run(_load(port, bodies, SECONDS))
    finally:
        server.terminate()
        server.wait(10)
    print(f"baseline {base}\nbeacon {beacon}\nanonymous {anonymous}\nranges {ranges} "
          f"serial {serial}\n"
          f"keys {keys}", flush=True)
    emit({"bench": "gateway", "beacon_rps": beacon["rps"], "beacon_p50_ms": beacon["p50_ms"],
          "beacon_p99_ms": beacon["p99_ms"], "keys_rps": keys["rps"],
          "keys_p50_ms": keys["p50_ms"], "keys_p99_ms": keys["p99_ms"],
          "keys_errors": keys["errors"], "beacon_errors": beacon["errors"],
          "baseline_rps": base["rps"], "baseline_p99_ms": base["p99_ms"],
          "beacon_vs_baseline": round(beacon["rps"] / base["rps"], 3) if base["rps"] else None,
          "anonymous_beacon_rps": anonymous["rps"],
          "anonymous_beacon_errors": anonymous["errors"],
          "anonymous_vs_keyed": (round(anonymous["rps"] / beacon["rps"], 3)
                                 if beacon["rps"] else None),
          "range_pulses_per_s": ranges["pulses_per_s"], "range_workers": RANGE_WORKERS,
          "range_serial_pulses_per_s": serial["pulses_per_s"], "range_page": RANGE_PAGE,
          "beacon_bytes": len(beacon_body), "connections": CONNECTIONS, "seconds": SECONDS,
          "load_average": round(os.getloadavg()[0], 2)})


def _beacon_body(port: int, key: str) -> bytes:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}/v1/beacon/latest",
                     headers={"X-API-Key": key}).content


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] in ("--serve", "--baseline"):
        serve(int(sys.argv[2]), Path(sys.argv[3]), sys.argv[1] == "--baseline")
    else:
        main()
