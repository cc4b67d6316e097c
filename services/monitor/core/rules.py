"""The alert rules: what each one watches, when it fires, and what an operator should do.

``RULES`` is the catalogue (docs/operations.md, the Helm chart's PrometheusRules and the tests
read it); ``evaluate(policy, state, now_ms)`` judges every rule for every subject the state knows
and returns ``Observation``s for ``alerts.reconcile``. Time enters as ``now_ms`` only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from protocol.pulse import PulseStatus, describe
from services.monitor.core import network as net
from services.monitor.core import sources as src
from services.monitor.core.alerts import Observation
from services.monitor.core.policy import MonitorPolicy
from services.monitor.core.state import MonitorState
from services.monitor.core.windows import percentile


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    severity: str
    subject: str  # what the alert is about: source, validator, chain, dlq
    summary: str
    fires: str  # when it fires and resolves (docs)
    action: str  # what to do (docs)
    expr: Callable[[MonitorPolicy], str]  # the same rule in PromQL over the monitor's metrics


def _s(milliseconds: int) -> str:
    return f"{milliseconds / 1000:g}"


RULES: tuple[Rule, ...] = (
    Rule("QrngHealthTestFailures", "critical", "source",
         "QRNG health tests fail",
         "SP 800-90B health-test windows (RCT or APT) failed on the source within the QRNG "
         "window (from the growth of the failure counters in its heartbeats); resolves when a "
         "whole window passes without a failure.",
         "Look at the source's health state and its last alert (`qustream qrng status`). A few "
         "failures at alpha 2^-40 mean the device is broken: check the hardware, its cabling "
         "and temperature; the source publishes nothing while quarantined, so the chain mixes "
         "the other sources.",
         lambda p: f"sum by (source) (qustream_monitor_qrng_health_failures) >= "
                   f"{p.qrng_health_failures}"),
    Rule("QrngQuarantined", "critical", "source",
         "QRNG source quarantined",
         "The source reported itself QUARANTINED (a health failure): its entropy is withheld. "
         "Resolves when its heartbeat reports HEALTHY again (after the configured run of "
         "passing windows).",
         "Same as QrngHealthTestFailures. If it does not recover within minutes, restart the "
         "ingest server; if it fails again, take the device out of service.",
         lambda p: "qustream_monitor_qrng_quarantined == 1"),
    Rule("QrngRateBelowFloor", "warning", "source",
         "QRNG rate below the floor",
         "Bytes published by the source per second over the QRNG window are below the floor "
         "(judged once the window has seen at least half its span of the source).",
         "Check the device's throughput and the ingest server's CPU; a quarantined or stalled "
         "source shows this too.",
         lambda p: f"qustream_monitor_qrng_bytes_per_second < {p.qrng_rate_floor_bytes_per_s}"),
    Rule("QrngStalled", "critical", "source",
         "QRNG source publishes no entropy",
         "No chunk from the source for the stall time (by the chunks' own timestamps).",
         "Is the ingest server running (`qustream qrng status`, heartbeats)? Does the device "
         "deliver bytes? Restart the server; blocks keep being built from the other sources.",
         lambda p: f"qustream_monitor_qrng_seconds_since_chunk >= {_s(p.qrng_stall_ms)}"),
    Rule("QrngHeartbeatMissing", "critical", "source",
         "QRNG server silent",
         "No heartbeat from the source's ingest server for the heartbeat timeout: the process "
         "is down or cannot reach Kafka.",
         "Check the process (pod) and its logs, its Kafka credentials and connectivity.",
         lambda p: f"qustream_monitor_qrng_seconds_since_heartbeat >= "
                   f"{_s(p.qrng_heartbeat_timeout_ms)}"),
    Rule("QrngChunkGaps", "critical", "source",
         "QRNG chunk sequence broken",
         "A chunk of the public pool did not follow its predecessor (a gap, a repeat or a step "
         "back in the sequence) within the QRNG window.",
         "Two servers may be running with one source id, or a server restarted from lost "
         "state. Stop all but one; block builders reject the conflicting chunks meanwhile "
         "(see dlq.entropy).",
         lambda p: f"qustream_monitor_qrng_chunk_gaps >= {p.qrng_chunk_gaps}"),
    Rule("QrngCheckpointStale", "warning", "source",
         "No verified QRNG checkpoint",
         "No checkpoint with a valid signature from the source for the stale time; chunks are "
         "unusable until a verified checkpoint covers them.",
         "Check the server's signing key (it must match the registered one) and its checkpoint "
         "settings; bad signatures also show as dead letters on dlq.entropy.",
         lambda p: f"qustream_monitor_qrng_seconds_since_verified_checkpoint >= "
                   f"{_s(p.qrng_checkpoint_stale_ms)}"),
    Rule("ValidatorMissedPrecommits", "warning", "validator",
         "Validator misses precommits",
         "Heights in the validator window for which the validator's precommit is in neither "
         "certificate nor on chain.consensus (judged a few blocks after each height).",
         "Check the validator process, its clock and its Kafka connectivity; sustained misses "
         "lead to a downtime slash and jail.",
         lambda p: f"qustream_monitor_validator_missed_precommits >= {p.missed_precommits}"),
    Rule("ValidatorProposalTimeouts", "warning", "validator",
         "Validator's proposals time out",
         "Rounds before the deciding one in which it was the validator's turn to propose and "
         "no proposal was logged (needs the genesis, to know whose turn it was).",
         "The validator's block builder is down or slow (entropy pool, mempool); check its "
         "logs. Every timeout costs the chain a propose timeout.",
         lambda p: f"qustream_monitor_validator_proposal_timeouts >= {p.proposal_timeouts}"),
    Rule("ValidatorJailed", "critical", "validator",
         "Validator jailed",
         "The ledger marks the validator jailed (downtime or double signing); it has left the "
         "active set. Resolves on unjail.",
         "Fix the cause (uptime, or a duplicated key), then send `qustream tx unjail` after the "
         "jail period. A tombstoned validator can never return.",
         lambda p: "qustream_monitor_validator_jailed == 1"),
    Rule("ValidatorSlashed", "critical", "validator",
         "Validator slashed",
         "Within the slash window a block carried duplicate-vote evidence against the "
         "validator, or the ledger jailed it with a stake reduction (downtime).",
         "For double signing: a key runs in two places; stop the duplicate now. For downtime: "
         "restore the node. Tell the delegators.",
         lambda p: "qustream_monitor_validator_slashes >= 1"),
    Rule("ChainStalled", "critical", "chain",
         "No block finalized",
         "No block for stall-periods times the expected block period (configured, or learned "
         "from recent block intervals).",
         "Check that more than two thirds of the voting power is up, the tally runs, and "
         "Kafka is healthy; look at ValidatorMissedPrecommits and the tally's logs. Each "
         "validator logs 'height H undecided for N s' with its round, step and the votes it "
         "counted; one that logs nothing is hung: kill -USR1 <pid> writes its stacks to its "
         "log.",
         lambda p: f"qustream_monitor_chain_seconds_since_block >= {p.stall_periods} * "
                   "qustream_monitor_chain_expected_block_seconds"),
    Rule("ChainFinalitySlow", "warning", "chain",
         "Finality is slow",
         "The 95th percentile of proposal-to-finality time over the chain window is above the "
         "limit.",
         "Look for slow validators (rounds > 0, missed precommits), an overloaded broker or "
         "large blocks.",
         lambda p: f"qustream_monitor_chain_finality_seconds{{quantile=\"0.95\"}} >= "
                   f"{_s(p.finality_p95_ms)}"),
    Rule("ChainRoundsAboveZero", "warning", "chain",
         "Blocks need extra rounds",
         "Blocks decided in a round above 0 within the chain window reach the limit: proposals "
         "or votes time out.",
         "See ValidatorProposalTimeouts for whose turns time out; check proposer nodes.",
         lambda p: f"qustream_monitor_chain_rounds_above_zero >= {p.rounds_above_zero}"),
    Rule("ChainBlockRejected", "critical", "chain",
         "Finalized block does not verify",
         "A BlockFinalized on chain.blocks failed verification against the followed chain "
         "(fork, gap, certificate or state hash); resolves when a later block verifies.",
         "A safety alarm: stop and audit (`qustream audit`); compare tally and validator logs.",
         lambda p: "qustream_monitor_chain_block_rejected == 1"),
    Rule("ChainPulseNotRandom", "critical", "chain",
         "Latest pulse is not random",
         "The latest finalized block carries no fresh entropy, or fresh entropy from fewer "
         "sources than the two-source rule asks (its pulse status, see protocol/pulse.py): its "
         "randomness was computable from the previous pulse. Resolves with the next random "
         "pulse. The beacon API keeps serving the last random pulse meanwhile.",
         "Check the QRNG sources (`qustream qrng status`, QrngStalled, QrngQuarantined) and "
         "dlq.entropy for `unjoinable_chain` (a source that restarted its chain: give it its "
         "state back or register it anew), `unhealthy_chunk` (a source signed a chunk its own "
         "health tests failed: take the device out of service and register it anew) and "
         "`losing_branch` (forged chunks on entropy.raw).",
         lambda p: "qustream_monitor_chain_pulse_not_random == 1"),
    Rule("MempoolBacklog", "warning", "chain",
         "Mempool backlog",
         "Transactions submitted on ledger.tx and not yet in a finalized block reach the limit "
         "(entries expire after the mempool TTL).",
         "Blocks are full or proposers drop transactions: check block sizes, fees and the "
         "builders' logs.",
         lambda p: f"qustream_monitor_mempool_depth >= {p.mempool_depth}"),
    Rule("DeadLetters", "warning", "dlq",
         "Messages dead-lettered",
         "Messages rejected onto a dlq.* topic with one reason within the dead-letter window.",
         "Read them (their reason and original bytes are on the DLQ topic): bad signatures or "
         "unknown sources mean a misconfigured or hostile producer.",
         lambda p: f"qustream_monitor_dlq_messages >= {p.dlq_messages}"),
)

BY_NAME: dict[str, Rule] = {rule.name: rule for rule in RULES}


def _observe(rule: str, subject: str, firing: bool, value: float, threshold: float,
             since_ms: int, summary: str, labels: tuple[tuple[str, str], ...]) -> Observation:
    return Observation(rule, BY_NAME[rule].severity, subject, firing, value, threshold,
                       since_ms, summary, labels)


def _window_since(buckets: tuple[tuple[int, int], ...], start: int, fallback: int) -> int:
    return next((bucket for bucket, count in buckets if bucket >= start and count), fallback)


def _source(policy: MonitorPolicy, state: src.SourceState, now_ms: int
            ) -> Iterator[Observation]:
    sid = state.source_id
    labels = (("source", sid),)
    window = policy.qrng_window
    start, _ = window.current(now_ms)
    rct = state.rct_failures.total(window, now_ms)
    apt = state.apt_failures.total(window, now_ms)
    since = min(_window_since(state.rct_failures.buckets, start, now_ms),
                _window_since(state.apt_failures.buckets, start, now_ms))
    yield _observe("QrngHealthTestFailures", sid, rct + apt >= policy.qrng_health_failures,
                   rct + apt, policy.qrng_health_failures, since,
                   f"{sid}: {rct} RCT and {apt} APT windows failed in the last "
                   f"{window.size_ms // 1000} s", labels)
    quarantined = state.health_state == src.QUARANTINED
    yield _observe("QrngQuarantined", sid, quarantined, 1.0 if quarantined else 0.0, 1,
                   state.health_since_ms or now_ms,
                   f"{sid} is {state.health_state}", labels)
    rate = src.bytes_per_s(policy, state, now_ms)
    if rate is not None:
        floor = policy.qrng_rate_floor_bytes_per_s
        yield _observe("QrngRateBelowFloor", sid, rate < floor, rate, floor, start,
                       f"{sid} published {rate:.0f} B/s (floor {floor} B/s)", labels)
    last_chunk = state.last_chunk_ms if state.last_chunk_ms is not None else state.first_seen_ms
    if last_chunk is not None:
        silent = now_ms - last_chunk
        yield _observe("QrngStalled", sid, silent >= policy.qrng_stall_ms, silent / 1000,
                       policy.qrng_stall_ms / 1000, last_chunk + policy.qrng_stall_ms,
                       f"{sid}: no chunk for {silent / 1000:.0f} s", labels)
    if state.last_heartbeat_ms is not None:
        silent = now_ms - state.last_heartbeat_ms
        limit = policy.qrng_heartbeat_timeout_ms
        yield _observe("QrngHeartbeatMissing", sid, silent >= limit, silent / 1000, limit / 1000,
                       state.last_heartbeat_ms + limit,
                       f"{sid}: no heartbeat for {silent / 1000:.0f} s", labels)
    gaps = state.irregular_seqs.total(window, now_ms)
    yield _observe("QrngChunkGaps", sid, gaps >= policy.qrng_chunk_gaps, gaps,
                   policy.qrng_chunk_gaps,
                   _window_since(state.irregular_seqs.buckets, start, now_ms),
                   f"{sid}: {gaps} sequence irregularities in the last "
                   f"{window.size_ms // 1000} s", labels)
    checkpoint = (state.last_checkpoint_ms if state.last_checkpoint_ms is not None
                  else state.first_chunk_ms)
    if checkpoint is not None:
        age = now_ms - checkpoint
        limit = policy.qrng_checkpoint_stale_ms
        yield _observe("QrngCheckpointStale", sid, age >= limit, age / 1000, limit / 1000,
                       checkpoint + limit,
                       f"{sid}: no verified checkpoint for {age / 1000:.0f} s", labels)


def _validators(policy: MonitorPolicy, state: net.NetworkState, now_ms: int
                ) -> Iterator[Observation]:
    window = policy.validator_window
    start, _ = window.current(now_ms)
    for address, record in sorted(state.validators.items()):
        labels = (("validator", address),)
        short = address[:12]
        missed = record.missed.total(window, now_ms) if record.in_set else 0
        yield _observe("ValidatorMissedPrecommits", address, missed >= policy.missed_precommits,
                       missed, policy.missed_precommits,
                       _window_since(record.missed.buckets, start, now_ms),
                       f"validator {short} missed {missed} precommits in the last "
                       f"{window.size_ms // 1000} s (last signed height "
                       f"{record.last_signed_height})", labels)
        timeouts = record.proposal_timeouts.total(window, now_ms)
        yield _observe("ValidatorProposalTimeouts", address,
                       timeouts >= policy.proposal_timeouts, timeouts, policy.proposal_timeouts,
                       _window_since(record.proposal_timeouts.buckets, start, now_ms),
                       f"validator {short}: {timeouts} proposals timed out in the last "
                       f"{window.size_ms // 1000} s", labels)
        yield _observe("ValidatorJailed", address, record.jailed, 1.0 if record.jailed else 0.0,
                       1, record.jailed_since_ms or now_ms,
                       f"validator {short} is {'tombstoned' if record.tombstoned else 'jailed'}"
                       if record.jailed else f"validator {short} is not jailed", labels)
        slash_start, _ = policy.slash_window.current(now_ms)
        slashes = record.slashes.total(policy.slash_window, now_ms)
        yield _observe("ValidatorSlashed", address, slashes >= 1, slashes, 1,
                       _window_since(record.slashes.buckets, slash_start, now_ms),
                       f"validator {short} was slashed {slashes} times in the last "
                       f"{policy.slash_window.size_ms // 60_000} min", labels)


def _chain(policy: MonitorPolicy, state: MonitorState, now_ms: int) -> Iterator[Observation]:
    chain = state.network
    window = policy.chain_window
    start, _ = window.current(now_ms)
    if chain.last_block_ms is not None:
        period = net.block_period_ms(policy, chain)
        silent = now_ms - chain.last_block_ms
        limit = policy.stall_periods * period
        yield _observe("ChainStalled", "chain", silent >= limit, silent / 1000, limit / 1000,
                       chain.last_block_ms + limit,
                       f"no block for {silent / 1000:.1f} s after height {chain.height} "
                       f"(expected every {period / 1000:.1f} s)", ())
    p95 = percentile(chain.finality_ms.values(window, now_ms), 950)
    if p95 is not None:
        yield _observe("ChainFinalitySlow", "chain", p95 >= policy.finality_p95_ms, p95 / 1000,
                       policy.finality_p95_ms / 1000, start,
                       f"finality p95 {p95} ms over the last {window.size_ms // 1000} s", ())
    late = chain.late_rounds.total(window, now_ms)
    yield _observe("ChainRoundsAboveZero", "chain", late >= policy.rounds_above_zero, late,
                   policy.rounds_above_zero, _window_since(chain.late_rounds.buckets, start,
                                                           now_ms),
                   f"{late} blocks decided after round 0 in the last "
                   f"{window.size_ms // 1000} s", ())
    rejected = chain.rejected
    yield _observe("ChainBlockRejected", "chain", rejected is not None,
                   1.0 if rejected else 0.0, 1, rejected.at_ms if rejected else now_ms,
                   f"block {rejected.height} rejected: {rejected.reason}" if rejected
                   else "every block verifies", ())
    flat = chain.not_random
    yield _observe("ChainPulseNotRandom", "chain", flat is not None, 0.0 if flat is None else 1.0,
                   1, chain.not_random_since_ms or now_ms,
                   f"block {flat.height} has status {flat.pulse_status}: "
                   f"{describe(PulseStatus(flat.pulse_status))}" if flat is not None
                   else "the latest pulse is random", ())
    depth = state.mempool.depth
    yield _observe("MempoolBacklog", "chain", depth >= policy.mempool_depth, depth,
                   policy.mempool_depth, now_ms, f"{depth} transactions pending", ())


def _dead_letters(policy: MonitorPolicy, state: MonitorState, now_ms: int
                  ) -> Iterator[Observation]:
    window = policy.dlq_window
    start, _ = window.current(now_ms)
    for subject, counts in sorted(state.dead_letters.counts.items()):
        dlq, _, reason = subject.partition("/")
        total = counts.total(window, now_ms)
        yield _observe("DeadLetters", subject, total >= policy.dlq_messages, total,
                       policy.dlq_messages, _window_since(counts.buckets, start, now_ms),
                       f"{total} messages dead-lettered on {dlq} ({reason}) in the last "
                       f"{window.size_ms // 1000} s", (("dlq", dlq), ("reason", reason)))


def evaluate(policy: MonitorPolicy, state: MonitorState, now_ms: int) -> tuple[Observation, ...]:
    """Every rule judged for every subject the state knows, at ``now_ms``."""
    observations: list[Observation] = []
    for source_id in sorted(state.sources):
        observations.extend(_source(policy, state.sources[source_id], now_ms))
    observations.extend(_validators(policy, state.network, now_ms))
    observations.extend(_chain(policy, state, now_ms))
    observations.extend(_dead_letters(policy, state, now_ms))
    return tuple(observations)
