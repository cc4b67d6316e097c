"""Auditing ``chain.blocks``: every block re-verified and re-executed from genesis.

``ChainAuditor`` folds ``BlockInput`` values (decoded by the shell, in offset order) into the
chain state, trusting nothing on the topic. For the block of the next height it checks, each
failure a ``Finding`` with its own check name (so a report says *what* is wrong, not only that
the certificate no longer matches):

1. ``record``: the Avro fields beside the canonical bytes (height, hash, randomness, round,
   chain id) agree with the block and certificate;
2. ``hash_link`` (chain id, height, previous block hash), ``history_root`` (the header's
   root over every earlier block hash, ``protocol.mmr``), ``state_hash`` (the header's app
   hash is the re-executed state after the previous block), ``validator_set`` (validator-set
   hashes recomputed from the ledger), ``time`` (strictly increasing);
3. ``entropy_root`` / ``block_body``: the body matches the header's roots and ordering rules;
4. ``randomness``: re-derived from the previous randomness and the block's entropy references;
5. ``proposer``: a member of the height's set;
6. ``transactions``: no transaction (by hash) already in an earlier block or twice in this one;
7. ``evidence``: every item proves a double vote of the offence height's set, inside the window;
8. ``last_commit``: the previous height's commit in the body verifies against that height's set;
9. ``commit``: no record from a non-validator, every signature valid, signed power > 2/3 of
   the set recomputed from the ledger;
10. re-execution: the record's state hash equals the re-executed one (``state_hash``), every
    transaction passed the ante checks — signature, nonce, fee (``transactions``), and every
    validator named by evidence ends the block tombstoned and jailed (``slashing``).

After the first block that fails, the auditor stops applying blocks (the state after it is
unknowable) and counts the rest as unverified. Records of heights already applied with the same
hash are harmless duplicates; a different block whose certificate verifies against the
validator set of that height is a fork (``fork``); one whose certificate does not verify is
input nobody signed, a warning (``unverified_conflict``), never a divergence; a height beyond
the next is a gap (``gap``). The entropy references of every applied block are kept for the entropy
audit, and the validator set of every height for the equivocation scan.

Blocks below ``verify_from`` are re-executed and their state hashes compared, but their
signatures are not checked (``--from-height``); blocks after ``to_height`` or with a header
time after ``until_time_ms`` are not read (``--to-height`` / ``--at-time``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol.app import Application
from protocol.block import Block, EntropyRef
from protocol.chain import ChainError, ChainState, apply_block
from protocol.check import check_commit, check_header, check_signatures
from protocol.commit import CommitCertificate, CommitFlag
from protocol.keys import SignatureCheck, default_signature_check
from protocol.validators import ValidatorSet
from services.audit.core.findings import Finding, Severity
from services.ledger.core import LedgerState, tx_hash
from services.ledger.core.errors import LedgerError

TOPIC = "chain.blocks"


@dataclass(frozen=True, slots=True)
class BlockInput:
    """One ``BlockFinalized`` record as read: the decoded block and certificate, the record's
    own fields, or the decoding error (then ``block``/``commit`` are None)."""

    offset: int
    block: Block | None
    commit: CommitCertificate | None
    state_hash: bytes = b""
    fields: Mapping[str, Any] = field(default_factory=dict)
    timestamp_ms: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class AppliedBlock:
    """A block that passed every check, and the chain state right after it."""

    height: int
    offset: int
    block: Block
    chain: ChainState[LedgerState]


@dataclass(slots=True)
class ChainAuditor:
    """Mutable fold over ``chain.blocks`` (the shell feeds it; see module doc)."""

    chain: ChainState[LedgerState]
    app: Application[LedgerState]
    check: SignatureCheck = default_signature_check
    verify_from: int = 1
    to_height: int | None = None
    until_time_ms: int | None = None
    findings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    entropy_refs: list[tuple[int, int, EntropyRef]] = field(default_factory=list)
    validator_sets: dict[int, ValidatorSet] = field(default_factory=dict)
    evidence_included: dict[tuple[int, bytes], int] = field(default_factory=dict)
    halted_at: int | None = None  # height of the first block that failed
    unverified: int = 0  # records read after the halt
    _hashes: dict[int, bytes] = field(default_factory=dict)
    _tx_heights: dict[bytes, int] = field(default_factory=dict)
    _verified_commit: CommitCertificate | None = None

    @property
    def next_height(self) -> int:
        return self.chain.tip.height

    @property
    def applied_height(self) -> int:
        return self.chain.tip.height - 1

    def done(self) -> bool:
        """True once nothing further can be applied (halted or past ``to_height``)."""
        return self.halted_at is not None or (
            self.to_height is not None and self.applied_height >= self.to_height)

    def included_txs(self) -> tuple[bytes, ...]:
        """Hashes of every transaction of the applied blocks."""
        return tuple(self._tx_heights)

    def _count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def _fail(self, check: str, reason: str, offset: int | None, height: int | None) -> None:
        self.findings.append(Finding(check, reason, TOPIC, offset, 0, height))

    def feed(self, item: BlockInput) -> AppliedBlock | None:
        """Check and apply one record; returns the applied block, or None (duplicate, failure,
        beyond the range, after a halt)."""
        self._count("records")
        if self.done():
            self.unverified += 1
            return None
        if item.error is not None or item.block is None or item.commit is None:
            self._fail("record", f"undecodable BlockFinalized: {item.error}", item.offset,
                       self.next_height)
            self.halted_at = self.next_height
            return None
        block = item.block
        height = block.height
        if height < self.next_height:
            known = self._hashes.get(height)
            if known is not None and known != block.hash:
                self._conflict(item, block, known)
            else:
                self._count("duplicates")
            return None
        if height > self.next_height:
            self._fail("gap", f"block of height {height} while expecting {self.next_height}",
                       item.offset, self.next_height)
            self.halted_at = self.next_height
            return None
        if self.until_time_ms is not None and block.header.time_ms > self.until_time_ms:
            self.to_height = self.applied_height
            self.unverified += 1
            return None
        before = len(self.findings)
        self._verify(item, block, full=height >= self.verify_from)
        if len(self.findings) > before:
            self.halted_at = height
            return None
        return self._apply(item, block)

    def _conflict(self, item: BlockInput, block: Block, known: bytes) -> None:
        """A second block at an applied height: a fork only if its certificate verifies."""
        height = block.height
        what = (f"block {block.hash.hex()[:16]} differs from the finalized {known.hex()[:16]} "
                f"at height {height}")
        validators = self.validator_sets.get(height)
        assert item.commit is not None
        finding = None if validators is None else check_commit(
            self.chain.chain_id, validators, block, item.commit, self.check)
        if validators is not None and finding is None:
            self._fail("fork", f"{what}, signed by more than 2/3 of its validators", item.offset,
                       height)
            return
        self._count("unverified_conflicts")
        why = "its validator set is unknown" if finding is None else finding.reason
        self.findings.append(Finding("unverified_conflict", f"{what}, but its certificate does "
                                     f"not verify ({why}): ignored", TOPIC, item.offset, 0,
                                     height, Severity.WARNING))

    # -- checks 1-9 ---------------------------------------------------------------------------

    def _verify(self, item: BlockInput, block: Block, *, full: bool) -> None:
        chain, header, height, offset = self.chain, block.header, block.height, item.offset
        commit = item.commit
        assert commit is not None
        expected = {
            "height": block.height, "block_hash": block.hash,
            "randomness": header.randomness, "round": commit.round,
            "chain_id": header.chain_id,
        }
        for name, want in expected.items():
            if name in item.fields and item.fields[name] != want:
                self._fail("record", f"the record's {name} field does not match its block",
                           offset, height)
        self._count("randomness_derivations")
        for finding in check_header(chain.tip, chain.validators, block):
            self._fail(finding.check, finding.reason, offset, height)
        seen_here: set[bytes] = set()
        for position, tx in enumerate(block.body.txs):
            digest = tx_hash(tx)
            earlier = self._tx_heights.get(digest)
            if earlier is not None or digest in seen_here:
                where = f"height {earlier}" if earlier is not None else "this block"
                self._fail("transactions", f"transaction {position} ({digest.hex()[:16]}) was "
                           f"already applied at {where}: applied twice", offset, height)
            seen_here.add(digest)
        if not full:
            return
        self._count("evidence", len(block.body.evidence))
        last_commit = block.body.last_commit
        if last_commit is not None and last_commit != self._verified_commit:
            self._count("signature_checks", len(last_commit.signatures))
        self._count("certificates")
        self._count("signature_checks", sum(
            1 for s in commit.signatures if s.flag is not CommitFlag.ABSENT))
        findings = check_signatures(chain, block, commit, check=self.check,
                                    verified_last_commit=self._verified_commit)
        for finding in findings:
            self._fail(finding.check, finding.reason, offset, height)
        if not any(finding.check == "commit" for finding in findings):
            self._verified_commit = commit

    # -- check 10 -----------------------------------------------------------------------------

    def _apply(self, item: BlockInput, block: Block) -> AppliedBlock | None:
        height, offset = block.height, item.offset
        assert item.commit is not None
        validators = self.chain.validators
        try:
            chain, response = apply_block(self.chain, self.app, block, item.commit)
        except (ChainError, LedgerError) as exc:
            self._fail("execution", f"re-execution failed: {exc}", offset, height)
            self.halted_at = height
            return None
        failed = False
        if response.app_hash != item.state_hash:
            self._fail("state_hash", f"re-executed state hash {response.app_hash.hex()[:16]} "
                       f"differs from the record's {item.state_hash.hex()[:16]}", offset, height)
            failed = True
        for position, result in enumerate(response.tx_results):
            self._count("transactions")
            if result.code != 0 and result.fee_charged == 0:
                self._fail("transactions", f"transaction {position} fails the ante checks "
                           f"(signature, nonce, fee): {result.log}", offset, height)
                failed = True
        for evidence in block.body.evidence:
            record = chain.app_state.validators.get(evidence.validator_address)
            self._count("slashings_checked")
            if record is not None and not (record.tombstoned and record.jailed):
                self._fail("slashing", f"validator {evidence.validator_address.hex()} is not "
                           "tombstoned and jailed after its double-sign evidence", offset,
                           height)
                failed = True
        if failed:
            self.halted_at = height
            return None
        self.chain = chain
        self.validator_sets[height] = validators
        self._hashes[height] = block.hash
        for position in range(len(block.body.txs)):
            self._tx_heights[tx_hash(block.body.txs[position])] = height
        for evidence in block.body.evidence:
            self.evidence_included[(evidence.height, evidence.validator_address)] = height
        for ref in block.body.entropy:
            self.entropy_refs.append((height, offset, ref))
        self._count("blocks")
        return AppliedBlock(height, offset, block, chain)
