"""Every state snapshot on ``chain.snapshots`` against the state the audit recomputes.

The audit folds ``chain.blocks`` from genesis (it never starts from a snapshot); at each height
a snapshot claims, the snapshot the audit itself would write there (``protocol.snapshot``) is
compared with it byte for byte. Verdicts:

- equal: counted as verified;
- different, in a way every reader rejects (it does not decode, or its state, validator sets,
  previous block or proposer priorities disagree with the signed chain): a warning, like any
  garbage on a topic anyone with access can write, since no node can start from it;
- different only in what readers check later, against the blocks after it (the evidence
  window, evidence already committed, the sources' last sequences, the previous block's time
  or randomness, the last commit): a failure, because a node could start from it and then
  reject a block the validators signed;
- a snapshot beyond the audited head, or whose chunks are incomplete: a note, not checked.

Pure: fed the decoded snapshots and each applied block by the shell (``services.audit.replay``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol.app import Application
from protocol.chain import ChainState
from protocol.follow import BlockFollower
from protocol.proposer import ProposerPriorities, initial_priorities, next_height
from protocol.snapshot import Snapshot, SnapshotError, StateCodec, restore, take_snapshot
from services.audit.core.findings import Finding, Severity
from services.ledger.core.state import LedgerState

TOPIC = "chain.snapshots"


@dataclass(slots=True)
class SnapshotAuditor:
    app: Application[LedgerState]
    codec: StateCodec[LedgerState]
    pending: dict[int, list[Snapshot]]  # by height, every complete snapshot found there
    priorities: ProposerPriorities
    governing: object  # the validator set of the next height to apply
    findings: list[Finding] = field(default_factory=list)
    verified: int = 0

    @classmethod
    def start(cls, initial: ChainState[LedgerState], app: Application[LedgerState],
              codec: StateCodec[LedgerState], snapshots: list[Snapshot]) -> SnapshotAuditor:
        pending: dict[int, list[Snapshot]] = {}
        for snapshot in snapshots:
            pending.setdefault(snapshot.height, []).append(snapshot)
        return cls(app, codec, pending, initial_priorities(initial.validators),
                   initial.validators)

    def applied(self, height: int, chain: ChainState[LedgerState]) -> None:
        """Block ``height`` was applied (``chain`` is the state after it)."""
        self.priorities = next_height(self.priorities, self.governing,  # type: ignore[arg-type]
                                      chain.validators)
        self.governing = chain.validators
        claimed = self.pending.pop(height, None)
        if not claimed:
            return
        truth = take_snapshot(BlockFollower(self.app, chain, self.priorities), self.codec)
        for snapshot in claimed:
            if snapshot.data == truth.data:
                self.verified += 1
            else:
                self.findings.append(self._judge(snapshot, truth))

    def _judge(self, snapshot: Snapshot, truth: Snapshot) -> Finding:
        def finding(severity: Severity, reason: str) -> Finding:
            return Finding("snapshot", f"snapshot after height {snapshot.height} "
                                       f"(hash {snapshot.hash.hex()[:16]}): {reason}",
                           TOPIC, height=snapshot.height, severity=severity)

        try:
            claimed = restore(snapshot, self.app, self.codec)
        except SnapshotError as exc:
            return finding(Severity.WARNING, f"every reader rejects it: {exc.reason}")
        right = restore(truth, self.app, self.codec)
        mine, theirs = right.chain, claimed.chain
        for what, ok in (
                ("state hash", theirs.tip.app_hash == mine.tip.app_hash),
                ("previous block hash", theirs.tip.previous_block_hash
                 == mine.tip.previous_block_hash),
                ("validator sets", (theirs.tip.validators_hash, theirs.tip.next_validators_hash)
                 == (mine.tip.validators_hash, mine.tip.next_validators_hash)),
                ("history accumulator", theirs.tip.accumulator == mine.tip.accumulator),
                ("proposer priorities", claimed.priorities == right.priorities)):
            if not ok:
                return finding(Severity.WARNING, f"every reader rejects it: its {what} differs "
                                                 "from the chain's")
        differing = [what for what, ok in (
            ("previous block time and randomness",
             (theirs.tip.previous_time_ms, theirs.tip.previous_randomness)
             == (mine.tip.previous_time_ms, mine.tip.previous_randomness)),
            ("sources' last sequences", theirs.tip.last_seq == mine.tip.last_seq),
            ("last commit", theirs.last_commit == mine.last_commit),
            ("evidence window", theirs.history == mine.history
             and theirs.evidence_max_age == mine.evidence_max_age),
            ("committed evidence", theirs.committed_evidence == mine.committed_evidence),
        ) if not ok] or ["its encoding"]
        return finding(Severity.FAILURE, "its state verifies against the signed chain, but its "
                                         f"{', '.join(differing)} differ from the recomputed "
                                         "chain's: a node starting from it could reject signed "
                                         "blocks")

    def finish(self, applied_height: int, incomplete: int) -> list[str]:
        """Notes on what could not be checked."""
        notes = []
        beyond = sorted(self.pending)
        if beyond:
            notes.append(f"{sum(len(v) for v in self.pending.values())} snapshots beyond the "
                         f"audited head {applied_height} were not checked (heights "
                         f"{', '.join(map(str, beyond[:10]))})")
        if incomplete:
            notes.append(f"{incomplete} snapshots on {TOPIC} are incomplete (chunks missing or "
                         "their hash does not match) and were not checked")
        return notes
