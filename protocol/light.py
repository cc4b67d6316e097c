"""Light-client verification of finalized blocks (CometBFT's light client and its skipping
verification): from a ``TrustedCheckpoint`` (a block the reader trusts and the validator set of
the next height), without the application state.

- ``LightVerifier.verify``: the next block must link to the trusted one, derive its randomness
  from it, carry the history root of the checkpoint's accumulator when the checkpoint has one
  (from the genesis, or saved by a full follower; ``protocol.mmr``), name a validator set
  whose hash is known (the tracked set, or one from ``validator_sets(height)`` whose hash
  matches the header) and carry a certificate with +2/3 of that set. The ledger is not
  re-executed, so the state hash is not checked.
- ``LightVerifier.skip_to``: a far block in one step: trusted validators holding more than the
  trust level (1/3) of the trusted power must have signed it, and +2/3 of its own set. Its
  randomness is then accepted on the strength of those signatures.

Trusting period: trust in a validator set lasts only as long as its validators can still be
punished (less than the unbonding period). Nothing is verified from a trusted block whose time
is ``trusting_period_ms`` or more in the past (``TrustExpiredError``), nor a block timed more
than ``max_clock_drift_ms`` ahead of the clock. Every verified block renews the trust.

The SDK's subscriber and the ``qustream chain`` commands both stand on this module; errors are
the SDK's public ones (``sdk.errors`` re-exports them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from protocol.chain import ChainTip
from protocol.check import check_commit, check_header
from protocol.commit import TrustLevel, verify_commit_light, verify_commit_light_trusting
from protocol.errors import QuStreamError
from protocol.finalized import FinalizedRecord
from protocol.follow import ForkError, conflict_error
from protocol.mmr import History, append
from protocol.validators import ValidatorSet, validator_set_from_json, validator_set_to_json

MAX_CLOCK_DRIFT_MS = 10_000  # as CometBFT's light client


class BlockRejectedError(QuStreamError):
    """A block does not verify; ``reason`` says which check failed. Never yielded."""

    def __init__(self, height: int | None, reason: str) -> None:
        super().__init__(f"block {height if height is not None else '?'} rejected: {reason}")
        self.height = height
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:  # across processes (sdk.beacon's page verifiers)
        return type(self), (self.height, self.reason)


class BlockGapError(BlockRejectedError):
    """A block arrived beyond the next expected height: something in between is missing."""


class TrustExpiredError(BlockRejectedError):
    """Light client: the trusted block is older than the trusting period, so its validators
    may have unbonded (and could sign anything unpunished); start from a newer checkpoint."""


class UnknownValidatorSetError(BlockRejectedError):
    """The block names a validator set this verifier does not know (its validators changed
    since the trusted block, or a forgery): a light verifier cannot decide without that set."""


class ForkDetectedError(BlockRejectedError):
    """Two different blocks claim one height: a safety alarm, stop and investigate."""


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


ValidatorSets = Callable[[int], ValidatorSet]


@dataclass(frozen=True, slots=True)
class TrustedCheckpoint:
    """A block the application trusts and the validator set that governs the next height."""

    chain_id: str
    height: int
    block_hash: bytes
    randomness: bytes
    time_ms: int
    next_validators: ValidatorSet
    # The accumulator over the hashes of blocks 1..height, so the next header's history root
    # is checked too; None when unknown (after a skip, or a checkpoint saved without it).
    accumulator: History | None = None

    def to_json(self) -> str:
        history = None if self.accumulator is None else {
            "size": self.accumulator.size,
            "peaks": [peak.hex() for peak in self.accumulator.peaks]}
        return json.dumps({
            "chain_id": self.chain_id, "height": self.height, "block_hash": self.block_hash.hex(),
            "randomness": self.randomness.hex(), "time_ms": self.time_ms,
            "next_validators": validator_set_to_json(self.next_validators),
            "accumulator": history})

    @classmethod
    def from_json(cls, text: str) -> Self:
        data = json.loads(text)
        history = data.get("accumulator")
        return cls(data["chain_id"], int(data["height"]), bytes.fromhex(data["block_hash"]),
                   bytes.fromhex(data["randomness"]), int(data["time_ms"]),
                   validator_set_from_json(data["next_validators"]),
                   None if history is None else History(
                       int(history["size"]), tuple(bytes.fromhex(p) for p in history["peaks"])))

    def save(self, path: Path | str) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: Path | str) -> Self:
        return cls.from_json(Path(path).read_text())


class LightVerifier:
    """Verifies blocks from a trusted checkpoint without the application state (module doc):
    ``verify`` the next block, or ``skip_to`` a far one. ``trusted`` is the newest verified
    block (a checkpoint to resume from)."""

    def __init__(self, checkpoint: TrustedCheckpoint, validator_sets: ValidatorSets | None,
                 trust_level: TrustLevel, trusting_period_ms: int,
                 clock_ms: Callable[[], int] = wall_clock_ms,
                 max_clock_drift_ms: int = MAX_CLOCK_DRIFT_MS) -> None:
        self.trusted = checkpoint
        self.validator_sets = validator_sets
        self.trust_level = trust_level
        self.trusting_period_ms = trusting_period_ms
        self.clock_ms = clock_ms
        self.max_clock_drift_ms = max_clock_drift_ms
        self.validators = checkpoint.next_validators  # governs trusted.height + 1
        self.hashes: dict[int, bytes] = {checkpoint.height: checkpoint.block_hash}
        self.sets: dict[int, ValidatorSet] = {}  # the set that signed a verified height

    def _check_trust(self, height: int, time_ms: int) -> None:
        """The trusted block must be younger than the trusting period, the new one not from
        the future (module doc)."""
        now = self.clock_ms()
        age = now - self.trusted.time_ms
        if age >= self.trusting_period_ms:
            raise TrustExpiredError(
                height, f"the trusted block {self.trusted.height} is {age // 1000} s old, not "
                        f"younger than the trusting period of {self.trusting_period_ms // 1000} "
                        "s: its validators may have unbonded; start from a newer checkpoint or "
                        "verify fully from genesis")
        if time_ms > now + self.max_clock_drift_ms:
            raise BlockRejectedError(height, f"block time is {time_ms - now} ms ahead of this "
                                             f"clock (more than {self.max_clock_drift_ms} ms)")

    def _set_for(self, height: int, wanted_hash: bytes) -> ValidatorSet:
        if self.validators.hash() == wanted_hash:
            return self.validators
        if self.validator_sets is None:
            raise UnknownValidatorSetError(
                height, "validators hash names a set this subscriber does not know (wrong "
                        "validator set, or pass validator_sets= to fetch a new one)")
        fetched = self.validator_sets(height)
        if fetched.hash() != wanted_hash:
            raise BlockRejectedError(height, "the fetched validator set does not match the "
                                             "header's validators hash")
        return fetched

    def verify(self, record: FinalizedRecord) -> bool:
        """True to yield, False for a harmless duplicate; raises on anything else."""
        block, header, height = record.block, record.block.header, record.height
        trusted = self.trusted
        if height <= trusted.height:
            known = self.hashes.get(height)
            if known is not None and known != block.hash:
                error = conflict_error(record, known, self.sets.get(height))
                if isinstance(error, ForkError):
                    raise ForkDetectedError(height, str(error))
                raise error
            return False
        if height > trusted.height + 1:
            raise BlockGapError(height, f"expected height {trusted.height + 1}")
        self._check_trust(height, header.time_ms)
        if header.validators_hash != self.validators.hash():
            raise BlockRejectedError(height, "validators hash does not match the trusted "
                                             "validator set (wrong validator set)")
        # No application state here: the app hash, the next set and the registered source
        # count are taken from the header (the next set is checked against its hash below, the
        # others by full verifiers, and the certificate's signers vouch for them). Nor the
        # history accumulator, unless the checkpoint brought one (then the root is checked), nor
        # the entropy precommitments (the committed flags and the fresh count, likewise).
        tip = ChainTip(trusted.chain_id, trusted.height + 1, trusted.block_hash, trusted.time_ms,
                       trusted.randomness, (), header.app_hash, self.validators.hash(),
                       header.next_validators_hash, header.registered_sources, trusted.accumulator,
                       commitments=None, previous_sources=None)
        findings = check_header(tip, self.validators, block)
        if findings:
            raise BlockRejectedError(height, findings[0].reason)
        finding = check_commit(header.chain_id, self.validators, block, record.commit)
        if finding is not None:
            raise BlockRejectedError(height, finding.reason)
        next_set = self._set_for(height + 1, header.next_validators_hash)
        history = (None if trusted.accumulator is None
                   else append(trusted.accumulator, block.hash))
        self._advance(record, self.validators, next_set, history)
        return True

    def _advance(self, record: FinalizedRecord, signed_by: ValidatorSet,
                 next_set: ValidatorSet, history: History | None) -> None:
        header = record.block.header
        self.trusted = TrustedCheckpoint(header.chain_id, record.height, record.block.hash,
                                         header.randomness, header.time_ms, next_set, history)
        self.validators = next_set
        self.hashes[record.height] = record.block.hash
        self.sets[record.height] = signed_by
        if len(self.hashes) > 10_000:  # heights only grow, so the first key is the oldest
            del self.hashes[next(iter(self.hashes))]
            del self.sets[next(iter(self.sets))]

    def skip_to(self, record: FinalizedRecord) -> None:
        block, header, height = record.block, record.block.header, record.height
        if height <= self.trusted.height:
            raise BlockRejectedError(height, "skip target is not beyond the trusted height")
        if header.chain_id != self.trusted.chain_id or header.time_ms <= self.trusted.time_ms:
            raise BlockRejectedError(height, "skip target has another chain id or older time")
        self._check_trust(height, header.time_ms)
        mismatch = block.structural_problem()
        if mismatch is not None:
            raise BlockRejectedError(height, mismatch.reason)
        trusting = verify_commit_light_trusting(header.chain_id, self.validators, record.commit,
                                                self.trust_level)
        if not trusting.ok:
            raise BlockRejectedError(height, f"not enough trusted validators signed: "
                                             f"{trusting.reason}")
        own = self._set_for(height, header.validators_hash)
        light = verify_commit_light(header.chain_id, block.hash, height, record.commit, own)
        if not light.ok:
            raise BlockRejectedError(height, f"commit does not verify: {light.reason}")
        # the accumulator's peaks are in no header: after a skip the roots go unchecked
        self._advance(record, own, self._set_for(height + 1, header.next_validators_hash), None)
