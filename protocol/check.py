"""One block check for every reader: validators, the tally, the SDK, the gateway and the audit.

``check_block(chain, block, commit)`` says everything that is wrong with ``block`` as the next
block of ``chain`` (the state the previous block left: its tip, the validator set governing the
block's height, the recent history evidence refers to), decided by ``commit``. It returns
findings instead of raising, so the audit can report every failed check of a block while a
follower stops at the first. The checks, in the order findings are listed (each names its check):

1. ``hash_link``: chain id, height and previous block hash link to ``tip``;
   ``history_root``: the header's root over all earlier block hashes is the tip's (skipped
   for a tip without the accumulator, a light client's after a skip: ``ChainTip.accumulator``);
2. ``state_hash``: the header's app hash is the state after the previous block;
3. ``validator_set``: the header names the sets ``tip`` expects for this height and the next;
   ``entropy_sources``: and the number of QRNG sources registered in the state it builds on;
4. ``time``: strictly later than the previous block;
5. ``entropy_root`` / ``block_body``: the body matches the header's roots and ordering rules;
   ``entropy_health``: every entropy reference's SP 800-90B summary passes (no failing window,
   maximum run and APT count below their cutoffs, ``samples = windows * apt_window > 0``), so
   the chain alone shows only passing entropy was used (``protocol.block.unhealthy_entropy``);
   ``precommitment``: each entropy reference is flagged committed exactly when its digest is
   its source's commitment on the tip, and ``fresh_sources`` counts the devices whose
   committed chunk follows one of the previous block (``docs/precommitment.md``; skipped for a
   tip that does not hold the commitments, a light client's after a skip);
6. ``randomness``: re-derived from the previous randomness and the block's committed entropy;
7. ``proposer``: a member of the set (or the expected proposer, when the caller knows it);
8. ``evidence``: each item proves a double vote of the offence height's set, inside the window;
9. ``last_commit``: the previous height's commit in the body verifies against that height's set;
10. ``commit``: every record is from a member, every present signature verifies, and the power
    of the commits is more than 2/3 of ``validators`` (checked last, so a report names what was
    changed in a block before the consequence that its certificate no longer matches).

``check_header`` runs checks 1-7 alone (no signature, no history): block proposals use it, and a
light client, which holds no application state, states what it cannot know by building its
``tip`` with the header's own app hash and next-validators hash and checks those by other means
(see ``sdk.subscriber``). ``check_signatures`` runs 8-10; check 10 only when a certificate is
given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.block import Block, precommitment_problems
from protocol.chain import ChainState, ChainTip, check_evidence, check_last_commit
from protocol.commit import CommitCertificate, CommitFlag, record_sign_bytes, verify_commit
from protocol.keys import PublicKey, SignatureCheck, default_signature_check
from protocol.randomness import block_randomness
from protocol.validators import ValidatorSet


@dataclass(frozen=True, slots=True)
class BlockFinding:
    """One failed check: ``check`` is its stable name (module doc), ``reason`` says what."""

    check: str
    reason: str


def _short(value: object) -> str:
    return value.hex()[:16] if isinstance(value, bytes) else repr(value)


def check_header(
    tip: ChainTip, validators: ValidatorSet | None, block: Block, *,
    expected_proposer: bytes | None = None,
) -> list[BlockFinding]:
    """Checks 1-7 (module doc): everything that needs no signature verification. With neither
    ``validators`` nor ``expected_proposer`` the caller checks the proposer itself."""
    header = block.header
    found: list[BlockFinding] = []
    links = (
        ("hash_link", "chain id", header.chain_id, tip.chain_id),
        ("hash_link", "height", header.height, tip.height),
        ("hash_link", "previous block hash", header.previous_block_hash,
         tip.previous_block_hash),
        ("state_hash", "app hash (state after the previous block)", header.app_hash,
         tip.app_hash),
        ("validator_set", "validators hash", header.validators_hash, tip.validators_hash),
        ("validator_set", "next validators hash", header.next_validators_hash,
         tip.next_validators_hash),
        ("entropy_sources", "registered source count", header.registered_sources,
         tip.registered_sources),
    )
    history_root = tip.history_root
    if history_root is not None and header.history_root != history_root:
        found.append(BlockFinding("history_root", f"header history root "
                                                  f"{_short(header.history_root)} is not the "
                                                  f"root over blocks 1..{tip.height - 1}, "
                                                  f"{_short(history_root)}"))
    for check, name, got, want in links:
        if got != want:
            found.append(BlockFinding(check, f"header {name} {_short(got)} is not the expected "
                                             f"{_short(want)}"))
    if header.time_ms <= tip.previous_time_ms:
        found.append(BlockFinding("time", f"time {header.time_ms} is not after "
                                          f"{tip.previous_time_ms}"))
    mismatch = block.structural_problem()
    if mismatch is not None:
        found.append(BlockFinding(mismatch.check, mismatch.reason))
    found.extend(_precommitment(tip, block))
    derived = block_randomness(tip.previous_randomness, header.height, block.body.entropy)
    if header.randomness != derived:
        found.append(BlockFinding("randomness", "randomness is not the derived value: "
                                  f"{header.randomness.hex()[:16]}… is not the value derived "
                                  "from the previous randomness and the block's entropy "
                                  f"({derived.hex()[:16]}…)"))
    if expected_proposer is not None and header.proposer_address != expected_proposer:
        found.append(BlockFinding("proposer", f"proposer {header.proposer_address.hex()} is not "
                                              f"the expected {expected_proposer.hex()}"))
    elif validators is not None and header.proposer_address not in validators:
        found.append(BlockFinding("proposer", f"proposer {header.proposer_address.hex()} is not "
                                              "a validator"))
    return found


def _precommitment(tip: ChainTip, block: Block) -> list[BlockFinding]:
    """Check 5's ``precommitment`` part (module doc)."""
    return [BlockFinding("precommitment", reason) for reason in precommitment_problems(
        block.header, block.body.entropy, tip.commitment_of, tip.previous_sources)]


