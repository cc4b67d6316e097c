"""The monitor's pure core: rules as tables of (description, inputs, expected raise/resolve).

Each case feeds facts at event times and judges the rules at chosen moments; the expected
events are (kind, rule, subject). Windows, dedupe, positions and restarts have their own tests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.monitor.core.alerts import (
    AlertRaised,
    AlertResolved,
    OpenAlerts,
    fold,
    reconcile,
)
from services.monitor.core.facts import (
    BlockRejected,
    BlockSeen,
    CheckpointSeen,
    ChunkSeen,
    DeadLettered,
    Fact,
    HeartbeatSeen,
    Position,
    PrecommitSeen,
    ProposalSeen,
    QrngAlertSeen,
    TxsIncluded,
    TxSubmitted,
    ValidatorStatusSeen,
)
from services.monitor.core.policy import MonitorPolicy
from services.monitor.core.rules import RULES, evaluate
from services.monitor.core.state import MonitorState, apply_record
from services.monitor.core.windows import Counts, Samples, WindowError, WindowSpec, percentile

S = 1000
T0 = 1_800_000_000_000  # an event time well past any window size
POLICY = MonitorPolicy(
    qrng_window=WindowSpec.hopping(10 * S, 2 * S),
    validator_window=WindowSpec.hopping(10 * S, 2 * S),
    chain_window=WindowSpec.hopping(20 * S, 2 * S), dlq_window=WindowSpec.tumbling(10 * S),
    slash_window=WindowSpec.hopping(60 * S, 10 * S), qrng_stall_ms=5 * S,
    qrng_heartbeat_timeout_ms=6 * S, qrng_checkpoint_stale_ms=5 * S, block_period_ms=S,
    mempool_depth=4, finality_p95_ms=2 * S, rounds_above_zero=2, judge_lag_blocks=2)
V1, V2, V3, V4 = "a1" * 20, "b2" * 20, "c3" * 20, "d4" * 20
SET = (V1, V2, V3, V4)


@dataclass(frozen=True)
class Step:
    facts: tuple[Fact, ...]
    now_ms: int
    raised: frozenset[tuple[str, str]] = frozenset()
    resolved: frozenset[tuple[str, str]] = frozenset()


def step(facts: tuple[Fact, ...] | list[Fact], now_s: float,
         raised: tuple[tuple[str, str], ...] = (),
         resolved: tuple[tuple[str, str], ...] = ()) -> Step:
    return Step(tuple(facts), T0 + int(now_s * S), frozenset(raised), frozenset(resolved))


def at(seconds: float) -> int:
    return T0 + int(seconds * S)


def beat(seconds: float, state: str = "HEALTHY", rct: int = 0, apt: int = 0,
         source: str = "q0") -> HeartbeatSeen:
    return HeartbeatSeen(source, at(seconds), 1e6, state, rct, apt, 10)


def chunks(first_seq: int, count: int, start_s: float, every_s: float = 0.5,
           source: str = "q0") -> list[Fact]:
    return [ChunkSeen(source, first_seq + i, 65536, at(start_s + i * every_s))
            for i in range(count)]


def checkpoint(seconds: float, verified: bool | None = True) -> CheckpointSeen:
    return CheckpointSeen("q0", 1, at(seconds), verified)


def traffic(start_s: float, end_s: float, first_seq: int = 0) -> list[Fact]:
    """A healthy source between two times: a chunk every 0.5 s, a checkpoint every second."""
    count = int((end_s - start_s) * 2)
    facts: list[Fact] = [*chunks(first_seq, count, start_s)]
    facts += [checkpoint(start_s + i) for i in range(int(end_s - start_s))]
    return sorted(facts, key=lambda f: f.produced_at_ms if isinstance(f, ChunkSeen)
                  else f.signed_at_ms)  # type: ignore[union-attr]


def block(height: int, seconds: float, signed: tuple[str, ...] = SET, round_: int = 0,
          round_proposers: tuple[str, ...] = (), previous_signed: tuple[str, ...] = (),
          double_signers: tuple[str, ...] = (), proposed_s: float | None = None,
          txs: tuple[str, ...] = (), pulse_status: int = 0) -> BlockSeen:
    proposed = at(proposed_s if proposed_s is not None else seconds - 0.1)
    return BlockSeen(height, round_, V1, at(seconds), proposed, at(seconds), SET, signed,
                     previous_signed, round_proposers, double_signers, txs, pulse_status)


def consensus(height: int, seconds: float, validator: str = V1) -> PrecommitSeen:
    return PrecommitSeen(height, 0, validator, True, at(seconds))


def chain(heights: range, signed_by: tuple[str, ...] = SET, late: tuple[str, ...] = ()
          ) -> list[Fact]:
    """Blocks one per second with the consensus log moving along: the signers' precommits
    before each block, the ``late`` validators' precommits just after it."""
    facts: list[Fact] = []
    for h in heights:
        facts += [consensus(h, h - 0.2, v) for v in signed_by]
        facts.append(block(h, h, signed=signed_by[:3]))
        facts += [consensus(h, h + 0.1, v) for v in late]
    return facts


