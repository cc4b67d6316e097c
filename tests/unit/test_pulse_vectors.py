"""Golden vectors for the pulse status (tests/vectors/pulse/status.json): headers with every
small combination of height, fresh and registered source counts, their canonical encoding and
the status ``protocol.pulse`` gives them. The explorer's JavaScript decodes the same headers and
must reach the same status, verdict and text (services/gateway/web/test/vectors.test.js).
Regenerate after an intentional change with
``.venv/bin/python -m tests.unit.test_pulse_vectors``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from protocol.block import Header, SeqRange
from protocol.pulse import describe, is_random, pulse_status
from tests.support import vectors

VECTOR_DIR = Path(__file__).resolve().parents[1] / "vectors" / "pulse"
NAMES = ("status",)


def _header(height: int, fresh: int, registered: int) -> Header:
    return Header(
        chain_id="qustream-pulse-vectors", height=height, round=0, time_ms=1_000_000 + height,
        previous_block_hash=bytes([1]) * 32, last_commit_hash=bytes(32) if height == 1
        else bytes([2]) * 32, entropy_root=bytes([3]) * 32,
        entropy_ranges=tuple(SeqRange(f"qrng-{i}", height, height) for i in range(fresh)),
        fresh_sources=fresh, registered_sources=registered, randomness=bytes([4]) * 64,
        tx_root=bytes([5]) * 32, evidence_root=bytes([6]) * 32, validators_hash=bytes([7]) * 32,
        next_validators_hash=bytes([7]) * 32, app_hash=bytes([8]) * 32,
        proposer_address=bytes([9]) * 20, history_root=bytes([10]) * 32)


def build_vector(name: str) -> dict[str, Any]:
    cases = []
    for height in (1, 2, 9):
        for registered in range(5):
            for fresh in range(min(registered, 3) + 1):
                header = _header(height, fresh, registered)
                status = pulse_status(header)
                cases.append({"height": height, "fresh_sources": fresh,
                              "registered_sources": registered,
                              "header_canonical": header.canonical().hex(),
                              "expected": {"status": int(status), "random": is_random(status),
                                           "text": describe(status)}})
    return {"description": "Pulse status (protocol/pulse.py) of headers by height, fresh and "
                           "registered source counts: NIST-style bits, 1 chain start, 256 no "
                           "fresh entropy, 512 fewer sources than min(2, registered).",
            "cases": cases}


def write_vectors() -> None:
    vectors.write(VECTOR_DIR, NAMES, build_vector)


def test_pulse_status_vectors_match_protocol_pulse() -> None:
    recorded = vectors.load(VECTOR_DIR, "status")
    assert vectors.generated(build_vector, "status") == recorded
    statuses = {case["expected"]["status"] for case in recorded["cases"]}
    # every bit, alone and with the chain start, is exercised
    assert statuses >= {0, 1, 256, 257, 512, 513}


if __name__ == "__main__":
    write_vectors()
