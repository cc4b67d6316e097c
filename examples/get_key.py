"""Fetch fresh quantum key material from a QuStream gateway (``POST /v1/keys``).

The client makes fresh X25519 and ML-KEM-768 key pairs, pays with a signed ``PayForService``
transaction from a funded account (the fee transaction commits to this request), checks the
gateway's signature over the delivery against the gateway key it pinned, and decapsulates the
answer; only this process can read the key. The gateway answers once the payment is in a
finalized block (a few seconds). Against the demo::

    .venv/bin/qustream demo                      # prints the gateway URL and an API key
    .venv/bin/python examples/get_key.py --url http://127.0.0.1:8080 --api-key KEY \\
        [--account .qustream/demo/keys/account-0.json] [--length 32] \\
        [--gateway-key-file .qustream/demo/gateway/delivery-key.pub]

(``.venv/bin/qustream gateway delivery-key`` prints a gateway's key; pin it from a source you
trust.)

Prints one JSON line: the key (hex), its commitment and the payment's transaction hash.
Exit status 2 on an API error (e.g. 503 while the private pool is empty: retry after the
``retry_after`` it prints), 1 if the delivery does not open.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import httpx

from sdk.errors import ApiError, KeyDeliveryError
from sdk.keys import KeyClient

STATE_DIR = Path(os.environ.get("QUSTREAM_STATE_DIR") or ".qustream")
DEMO_ACCOUNT = STATE_DIR / "demo" / "keys" / "account-0.json"
DEMO_GATEWAY_KEY = STATE_DIR / "demo" / "gateway" / "delivery-key.pub"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--api-key", required=True, help="an API key with the 'keys' scope")
    parser.add_argument("--account", type=Path, default=DEMO_ACCOUNT,
                        help="key file of the funded account that pays the fee")
    parser.add_argument("--length", type=int, default=32, help="bytes of key material")
    parser.add_argument("--gateway-key", help="the gateway's delivery key (public key text)")
    parser.add_argument("--gateway-key-file", type=Path, default=DEMO_GATEWAY_KEY,
                        help="a file holding it (used when --gateway-key is not given)")
    args = parser.parse_args(argv)
    gateway_key = args.gateway_key or args.gateway_key_file.read_text().strip()

    head = httpx.get(f"{args.url}/v1/chain/head", headers={"X-API-Key": args.api_key},
                     timeout=30)
    chain_id = head.json().get("chain_id", "") if head.status_code == 200 else ""
    client = KeyClient.from_key_file(args.url, args.api_key, args.account, chain_id,
                                     gateway_keys=gateway_key)
    try:
        delivered = client.request(args.length)
    except ApiError as exc:
        print(json.dumps({"error": exc.title, "status": exc.status, "detail": exc.detail,
                          "retry_after": exc.retry_after}), file=sys.stderr)
        return 2
    except KeyDeliveryError as exc:
        print(json.dumps({"error": str(exc)}), file=sys.stderr)
        return 1
    finally:
        client.close()
    print(json.dumps({"key": delivered.key.hex(), "length": len(delivered.key),
                      "commitment": delivered.commitment.hex(),
                      "tx_hash": delivered.tx_hash.hex(), "sources": list(delivered.sources)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