CASES: list[tuple[str, list[Step]]] = [
    ("healthy source raises nothing", [
        step([beat(0), *chunks(0, 20, 0), checkpoint(1), checkpoint(4), beat(2), beat(4),
              checkpoint(8), beat(8), checkpoint(9.5)], 9.9),
    ]),
    ("health-test failures fire and resolve when a window passes without one", [
        step([*traffic(0, 2), beat(0), beat(2, rct=3)], 2.5,
             raised=(("QrngHealthTestFailures", "q0"),)),
        step([*traffic(2, 11, 4), beat(4, rct=3), beat(11, rct=3)], 11.9),
        step([*traffic(11, 12, 22), beat(12, rct=3)], 12.1,
             resolved=(("QrngHealthTestFailures", "q0"),)),
    ]),
    ("quarantine from the source's alert, recovery from its heartbeat", [
        step([beat(0), QrngAlertSeen("q0", at(1), "HEALTH_FAILURE", "RCT")], 1.2,
             raised=(("QrngQuarantined", "q0"),)),
        step([beat(2, "QUARANTINED")], 2.5),
        step([beat(4, "HEALTHY")], 4.5, resolved=(("QrngQuarantined", "q0"),)),
    ]),
    ("no chunk for the stall time, then chunks again", [
        step([*chunks(0, 4, 0), checkpoint(1.5), checkpoint(3.5)], 2),
        step([], 6.6, raised=(("QrngStalled", "q0"),)),
        step(chunks(4, 1, 7), 7.2, resolved=(("QrngStalled", "q0"),)),
    ]),
    ("a sequence gap fires for one window", [
        step([*chunks(0, 3, 0, every_s=0.1), *chunks(5, 3, 0.3, every_s=0.1)], 1,
             raised=(("QrngChunkGaps", "q0"),)),
        step([*chunks(8, 30, 1, every_s=0.4), checkpoint(12)], 12.5,
             resolved=(("QrngChunkGaps", "q0"),)),
    ]),
    ("rate below the floor once half the window is seen", [
        step([*(ChunkSeen("q0", i, 100, at(i)) for i in range(6)), checkpoint(5)], 5.5,
             raised=(("QrngRateBelowFloor", "q0"),)),
    ]),
    ("silent heartbeats, then one", [
        step([beat(0), *traffic(0, 5)], 5),
        step(traffic(5, 6.5, 10), 6.5, raised=(("QrngHeartbeatMissing", "q0"),)),
        step([beat(7)], 7.1, resolved=(("QrngHeartbeatMissing", "q0"),)),
    ]),
    ("only a verified checkpoint counts", [
        step([*chunks(0, 2, 0), checkpoint(0.5)], 1),
        step([checkpoint(3, verified=False), *chunks(2, 1, 5)], 5.6,
             raised=(("QrngCheckpointStale", "q0"),)),
        step([checkpoint(6, verified=None)], 6.1, resolved=(("QrngCheckpointStale", "q0"),)),
    ]),
    ("a validator that stops precommitting is judged after the consensus log moves on", [
        step(chain(range(1, 5), signed_by=(V1, V2, V3)), 4.1),
        step([consensus(5, 4.8), consensus(6, 5.8)], 5.9,
             raised=(("ValidatorMissedPrecommits", V4),)),
    ]),
    ("a late precommit on chain.consensus is a signature", [
        step([*chain(range(1, 7), signed_by=(V1, V2, V3), late=(V4,)), consensus(8, 7.9)], 8),
    ]),
    ("the next block's last commit is a signature", [
        step([*(block(h, h, signed=(V1, V2, V3), previous_signed=SET) for h in range(1, 8)),
              consensus(9, 8.5)], 8.6),
    ]),
    ("missed precommits resolve when the window has rolled past them", [
        step([*chain(range(1, 6), signed_by=(V1, V2, V3)), consensus(7, 6.9)], 7,
             raised=(("ValidatorMissedPrecommits", V4),)),
        step([*chain(range(6, 20)), consensus(21, 20)], 20.5,
             resolved=(("ValidatorMissedPrecommits", V4),)),
    ]),
    ("a round whose proposer did not propose is charged to that proposer", [
        step([block(1, 1), block(2, 2, round_=1, round_proposers=(V3,)), consensus(4, 3.9),
              block(3, 3, round_=1, round_proposers=(V3,)), consensus(5, 4.9)], 5,
             raised=(("ValidatorProposalTimeouts", V3), ("ChainRoundsAboveZero", "chain"))),
    ]),
    ("a proposal that was logged is no timeout", [
        step([block(1, 1), ProposalSeen(2, 0, V3, at(1.5)), ProposalSeen(3, 0, V3, at(2.5)),
              block(2, 2, round_=1, round_proposers=(V3,)),
              block(3, 3, round_=1, round_proposers=(V3,)), consensus(5, 4.9)], 5,
             raised=(("ChainRoundsAboveZero", "chain"),)),
    ]),
    ("no block for three periods stalls the chain", [
        step([block(h, h) for h in range(1, 5)], 6.5),
        step([], 7.1, raised=(("ChainStalled", "chain"),)),
        step([block(5, 7.5)], 7.6, resolved=(("ChainStalled", "chain"),)),
    ]),
    ("slow finality and rounds above zero", [
        step([block(1, 1, proposed_s=0.9), block(2, 5, round_=1, proposed_s=2),
              block(3, 9, round_=2, proposed_s=6)], 9.5,
             raised=(("ChainFinalitySlow", "chain"), ("ChainRoundsAboveZero", "chain"))),
    ]),
    ("a rejected block fires until a later one verifies", [
        step([block(1, 1), BlockRejected(2, "commit does not verify", at(2))], 2.1,
             raised=(("ChainBlockRejected", "chain"),)),
        step([block(3, 2.5)], 2.6, resolved=(("ChainBlockRejected", "chain"),)),
    ]),
    ("a pulse without fresh entropy raises an alert until a random one follows", [
        step([block(1, 1)], 1.1),
        step([block(2, 2, pulse_status=256)], 2.1,
             raised=(("ChainPulseNotRandom", "chain"),)),
        step([block(3, 3, pulse_status=512)], 3.1),
        step([block(4, 4)], 4.1, resolved=(("ChainPulseNotRandom", "chain"),)),
    ]),
    ("the mempool fills and drains; an inclusion seen first cancels its submission", [
        step([TxsIncluded(1, ("t0",), at(0.5)), *(TxSubmitted(f"t{i}", at(1 + i / 10))
                                                  for i in range(4))], 2),
        step([TxSubmitted("t4", at(2.5))], 2.6, raised=(("MempoolBacklog", "chain"),)),
        step([TxsIncluded(2, ("t1", "t2"), at(3))], 3.1, resolved=(("MempoolBacklog", "chain"),)),
    ]),
    ("dead letters fire per topic and reason for one window", [
        step([DeadLettered("dlq.chain", "bad_signature", at(1))], 1.5,
             raised=(("DeadLetters", "dlq.chain/bad_signature"),)),
        step([DeadLettered("dlq.chain", "bad_signature", at(3))], 9.9),
        step([], 10.1, resolved=(("DeadLetters", "dlq.chain/bad_signature"),)),
    ]),
    ("jailed by the ledger, unjailed later; a downtime jail with less stake is a slash", [
        step([ValidatorStatusSeen(V2, 1, at(1), 100, False, False),
              ValidatorStatusSeen(V2, 2, at(2), 99, True, False)], 2.1,
             raised=(("ValidatorJailed", V2), ("ValidatorSlashed", V2))),
        step([ValidatorStatusSeen(V2, 3, at(3), 99, False, False)], 3.1,
             resolved=(("ValidatorJailed", V2),)),
    ]),
    ("duplicate-vote evidence in a block slashes the double signer", [
        step([block(1, 1, double_signers=(V4,))], 1.1, raised=(("ValidatorSlashed", V4),)),
    ]),
]


