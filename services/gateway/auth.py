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
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from protocol.errors import InputError

SCOPES = ("read", "keys", "users")
PREFIX = "qsk_"


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
    """The hashed keys; thread-safe. ``path=None`` keeps them in memory (tests, benches)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._records: dict[str, ApiKeyRecord] = {}
        self._loaded_mtime: float | None = None
        self._reload()

    def _reload(self) -> None:
        if self.path is None or not self.path.exists():
            return
        mtime = self.path.stat().st_mtime
        if mtime == self._loaded_mtime:
            return
        data = json.loads(self.path.read_text())
        self._records = {
            item["key_id"]: ApiKeyRecord(**{**item, "scopes": tuple(item["scopes"])})
            for item in data.get("keys", [])}
        self._loaded_mtime = mtime

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
               burst: int = 100, key_bytes_per_day: int = 1_048_576) -> str:
        """Make a key, store its hash, return the key (the only time it is visible)."""
        unknown = [s for s in scopes if s not in SCOPES]
        if unknown or not scopes:
            raise ApiKeyError(f"scopes must be among {', '.join(SCOPES)}; got {scopes}")
        key_id = secrets.token_hex(6)
        key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        with self._lock:
            self._reload()
            self._records[key_id] = ApiKeyRecord(key_id, hash_key(key), tuple(scopes),
                                                 rate_per_s, burst, key_bytes_per_day, label)
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
        """The record of ``key`` if it is valid; None for unknown or malformed keys."""
        try:
            key_id = parse_key(key)
        except ApiKeyError:
            return None
        record = self._records.get(key_id)
        if record is None and self.path is not None:
            with self._lock:
                self._reload()  # a key created by the CLI after the gateway started
            record = self._records.get(key_id)
        if record is None or not hmac.compare_digest(record.key_hash, hash_key(key)):
            return None
        return record


def key_from_headers(x_api_key: str | None, authorization: str | None) -> str | None:
    if x_api_key:
        return x_api_key
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None
