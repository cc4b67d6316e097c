"""Store a private record through a QuStream gateway and read it back.

The record is encrypted in this process (AES-256-GCM, data key wrapped to the user's
ML-KEM-768 key); the gateway, Kafka and Cassandra only see ciphertext. Against the demo::

    .venv/bin/python examples/store_record.py --url http://127.0.0.1:8080 --api-key KEY \\
        [--identity FILE] [--record notes] [--text "hello"] [--delete]

The identity file (``qustream users keygen`` format: private keys, mode 0600) is created and the
user registered on first use; by default it is ``<state_dir>/examples/user.json``
(``QUSTREAM_STATE_DIR``, default ``.qustream``, which git ignores), never the current
directory. Reads pass the position of the last write (``?min_offset=``), so the record read
back is the one just written. Prints one JSON line; exit status 2 on an API error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from sdk.errors import ApiError, NotFoundError, QuStreamError
from sdk.users import UserIdentity, UserStore


def default_identity() -> Path:
    """Where the example keeps its user's private keys unless told otherwise."""
    return Path(os.environ.get("QUSTREAM_STATE_DIR") or ".qustream") / "examples" / "user.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--api-key", required=True, help="an API key with the 'users' scope")
    parser.add_argument("--identity", type=Path, default=default_identity(),
                        help="identity file (default: <state_dir>/examples/user.json)")
    parser.add_argument("--record", default="notes")
    parser.add_argument("--text", default="hello from QuStream")
    parser.add_argument("--delete", action="store_true", help="delete the record afterwards")
    args = parser.parse_args(argv)

    fresh = not args.identity.exists()
    identity = UserIdentity.generate() if fresh else UserIdentity.load(args.identity)
    if fresh:
        identity.save(args.identity)
    try:
        with UserStore(args.url, args.api_key, identity) as store:
            if fresh:
                store.register()
            else:
                try:
                    store.user()
                except NotFoundError:
                    store.register()
            written = store.put(args.record, args.text.encode())
            record = store.get(args.record)
            out = {"user_id": identity.user_id, "record_id": args.record,
                   "record_version": record.record_version, "position": written.position,
                   "plaintext": record.plaintext.decode("utf-8", "replace")}
            if args.delete:
                out["deleted_at"] = store.delete(args.record).position
    except ApiError as exc:
        print(json.dumps({"error": exc.title, "status": exc.status, "detail": exc.detail}),
              file=sys.stderr)
        return 2
    except QuStreamError as exc:
        print(json.dumps({"error": str(exc)}), file=sys.stderr)
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
