"""Container HEALTHCHECK: exit 0 when the role's health URL answers 2xx.

The URL comes from QUSTREAM_HEALTHCHECK_URL (gateway: /healthz on 8080; every other role: the
Prometheus endpoint on 9464). Standard library only, so it runs in the slim image.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:9464/metrics"


def main() -> int:
    url = os.environ.get("QUSTREAM_HEALTHCHECK_URL", DEFAULT_URL)
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if 200 <= response.status < 300 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
