"""The evidence pool: verified double-vote evidence waiting to be included in a block.

``chain.evidence`` is written by the tallies, but anyone who can write the topic can write
anything to it, so an item enters the pool only once it proves a double vote here (``add``):

- an offence at a height already decided must pass ``protocol.chain.check_evidence`` against the
  chain (inside the evidence window, not included before, both signatures of a member of that
  height's set);
- an offence at the height being decided now is checked against the current set (it may be
  included from the next height on);
- an offence beyond that is refused: its set is not known yet, and honest tallies only report
  what they saw.

Bounds: one pending item per offender (one offence is one punishment: the ledger tombstones on
the first), and at most ``limit`` items overall. ``prune`` after every block drops what the block
included (every item of an offender it punished), what left the evidence window, and nothing
else. Rejections raise ``EvidenceRejectedError`` (``code``) for the caller to dead-letter.
"""

from __future__ import annotations

from typing import Any

from protocol.chain import ChainState, check_evidence
from protocol.errors import InputError
from protocol.evidence import DuplicateVoteEvidence, EvidenceError, verify_duplicate_vote
from protocol.keys import SignatureCheck, default_signature_check

MAX_EVIDENCE = 256


class EvidenceRejectedError(InputError):
    """Evidence that does not prove a double vote here and now."""

    code = "invalid_evidence"


class FutureEvidenceError(EvidenceRejectedError):
    code = "future_evidence"


class EvidencePoolFullError(EvidenceRejectedError):
    code = "evidence_pool_full"


class EvidencePool:
    """Pending verified evidence by offender (module doc)."""

    def __init__(self, limit: int = MAX_EVIDENCE,
                 check: SignatureCheck = default_signature_check) -> None:
        self._by_offender: dict[bytes, DuplicateVoteEvidence] = {}
        self._limit = limit
        self._check = check

    def __len__(self) -> int:
        return len(self._by_offender)

    def add(self, item: DuplicateVoteEvidence, chain: ChainState[Any]) -> bool:
        """True when ``item`` became pending; False when its offender already has pending
        evidence (harmless); raises ``EvidenceRejectedError`` when it proves nothing here."""
        current = chain.tip.height
        if item.height > current:
            raise FutureEvidenceError(f"evidence of height {item.height} while height "
                                      f"{current} is being decided")
        if item.height == current:
            try:
                verify_duplicate_vote(chain.chain_id, item, chain.validators, current + 1,
                                      chain.evidence_max_age, self._check)
            except EvidenceError as exc:
                raise EvidenceRejectedError(str(exc)) from exc
        else:
            problem = check_evidence(chain, item, self._check)
            if problem is not None:
                raise EvidenceRejectedError(problem)
        if item.validator_address in self._by_offender:
            return False
        if len(self._by_offender) >= self._limit:
            raise EvidencePoolFullError(f"{len(self._by_offender)} offenders already have "
                                        "evidence pending")
        self._by_offender[item.validator_address] = item
        return True

    def pending(self) -> tuple[DuplicateVoteEvidence, ...]:
        """Pending items in proposal order (by evidence hash)."""
        return tuple(sorted(self._by_offender.values(), key=lambda e: e.hash()))

    def prune(self, chain: ChainState[Any], included: tuple[DuplicateVoteEvidence, ...]) -> None:
        """After a block: ``chain`` is the state after it, ``included`` its evidence."""
        punished = {item.validator_address for item in included}
        for offender, item in list(self._by_offender.items()):
            expired = chain.tip.height - item.height > chain.evidence_max_age
            committed = (item.height, item.hash()) in chain.committed_evidence
            if offender in punished or expired or committed:
                del self._by_offender[offender]
