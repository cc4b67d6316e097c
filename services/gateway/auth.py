"""API keys: issued once, stored only as hashes, each with scopes and limits.

A key reads ``qsk_<key id>_<secret>``. The store (a JSON file under the state dir, written
atomically with mode 0600) keeps per key id: SHA-256 of the whole key, the scopes (``read``,
``keys``, ``users``), the rate (requests/s and burst) and the daily key-material quota. The
secret is 32 random bytes, so a plain hash is enough (no password stretching needed) and the
comparison is constant-time.

Clients send the key as ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``. No key -> 401;
a key the store does not know -> 401; a known key without the scope -> 403. mTLS, when the
server is started with a client CA (``qustream gateway run --ssl-ca-certs``), is enforced by
the TLS layer before any of this runs; API keys are still required (the two add up).

Revocation reaches a running gateway within ``refresh_s`` (default 1 s): every lookup first
checks, at most once per ``refresh_s``, whether the file changed (inode, size, modification
time in ns; the CLI replaces it atomically, and a Kubernetes Secret volume swaps it) and reloads
it if so. A key removed from the file stops working at the next lookup after that, including on
open event streams (they re-check their key, see ``api.py``). A file that disappears or does
not parse revokes every key (fail closed) until it is readable again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from protocol.errors import InputError

SCOPES = ("read", "keys", "users")
PREFIX = "qsk_"
REFRESH_S = 1.0  # how stale a gateway's view of the key file may be (the revocation delay)
log = logging.getLogger("qustream.gateway.auth")


class ApiKeyError(InputError):
    """A key cannot be created or parsed (bad scope, malformed key)."""


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    key_id: str
    key_hash: str  # hex SHA-256 of the full key
    scopes: tuple[str, ...]
    rate_per_s: float = 50.0
    burst: int = 100
    key_bytes_per_day: int = 1_048_576
    label: str = ""
    created_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    max_streams: int = 4  # open event streams (SSE) at once


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_key(key: str) -> str:
    """The key id of a well-formed key; ``ApiKeyError`` otherwise."""
    if not key.startswith(PREFIX):
        raise ApiKeyError("an API key starts with qsk_")
    key_id, sep, secret = key[len(PREFIX):].partition("_")
    if not sep or not key_id or not secret:
        raise ApiKeyError("an API key reads qsk_<id>_<secret>")
    return key_id


class ApiKeyStore:
    """The hashed keys; thread-safe. ``path=None`` keeps them in memory (tests, benches).
    ``refresh_s`` bounds how long a change of the file takes to reach ``lookup`` (module doc);
    ``clock`` is monotonic seconds."""

    def __init__(self, path: Path | None = None, *, refresh_s: float = REFRESH_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.refresh_s = refresh_s
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, ApiKeyRecord] = {}
        self._loaded: tuple[int, int, int] | None = None
        self._checked_at = clock()
        self._reload()

    def _reload(self) -> None:
        """Reload the file if it changed since the last load (call with the lock held, or
        before the store is shared)."""
        if self.path is None:
            return
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            if self._loaded is not None:
                log.warning("API key file %s is gone: every key is refused", self.path)
            self._records, self._loaded = {}, None
            return
        signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if signature == self._loaded:
            return
        try:
            data = json.loads(self.path.read_text())
            records = {
                item["key_id"]: ApiKeyRecord(**{**item, "scopes": tuple(item["scopes"])})
                for item in data.get("keys", [])}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("API key file %s does not read (%s): every key is refused", self.path,
                      exc)
            self._records, self._loaded = {}, None
            return
        self._records, self._loaded = records, signature

    def refresh(self, *, force: bool = False) -> None:
        """Reload the file if it changed, at most once per ``refresh_s`` unless ``force``."""
        if self.path is None:
            return
        now = self._clock()
        if not force and now - self._checked_at < self.refresh_s:
            return
        with self._lock:
            self._checked_at = now
            self._reload()

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"keys": [asdict(r) for r in self._records.values()]},
                                  indent=2))
        os.chmod(tmp, 0o600)
        tmp.replace(self.path)

    def create(self, scopes: tuple[str, ...], *, label: str = "", rate_per_s: float = 50.0,
               burst: int = 100, key_bytes_per_day: int = 1_048_576,
               max_streams: int = 4) -> str:
        """Make a key, store its hash, return the key (the only time it is visible)."""
        unknown = [s for s in scopes if s not in SCOPES]
        if unknown or not scopes:
            raise ApiKeyError(f"scopes must be among {', '.join(SCOPES)}; got {scopes}")
        key_id = secrets.token_hex(6)
        key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        with self._lock:
            self._reload()
            self._records[key_id] = ApiKeyRecord(key_id, hash_key(key), tuple(scopes),
                                                 rate_per_s, burst, key_bytes_per_day, label,
                                                 max_streams=max_streams)
            self._save()
        return key

    def revoke(self, key_id: str) -> bool:
        with self._lock:
            self._reload()
            gone = self._records.pop(key_id, None) is not None
            self._save()
        return gone

    def records(self) -> list[ApiKeyRecord]:
        with self._lock:
            self._reload()
            return list(self._records.values())

    def lookup(self, key: str) -> ApiKeyRecord | None:
        """The record of ``key`` if it is valid now; None for unknown, revoked or malformed
        keys."""
        try:
            key_id = parse_key(key)
        except ApiKeyError:
            return None
        self.refresh()
        record = self._records.get(key_id)
        if record is None and self.path is not None:
            self.refresh(force=True)  # a key created by the CLI after the gateway started
            record = self._records.get(key_id)
        if record is None or not hmac.compare_digest(record.key_hash, hash_key(key)):
            return None
        return record

    def still_valid(self, record: ApiKeyRecord) -> bool:
        """Whether ``record`` (from an earlier ``lookup``) has not been revoked since."""
        self.refresh()
        current = self._records.get(record.key_id)
        return current is not None and current.key_hash == record.key_hash


def key_from_headers(x_api_key: str | None, authorization: str | None) -> str | None:
    if x_api_key:
        return x_api_key
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None
