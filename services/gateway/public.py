"""Public reads: the beacon and chain endpoints answer without an API key.

A request to a public path (``is_public``) that carries no key is served as an anonymous client
whose limits are those of ``PublicReads``, keyed by the client's address (the TCP peer; put the
gateway behind a proxy that sets it, or give the proxy a key). A request that carries a key is
checked as before: an unknown key is refused (401), never downgraded to anonymous. Key material,
user records and account reads still need a key with the scope.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.gateway.auth import ApiKeyRecord

PUBLIC_PREFIXES = ("/v1/beacon", "/v1/chain/", "/v1/blocks", "/v1/validators/",
                   "/v1/stream/blocks")


@dataclass(frozen=True, slots=True)
class PublicReads:
    """Limits of anonymous clients, per client address (``enabled=False``: keys only)."""

    enabled: bool = True
    rate_per_s: float = 20.0
    burst: int = 40
    max_streams: int = 2


def is_public(method: str, path: str) -> bool:
    """True for the reads anyone may make without a key."""
    return method in ("GET", "HEAD") and path.startswith(PUBLIC_PREFIXES)


def anonymous_record(address: str, policy: PublicReads) -> ApiKeyRecord:
    """The limits of the anonymous client at ``address`` as a key record (read scope only)."""
    return ApiKeyRecord(key_id=f"anonymous:{address}", key_hash="", scopes=("read",),
                        rate_per_s=policy.rate_per_s, burst=policy.burst, key_bytes_per_day=0,
                        label="anonymous", created_at_ms=0, max_streams=policy.max_streams)
