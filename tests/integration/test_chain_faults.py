"""Fault tests of the running network (real processes, real Kafka): kill -9 of validators and of
the tally, a Byzantine double-signer, and a delegation changing voting power."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

from protocol.keys import SigningKey
from protocol.messages import Vote, VoteType
from services.ledger.core import Delegate, encode_signed_tx, sign_tx
from services.ledger.core.queries import next_nonce, validator
from services.ledger.submit import submit_tx
from streams.chain_wire import decode_consensus, decode_finalized
from streams.kafka import Position, make_consumer, read_to_end
from streams.supervisor import ServiceState, Supervisor
from tests.integration.test_chain_e2e import (
    Network,
    finalized_height,
    network_factory,
    verify_chain,
)

__all__ = ["network_factory"]  # the fixture, re-exported for pytest


def _wait(network: Network, height: int, timeout_s: float) -> int:
    """Like ``Network.wait_height`` but without restarting what was killed."""
    deadline = time.monotonic() + timeout_s
    reached = finalized_height(network.settings)
    while reached < height and time.monotonic() < deadline:
        time.sleep(0.3)
        reached = finalized_height(network.settings)
    return reached


def _until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        time.sleep(0.2)


def _state(supervisor: Supervisor, name: str) -> ServiceState:
    supervisor.tick()  # reaps what exited, restarts what is due
    return next(s.state for s in supervisor.status() if s.name == name)


def _prevoters(network: Network, height: int, after_ms: int = 0) -> set[bytes]:
    """Validators whose prevotes for ``height`` are on chain.consensus (read to its end), of
    those made after ``after_ms`` (the record's create time: when the validator sent it)."""
    topic = network.settings.topic("chain.consensus")
    consumer = make_consumer(network.settings, f"prevoters-{time.time_ns()}")
    found: set[bytes] = set()
    try:
        end = consumer.watermarks(topic)[1]
        consumer.assign([Position(topic, 0, 0)])
        while consumer.position(topic, 0) < end:
            record = consumer.poll(0.5)
            if record is None:
                continue
            decoded = decode_consensus(record.value, network.chain_id)
            if isinstance(decoded, Vote) and decoded.height == height and (
                    decoded.vote_type is VoteType.PREVOTE) and record.timestamp_ms > after_ms:
                found.add(decoded.validator_address)
    finally:
        consumer.close()
    return found


def _stable_height(network: Network, quiet_s: float, timeout_s: float) -> int:
    """The finalized height once it has not changed for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    last, since = finalized_height(network.settings), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = finalized_height(network.settings)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return last


def _raw_heights(network: Network) -> list[int]:
    topic = network.settings.topic("chain.blocks")
    return [decode_finalized(record.value).height
            for record in read_to_end(network.settings, topic, f"raw-{time.time_ns()}", [0])]


def test_kill_validators_and_tally(network_factory: object) -> None:
    network: Network = network_factory(interval_ms=300)  # type: ignore[operator]
    supervisor = network.supervisor
    assert network.wait_height(4, 90) >= 4, network.log("validator-0")

    # one of four down: the chain continues with 3 (proposer rounds of the dead one time out)
    supervisor.kill("validator-3", signal.SIGKILL)
    start = finalized_height(network.settings)
    assert _wait(network, start + 4, 60) >= start + 4, "chain stopped with 3 of 4 validators"

    # the tally dies mid-stream: nothing is finalized meanwhile, restart resumes without gap
    supervisor.kill("tally", signal.SIGKILL)
    _until(lambda: _state(supervisor, "tally") is not ServiceState.RUNNING, 30,
           "the supervisor to see the tally gone")

    # two of four down: no quorum, the chain halts
    supervisor.kill("validator-2", signal.SIGKILL)
    supervisor.stop(["validator-2", "validator-3"], grace_s=1)  # they come back later
    stopped_ms = time.time_ns() // 1_000_000
    _until(lambda: _state(supervisor, "tally") is ServiceState.RUNNING, 30,
           "the tally's restart")
    halted_at = _stable_height(network, quiet_s=4, timeout_s=30)  # the tally catches up
    live = (network.key_address("validator-0"), network.key_address("validator-1"))
    _until(lambda: set(live) <= _prevoters(network, halted_at + 1), 60,
           f"both live validators to prevote at height {halted_at + 1}")
    # validator-2 may have prevoted at halted_at + 1 before it was killed (seen once under
    # make test): what counts is that nothing voted once it was down
    assert _prevoters(network, halted_at + 1, stopped_ms) <= set(live), "a stopped validator voted"
    assert finalized_height(network.settings) == halted_at, "chain advanced without quorum"

    # restart both: the chain resumes
    supervisor.start(["validator-2", "validator-3"])
    assert network.wait_height(halted_at + 4, 90) >= halted_at + 4, network.log("validator-2")

    supervisor.stop(grace_s=5)  # a still-growing topic would keep the readers below busy
    heights = _raw_heights(network)
    assert heights == list(range(1, len(heights) + 1)), f"gap or duplicate: {heights}"
    verify_chain(network, halted_at + 4)


def test_byzantine_double_signer_is_slashed_and_delegation_moves_power(
    network_factory: object,
) -> None:
    # Five, so that the four left after the slash still tolerate one slow node: with four,
    # the three left need every vote, and one validator late to read halted the chain in CI
    # (the nodes now report and restart a stuck fetch, services/consensus/node.py).
    network: Network = network_factory(  # type: ignore[operator]
        validators=5, interval_ms=300, byzantine=(4,))
    assert network.wait_height(3, 90) >= 3, network.log("validator-0")
    net = network.root / "net"
    byzantine = SigningKey.load(net / "keys" / "validator-4.json").address
    target = SigningKey.load(net / "keys" / "validator-0.json").address
    account = SigningKey.load(net / "keys" / "account-0.json")

    blocks = network.blocks()
    state = blocks[-1].chain.app_state
    power_before = validator(state, target).tokens  # type: ignore[union-attr]
    amount = 5_000 * 1_000_000
    signed = sign_tx(account, blocks[-1].record.chain_id, next_nonce(state, account.address),
                     10_000, Delegate(target, amount))
    submit_tx(network.settings, encode_signed_tx(signed))

    deadline = time.monotonic() + 120
    slashed_at = delegated_at = None
    while time.monotonic() < deadline and (slashed_at is None or delegated_at is None):
        network.supervisor.tick()
        time.sleep(1)
        for block in network.blocks():
            record = validator(block.chain.app_state, byzantine)
            if slashed_at is None and record is not None and record.tombstoned:
                slashed_at = block.record.height
                assert record.jailed
                assert any(e.validator_address == byzantine
                           for e in block.record.block.body.evidence)
            target_record = validator(block.chain.app_state, target)
            if delegated_at is None and target_record is not None and (
                    target_record.tokens >= power_before + amount):
                delegated_at = block.record.height
    assert slashed_at is not None, network.logs()
    assert delegated_at is not None, f"head {len(network.blocks())}\n{network.logs()}"
    network.wait_height(max(slashed_at, delegated_at) + 3, 30)
    blocks = {b.record.height: b for b in verify_chain(network, delegated_at + 2)}
    power_of = {h: {v.address: v.power for v in b.chain.validators.validators}
                for h, b in blocks.items()}
    # chain after block h governs h+1; a change made by block h governs h+2
    assert power_of[delegated_at][target] == power_of[delegated_at - 1][target]
    assert power_of[delegated_at + 1][target] > power_of[delegated_at][target]
    assert byzantine not in power_of[slashed_at + 1]


def test_guard_file_survives(tmp_path: Path) -> None:
    from services.consensus.core.signer import SignerState, SignStep
    from services.consensus.guard import GuardError, SignGuard

    key = SigningKey.generate()
    guard = SignGuard(tmp_path / "g.json", key.address)
    state, signature = SignerState().sign(key, 5, 0, SignStep.PREVOTE, b"bytes")
    guard.persist(state)
    loaded = SignGuard(tmp_path / "g.json", key.address).load()
    assert loaded == state
    assert loaded.sign(key, 5, 0, SignStep.PREVOTE, b"bytes")[1] == signature
    other = SigningKey.generate()
    try:
        SignGuard(tmp_path / "g.json", other.address).load()
    except GuardError:
        pass
    else:
        raise AssertionError("a guard file of another key was accepted")
