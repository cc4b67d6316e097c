"""Benchmark of the pure chain core: ``python -m bench.consensus_core``.

Measures, with ML-DSA-65 keys (the default):

- simulated heights per second with 4, 16 and 64 validators on a stable network (no loss, no
  partitions), all validators in one process. Each distinct signed message is verified once for
  the whole network (the simulator's shared cache), i.e. one validator's share of the work, but
  every validator's state machine runs here, so the harness cost grows with n^2;
- where the time goes: the share spent signing, verifying and in everything else (state
  machine, block building and validation, the harness);
- commit-certificate verifications per second (full ``verify_commit``, no cache);
- a baseline measured in the same run: the raw ``cryptography`` cost of the signatures one
  height needs (2n + 1 signs and 2n + 1 verifications: proposal, prevotes, precommits), and the
  ratio of ours to it (1.0 would mean consensus adds nothing beyond the signatures).

The last line is one JSON object (``bench.common.emit``).
"""

from __future__ import annotations

import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric import mldsa

from bench.common import emit
from protocol.commit import verify_commit
from protocol.keys import Algorithm, SigningKey
from tests.support.sim import SimConfig, Simulation

SIZES = ((4, 20), (16, 8), (64, 3))


class _Timed:
    """Accumulates wall time spent in a wrapped callable."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0


def _run_network(validators: int, heights: int) -> dict[str, Any]:
    config = SimConfig(
        seed=1,
        validators=validators,
        heights=heights,
        algorithm=Algorithm.ML_DSA_65,
        gst_ms=0,
        loss_per_mille=0,
        duplicate_per_mille=0,
        tx_interval_ms=100,
    )
    simulation = Simulation(config)
    signing = _Timed()
    original_sign = SigningKey.sign

    def timed_sign(key: SigningKey, message: bytes) -> bytes:
        started = time.perf_counter()
        try:
            return original_sign(key, message)
        finally:
            signing.seconds += time.perf_counter() - started
            signing.calls += 1

    verifying = _Timed()
    original_check = simulation.verifier.__class__.__call__

    def timed_check(verifier: Any, key: Any, message: bytes, signature: bytes) -> bool:
        started = time.perf_counter()
        try:
            return original_check(verifier, key, message, signature)
        finally:
            verifying.seconds += time.perf_counter() - started
            verifying.calls += 1

    SigningKey.sign = timed_sign  # type: ignore[method-assign,assignment]
    simulation.verifier.__class__.__call__ = timed_check  # type: ignore[method-assign,assignment]
    try:
        started = time.perf_counter()
        result = simulation.run()
        elapsed = time.perf_counter() - started
    finally:
        SigningKey.sign = original_sign  # type: ignore[method-assign,assignment]
        simulation.verifier.__class__.__call__ = original_check  # type: ignore[method-assign,assignment]
    decided = result.heights_decided
    return {
        "heights_per_s": decided / elapsed,
        "sign_share": signing.seconds / elapsed,
        "verify_share": verifying.seconds / elapsed,
        "other_share": max(0.0, 1 - (signing.seconds + verifying.seconds) / elapsed),
        "signatures": signing.calls,
        "distinct_verifications": result.signature_verifications,
        "simulation": simulation,
    }


def _commit_verifications_per_s(simulation: Simulation, seconds: float = 2.0) -> float:
    heights = sorted(simulation.nodes[0].decisions)
    height = heights[0]
    decision = simulation.nodes[0].decisions[height]
    validators = simulation.sets_by_height[height]
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        result = verify_commit(
            "qustream-sim", decision.block.hash, height, decision.commit, validators
        )
        assert result.ok, result.reason
        count += 1
    return count / (time.perf_counter() - started)


def _baseline_heights_per_s(validators: int, rounds: int = 3) -> float:
    """Raw cryptography cost of one height's 2n+1 signatures and verifications."""
    private = mldsa.MLDSA65PrivateKey.from_seed_bytes(bytes(32))
    public = private.public_key()
    message = b"\x00" * 120  # about the size of a vote's sign-bytes
    count = 2 * validators + 1
    started = time.perf_counter()
    for _ in range(rounds):
        signatures = [private.sign(message) for _ in range(count)]
        for signature in signatures:
            public.verify(signature, message)
    return rounds / (time.perf_counter() - started)


def main() -> None:
    record: dict[str, Any] = {"bench": "consensus_core", "algorithm": "ml-dsa-65"}
    details: dict[str, Any] = {}
    for validators, heights in SIZES:
        measured = _run_network(validators, heights)
        baseline = _baseline_heights_per_s(validators)
        ours = measured["heights_per_s"]
        record[f"heights_per_s_{validators}"] = round(ours, 3)
        details[f"baseline_heights_per_s_{validators}"] = round(baseline, 3)
        details[f"ratio_{validators}"] = round(ours / baseline, 4)
        details[f"sign_share_{validators}"] = round(measured["sign_share"], 3)
        details[f"verify_share_{validators}"] = round(measured["verify_share"], 3)
        details[f"other_share_{validators}"] = round(measured["other_share"], 3)
        record[f"commit_verifications_per_s_{validators}"] = round(
            _commit_verifications_per_s(measured["simulation"]), 1
        )
        print(
            f"{validators:3d} validators: {ours:8.2f} heights/s (baseline signatures only "
            f"{baseline:8.2f}/s); sign {measured['sign_share']:.0%}, verify "
            f"{measured['verify_share']:.0%}, state machines + harness "
            f"{measured['other_share']:.0%}; {measured['signatures']} signatures, "
            f"{measured['distinct_verifications']} distinct verifications",
            flush=True,
        )
    record.update(details)
    emit(record)


if __name__ == "__main__":
    main()
