"""Issue 16 on the real network (real Kafka, real processes): one Byzantine node cannot halt,
stall or fool four honest validators, and healthy validators are not counted as missing.

``test_attacker_cannot_stall_or_fool_the_network``: five validators of equal power, the fifth
run as ``tests.support.byzantine attack`` (20% of the power). From height 4 it stamps absurd
times on its proposals and publishes, once, proposals with absurd rounds (signed and forged),
prevotes for 3,000 future rounds, unsigned ``BlockFinalized`` records conflicting with an
applied height, evidence spam, forged chunks on ``entropy.raw`` and 10,000 transactions from
fresh keys. The chain keeps finalizing with few rounds per height, genuine entropy keeps
flowing (every reference re-verified against the signed chunks), each kind of rejected record
is in a DLQ with its reason, every validator and the tally restart cleanly, and
``qustream audit`` exits 0.

``test_healthy_validators_are_not_counted_missing``: four healthy validators, a fast block
interval, at least 100 blocks: from each block's ``last_commit`` no validator is absent in more
than 2% of the blocks (the commit window of ``services/consensus/node.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from protocol.commit import CommitFlag
from streams.codec import default_codec
from streams.kafka import Position, make_consumer
from streams.settings import Settings
from streams.supervisor import ServiceState
from tests.integration.test_chain_e2e import (
    Network,
    finalized_height,
    network_factory,
    verify_chain,
)
from tests.integration.test_chain_faults import _until

__all__ = ["network_factory"]
pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ATTACK_HEIGHT = 4
JUNK_TXS = 10_000
DLQS = ("dlq.chain", "dlq.entropy", "dlq.ledger")


def _records(settings: Settings, name: str) -> int:
    topic = settings.topic(name)
    consumer = make_consumer(settings, f"count-{time.time_ns()}")
    try:
        return sum(high - low for low, high in (consumer.watermarks(topic, p)
                                                for p in consumer.partitions(topic)))
    finally:
        consumer.close()


def dead_letters(settings: Settings) -> list[dict[str, Any]]:
    """Every record on the DLQ topics, decoded (``MessageDeadLettered``)."""
    codec = default_codec()
    letters: list[dict[str, Any]] = []
    for name in DLQS:
        topic = settings.topic(name)
        consumer = make_consumer(settings, f"dlq-read-{time.time_ns()}")
        try:
            partitions = consumer.partitions(topic)
            marks = {p: consumer.watermarks(topic, p) for p in partitions}
            # an empty partition has no position to reach (it stays OFFSET_INVALID)
            ends = {p: high for p, (low, high) in marks.items() if high > low}
            consumer.assign([Position(topic, p, 0) for p in ends])
            deadline = time.monotonic() + 120
            while any(consumer.position(topic, p) < end for p, end in ends.items()):
                assert time.monotonic() < deadline, f"reading {topic} took too long"
                message = consumer.poll(0.5)
                if message is None:
                    continue
                _, record = codec.decode(message.value, "MessageDeadLettered")
                letters.append({**record, "dlq": name})
        finally:
            consumer.close()
    return letters


def _reasons(letters: list[dict[str, Any]], error_type: str) -> list[str]:
    return [str(letter["reason"]) for letter in letters if letter["error_type"] == error_type]


def _audit(settings: Settings, genesis: Path) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run([sys.executable, "-m", "streams.cli", "audit", "--json",
                           "--no-progress", "--no-users", "--genesis", str(genesis)], cwd=ROOT,
                          env={**os.environ, **settings.to_env()}, capture_output=True,
                          text=True, timeout=600)
    report = json.loads(done.stdout) if done.stdout.strip() else {}
    return done.returncode, report, done.stderr[-3000:]


def test_attacker_cannot_stall_or_fool_the_network(network_factory: Any) -> None:
    network: Network = network_factory(
        validators=5, interval_ms=200, byzantine=(4,), behaviour="attack",
        byzantine_args=("--attack-height", str(ATTACK_HEIGHT), "--junk-txs", str(JUNK_TXS)))
    settings, supervisor = network.settings, network.supervisor
    assert network.wait_height(ATTACK_HEIGHT, 150) >= ATTACK_HEIGHT, network.log("validator-0")
    _until(lambda: _records(settings, "ledger.tx") >= JUNK_TXS, 240,
           "the attack burst (junk transactions on ledger.tx)")
    after_attack = finalized_height(settings)
    reached = network.wait_height(after_attack + 12, 240)
    assert reached >= after_attack + 12, (
        f"chain stalled under attack at {reached}\n" + network.log("validator-0")
        + network.log("validator-4"))

    blocks = verify_chain(network, after_attack + 10)  # refs re-verified against the chunks
    rounds = Counter(b.record.commit.round for b in blocks)
    assert max(rounds) <= 3, f"a height took more than a few rounds: {rounds}"
    late = [b for b in blocks if b.record.height > ATTACK_HEIGHT + 2]
    fed = [b for b in late if b.record.block.body.entropy]
    assert len(fed) >= len(late) // 2, "genuine entropy stopped flowing"

    _until(lambda: len(_reasons(dead_letters(settings), "losing_branch")) > 0, 60,
           "the forged chunks to be decided against")
    letters = dead_letters(settings)
    by_type = Counter(letter["error_type"] for letter in letters)
    assert any("lies more than" in r for r in _reasons(letters, "rejected_by_core")), by_type
    assert any("catch-up rounds" in r for r in _reasons(letters, "rejected_by_core")), by_type
    assert any("clock" in r for r in _reasons(letters, "invalid_block")), by_type
    assert _reasons(letters, "unverified_conflict"), by_type
    assert _reasons(letters, "invalid_evidence") and _reasons(letters, "future_evidence"), by_type
    assert _reasons(letters, "WireError"), by_type  # garbage on chain.evidence
    assert _reasons(letters, "losing_branch"), by_type
    unfunded = {(letter["source_topic"], letter["partition"], letter["offset"])
                for letter in letters if letter["error_type"] == "unfunded"}
    assert len(unfunded) >= JUNK_TXS, by_type  # every junk transaction, with its reason
    assert all(letter["reason"] for letter in letters)

    # every validator and the tally restart cleanly and carry on
    names = [f"validator-{i}" for i in range(5)] + ["tally"]
    supervisor.stop(names, grace_s=5)
    supervisor.start(names)
    restarted = finalized_height(settings)
    assert network.wait_height(restarted + 4, 180) >= restarted + 4, network.log("tally")
    for status in supervisor.status():
        if status.name in names:
            log = supervisor.log_path(status.name).read_text(errors="replace")
            crash = log[log.rfind("Traceback"):][:4000] if "Traceback" in log else log[-3000:]
            if status.state is not ServiceState.RUNNING or status.restarts:
                pytest.fail(f"{status}\n{crash}")  # not an assert: its message is not cut short

    supervisor.stop(grace_s=5)
    code, report, stderr = _audit(settings, network.genesis)
    assert code == 0, (report.get("findings"), stderr)
    warnings = {f["check"] for f in report.get("findings", [])}
    assert "unverified_conflict" in warnings, warnings


def test_healthy_validators_are_not_counted_missing(network_factory: Any) -> None:
    """Item 11: with the commit window, late precommits reach the next block's last_commit."""
    network: Network = network_factory(validators=4, interval_ms=100)
    reached = network.wait_height(104, 300)
    assert reached >= 104, network.log("validator-0")
    network.supervisor.stop(grace_s=5)
    blocks = network.blocks()
    measured = [b for b in blocks if b.record.block.body.last_commit is not None]
    assert len(measured) >= 100
    absent: Counter[bytes] = Counter()
    for block in measured:
        commit = block.record.block.body.last_commit
        assert commit is not None
        for record in commit.signatures:
            if record.flag is CommitFlag.ABSENT:
                absent[record.validator_address] += 1
    worst = max(absent.values(), default=0)
    assert worst <= len(measured) * 2 // 100, (
        f"absent counts {dict((a.hex()[:8], n) for a, n in absent.items())} in "
        f"{len(measured)} blocks")