def check_commit(
    chain_id: str, validators: ValidatorSet, block: Block, commit: CommitCertificate,
    check: SignatureCheck = default_signature_check,
) -> BlockFinding | None:
    """Check 10 (module doc): ``commit`` decides ``block`` under ``validators``."""
    height = block.height
    if commit.height != height or commit.block_hash != block.hash:
        return BlockFinding("commit", f"certificate is for block {commit.block_hash.hex()[:16]} "
                                      f"at height {commit.height}, not block "
                                      f"{block.hash.hex()[:16]} at {height}")
    for record in commit.signatures:
        if record.flag is not CommitFlag.ABSENT and record.validator_address not in validators:
            return BlockFinding("commit", f"signature from {record.validator_address.hex()}, "
                                          "which is not in the validator set of height "
                                          f"{height}")
    result = verify_commit(chain_id, block.hash, height, commit, validators, check)
    if not result.ok:
        return BlockFinding("commit", f"certificate does not verify against the validator set "
                                      f"of height {height}: {result.reason}")
    return None


def check_signatures(
    chain: ChainState[Any],
    block: Block,
    commit: CommitCertificate | None,
    *,
    check: SignatureCheck = default_signature_check,
    verified_last_commit: CommitCertificate | None = None,
) -> list[BlockFinding]:
    """Checks 8-10 (module doc) against ``chain``, the state before ``block``."""
    found: list[BlockFinding] = []
    for item in block.body.evidence:
        reason = check_evidence(chain, item, check)
        if reason:
            found.append(BlockFinding("evidence", reason))
    last_commit = block.body.last_commit
    if last_commit is not None and last_commit != verified_last_commit:
        reason = check_last_commit(chain, last_commit,
                                   _skipping_known(chain.chain_id, verified_last_commit, check))
        if reason:
            found.append(BlockFinding("last_commit", reason))
    if commit is not None:
        finding = check_commit(chain.chain_id, chain.validators, block, commit, check)
        if finding is not None:
            found.append(finding)
    return found


def _skipping_known(chain_id: str, verified: CommitCertificate | None,
                    check: SignatureCheck) -> SignatureCheck:
    """``check``, answering yes at once for a precommit ``verified`` already holds: a
    ``last_commit`` is usually the previous certificate plus the precommits that came late
    (the commit window, ``services/consensus/node.py``), so only those are verified again.
    Sound because a precommit's sign bytes name its validator, height, round and value, and
    ``verified`` was checked against the same (previous height's) set."""
    if verified is None:
        return check
    known = {(record_sign_bytes(chain_id, verified, record), record.signature)
             for record in verified.signatures if record.flag is not CommitFlag.ABSENT}

    def skipping(key: PublicKey, message: bytes, signature: bytes) -> bool:
        return (message, signature) in known or check(key, message, signature)

    return skipping


def check_block(
    chain: ChainState[Any],
    block: Block,
    commit: CommitCertificate | None,
    *,
    check: SignatureCheck = default_signature_check,
    verified_last_commit: CommitCertificate | None = None,
    expected_proposer: bytes | None = None,
) -> tuple[BlockFinding, ...]:
    """Every failed check of ``block`` as the next block of ``chain`` (module doc); empty when
    it is valid.

    ``verified_last_commit``: a certificate the caller already verified against the previous
    height's set (the previous block's own), so the same signatures are not checked twice
    (also when the block's ``last_commit`` adds late precommits to it)."""
    found = check_header(chain.tip, chain.validators, block, expected_proposer=expected_proposer)
    found += check_signatures(chain, block, commit, check=check,
                              verified_last_commit=verified_last_commit)
    return tuple(found)


def first_problem(findings: tuple[BlockFinding, ...] | list[BlockFinding],
                  height: int) -> str | None:
    """The first finding as one line (``block H: reason``), or None: for readers that stop at
    the first failure."""
    if not findings:
        return None
    return f"block {height}: {findings[0].reason}"
