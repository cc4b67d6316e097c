"""Follow the QuStream beacon, verifying every block before printing it.

From the gateway's server-sent-event stream (resumed with ``Last-Event-ID`` after a drop)::

    .venv/bin/python examples/subscribe.py --url http://127.0.0.1:8080 --api-key KEY \\
        --genesis .qustream/demo/genesis.json [--count 5]

or straight from Kafka (``chain.blocks``; settings from the ``QUSTREAM_*`` environment)::

    .venv/bin/python examples/subscribe.py --kafka --genesis .qustream/demo/genesis.json

Every block is checked from genesis (hash link, commit certificate against the validator set,
randomness derivation, state hash) by ``BlockSubscriber``; the gateway and Kafka are not
trusted. Prints one JSON line per block; a block that does not verify stops the program with
its reason (exit status 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from sdk.errors import ApiError, BlockRejectedError
from sdk.subscriber import BlockSource, BlockSubscriber, KafkaBlockSource, SseBlockSource

DEMO_GENESIS = Path(os.environ.get("QUSTREAM_STATE_DIR") or ".qustream") / "demo" / "genesis.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--api-key", help="an API key with the 'read' scope (SSE source)")
    parser.add_argument("--kafka", action="store_true", help="read chain.blocks from Kafka")
    parser.add_argument("--genesis", type=Path, default=DEMO_GENESIS)
    parser.add_argument("--count", type=int, default=0, help="stop after this many (0: never)")
    args = parser.parse_args(argv)

    source: BlockSource
    if args.kafka:
        from streams.settings import load_settings

        source = KafkaBlockSource(load_settings())
    elif args.api_key:
        source = SseBlockSource(args.url, args.api_key,
                                stop_after=args.count if args.count else None)
    else:
        parser.error("give --api-key (SSE from the gateway) or --kafka")
    printed = 0
    try:
        for block in BlockSubscriber(source, genesis=args.genesis):
            print(json.dumps({"height": block.height, "hash": block.block_hash.hex(),
                              "randomness": block.randomness.hex(), "verified": True}),
                  flush=True)
            printed += 1
            if args.count and printed >= args.count:
                break
    except BlockRejectedError as exc:
        print(json.dumps({"rejected": exc.height, "reason": exc.reason}), file=sys.stderr)
        return 1
    except ApiError as exc:
        print(json.dumps({"error": exc.title, "status": exc.status, "detail": exc.detail}),
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