def run(steps: list[Step], policy: MonitorPolicy = POLICY) -> None:
    state, open_alerts, offset = MonitorState(), OpenAlerts(), 0
    for index, current in enumerate(steps):
        for fact in current.facts:
            state, _ = apply_record(policy, state, Position("t", 0, offset), (fact,))
            offset += 1
        open_alerts, events = reconcile(open_alerts, evaluate(policy, state, current.now_ms),
                                        current.now_ms)
        raised = {(e.rule, e.subject) for e in events if isinstance(e, AlertRaised)}
        resolved = {(e.rule, e.subject) for e in events if isinstance(e, AlertResolved)}
        assert (raised, resolved) == (set(current.raised), set(current.resolved)), \
            f"step {index}"


@pytest.mark.parametrize("steps", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_rule(steps: list[Step]) -> None:
    run(steps)


def test_every_rule_has_a_case_and_documentation() -> None:
    covered = {rule for _, steps in CASES for s in steps for rule, _ in s.raised}
    assert covered == {rule.name for rule in RULES}
    for rule in RULES:
        assert rule.fires and rule.action and rule.severity in ("warning", "critical")
        assert "qustream_monitor_" in rule.expr(MonitorPolicy())


def test_failures_are_counted_across_an_ingest_restart() -> None:
    state = MonitorState()
    for offset, fact in enumerate((beat(0), beat(2, rct=2), beat(4, rct=1), beat(6, rct=4))):
        state, _ = apply_record(POLICY, state, Position("t", 0, offset), (fact,))
    # 2, then the restarted process's 1 (its total fell), then 3 more
    assert state.sources["q0"].rct_failures.total(POLICY.qrng_window, at(7)) == 6


def test_an_alert_is_raised_once_while_it_fires() -> None:
    state, _ = apply_record(POLICY, MonitorState(), Position("t", 0, 0),
                            (QrngAlertSeen("q0", at(0), "HEALTH_FAILURE", "APT"),))
    open_alerts = OpenAlerts()
    events: list[object] = []
    for second in range(1, 30):
        open_alerts, new = reconcile(open_alerts, evaluate(POLICY, state, at(second)), at(second))
        events += [e for e in new if e.rule == "QrngQuarantined"]
    assert [type(e) for e in events] == [AlertRaised]


def test_a_restart_folds_the_alert_log_and_raises_nothing_again() -> None:
    state, _ = apply_record(POLICY, MonitorState(), Position("t", 0, 0),
                            (QrngAlertSeen("q0", at(0), "HEALTH_FAILURE", "APT"),))
    _, told = reconcile(OpenAlerts(), evaluate(POLICY, state, at(1)), at(1))
    restarted = OpenAlerts()
    for event in told:  # what the alerts topic holds
        restarted = fold(restarted, event)
    _, again = reconcile(restarted, evaluate(POLICY, state, at(2)), at(2))
    assert again == ()
    # an alert raised before a crash whose condition ended meanwhile is resolved, once
    healthy, _ = apply_record(POLICY, state, Position("t", 0, 1), (beat(3, "HEALTHY"),))
    _, after = reconcile(restarted, evaluate(POLICY, healthy, at(4)), at(4))
    assert [(type(e), e.rule) for e in after] == [(AlertResolved, "QrngQuarantined")]
    assert after[0].alert_id == told[0].alert_id


def test_an_alert_whose_rule_cannot_judge_stays_open() -> None:
    raised = AlertRaised("id", "QrngRateBelowFloor", "warning", "q0", 0, 1024, at(0), at(0), "")
    open_alerts = fold(OpenAlerts(), raised)
    assert reconcile(open_alerts, (), at(1)) == (open_alerts, ())


def test_a_redelivered_record_is_folded_once() -> None:
    facts: tuple[Fact, ...] = (ChunkSeen("q0", 0, 100, at(0)),)
    once, changed = apply_record(POLICY, MonitorState(), Position("t", 0, 7), facts)
    again, changed_again = apply_record(POLICY, once, Position("t", 0, 7), facts)
    earlier, _ = apply_record(POLICY, once, Position("t", 0, 3), facts)
    assert changed == {"source/q0"} and changed_again == frozenset()
    assert again == once == earlier
    assert once.sources["q0"].published_bytes.total(POLICY.qrng_window, at(1)) == 100


def test_pieces_skip_independently() -> None:
    """A block changes the chain view and the mempool: each keeps its own positions."""
    facts: tuple[Fact, ...] = (block(1, 1, txs=("t1",)), TxsIncluded(1, ("t1",), at(1)))
    state, changed = apply_record(POLICY, MonitorState(), Position("b", 0, 0), facts)
    assert changed == {"network", "mempool"}
    lost_mempool = replace(state, mempool=MonitorState().mempool)  # its write was lost
    again, changed = apply_record(POLICY, lost_mempool, Position("b", 0, 0), facts)
    assert changed == {"mempool"} and again == state


# ---------------------------------------------------------------- windows


def test_window_specs() -> None:
    hopping = WindowSpec.hopping(60 * S, 10 * S)
    assert hopping.current(at(0) + 25 * S) == (at(0) + 30 * S - 60 * S, at(0) + 30 * S)
    tumbling = WindowSpec.tumbling(10 * S)
    assert tumbling.is_tumbling and tumbling.current(at(0) + 25 * S) == (at(20), at(30))
    for size, hop in ((10, 3), (0, 1), (5, 0)):
        with pytest.raises(WindowError):
            WindowSpec(size, hop)


@given(st.lists(st.tuples(st.integers(0, 200_000), st.integers(1, 5)), max_size=60),
       st.integers(0, 250_000),
       st.sampled_from([(60_000, 10_000), (30_000, 30_000), (20_000, 1_000)]))
def test_window_totals_match_a_brute_force_count(
        events: list[tuple[int, int]], now: int, sizes: tuple[int, int]) -> None:
    spec = WindowSpec(*sizes)
    counts = Counts()
    for t, n in events:
        counts = counts.add(spec, t, n)
    newest = max((spec.bucket(t) for t, _ in events), default=0)
    start, end = spec.current(now)
    expected = sum(n for t, n in events
                   if start <= spec.bucket(t) < end and spec.keeps(spec.bucket(t), newest))
    assert counts.total(spec, now) == expected
    # the series keeps no bucket older than its newest minus the window size
    assert all(spec.keeps(b, newest) for b, _ in counts.buckets)


@given(st.lists(st.tuples(st.integers(0, 100_000), st.integers(1, 5)), max_size=40))
def test_window_content_does_not_depend_on_arrival_order(events: list[tuple[int, int]]) -> None:
    spec = WindowSpec(30_000, 5_000)
    forward, backward = Counts(), Counts()
    for t, n in events:
        forward = forward.add(spec, t, n)
    for t, n in reversed(events):
        backward = backward.add(spec, t, n)
    # pruning follows the newest bucket only, so both orders keep the same recent buckets
    newest = max((spec.bucket(t) for t, _ in events), default=0)
    keep = [(b, c) for b, c in forward.buckets if spec.keeps(b, newest)]
    assert keep == [(b, c) for b, c in backward.buckets if spec.keeps(b, newest)]


def test_samples_and_percentiles() -> None:
    spec = WindowSpec.hopping(10 * S, 2 * S)
    samples = Samples()
    for i, value in enumerate((5, 1, 4, 2, 3)):
        samples = samples.add(spec, at(i), value)
    assert sorted(samples.values(spec, at(4))) == [1, 2, 3, 4, 5]
    assert percentile((1, 2, 3, 4, 5), 500) == 3
    assert percentile((1, 2, 3, 4, 5), 950) == 5
    assert percentile(tuple(range(1, 101)), 990) == 99
    assert percentile((), 500) is None
