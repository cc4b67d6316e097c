"""Commit certificates and their verification — usable by anyone (SDK, audit, tally, nodes).

A certificate records, for every validator of the height's set in canonical (address) order, one
of: ABSENT (no signature), COMMIT (a precommit for the block) or NIL (a precommit for nil in the
same round). The precommit sign-bytes are rebuilt from the chain id, height, round, block hash
and the validator's address, so the certificate stores nothing else.

Three checks, after CometBFT's ``VerifyCommit`` / ``VerifyCommitLight`` /
``VerifyCommitLightTrusting``:

- ``verify_commit``: full check against the set of the height: every present signature must
  verify and COMMIT power must be more than two thirds. The tally, nodes and the audit use it.
- ``verify_commit_light``: the same quorum, but stops once two thirds are verified (a light
  client that already trusts the set via the header's validators hash).
- ``verify_commit_light_trusting``: skipping verification. The certificate belongs to a set the
  client does not know yet; it is accepted when validators of the *trusted* set holding more than
  ``trust_level`` (default 1/3) of the trusted power signed it. With less than 1/3 Byzantine in
  the trusted set, at least one honest trusted validator vouches for the new header.

Every check returns a ``CommitVerification`` saying why it failed; none raises on bad input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from protocol.canonical import HASH_SIZE, CanonicalWriter
from protocol.errors import InputError
from protocol.keys import ADDRESS_SIZE, SignatureCheck, default_signature_check
from protocol.messages import VoteType, vote_sign_bytes
from protocol.validators import Validator, ValidatorSet


class CommitError(InputError):
    """A certificate cannot be built from the given votes."""


class CommitFlag(IntEnum):
    ABSENT = 0
    COMMIT = 1
    NIL = 2


@dataclass(frozen=True, slots=True)
class CommitSig:
    flag: CommitFlag
    validator_address: bytes
    signature: bytes  # empty for ABSENT

    def canonical(self) -> bytes:
        return (
            CanonicalWriter("CommitSig")
            .u8(int(self.flag))
            .raw(self.validator_address, ADDRESS_SIZE)
            .bytes(self.signature)
            .finish()
        )


@dataclass(frozen=True, slots=True)
class CommitCertificate:
    """Proof that ``block_hash`` was decided at ``height`` in ``round``."""

    height: int
    round: int
    block_hash: bytes
    signatures: tuple[CommitSig, ...]
    # Immutable, so encoded once: a certificate is encoded again as the next block's
    # ``last_commit`` (block bytes, body hash, ``last_commit_hash``).
    _canonical: bytes | None = field(default=None, init=False, repr=False, compare=False)
    _hash: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def canonical(self) -> bytes:
        if self._canonical is None:
            object.__setattr__(self, "_canonical", (
                CanonicalWriter("CommitCertificate")
                .u64(self.height)
                .u32(self.round)
                .raw(self.block_hash, HASH_SIZE)
                .sequence(self.signatures, lambda w, s: w.nested(s.canonical()))
                .finish()
            ))
        assert self._canonical is not None
        return self._canonical

    def hash(self) -> bytes:
        if self._hash is None:
            object.__setattr__(self, "_hash", CanonicalWriter("CommitCertificateHash").nested(
                self.canonical()).digest())
        assert self._hash is not None
        return self._hash

    def signed_addresses(self) -> tuple[bytes, ...]:
        """Addresses whose precommit for the block is in the certificate (canonical order)."""
        return tuple(s.validator_address for s in self.signatures if s.flag is CommitFlag.COMMIT)


@dataclass(frozen=True, slots=True)
class CommitVerification:
    ok: bool
    reason: str  # "ok" or what was wrong
    signed_power: int = 0
    total_power: int = 0

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True, slots=True)
class TrustLevel:
    """A fraction in [1/3, 1], integer numerator and denominator (no floats)."""

    numerator: int = 1
    denominator: int = 3

    def __post_init__(self) -> None:
        if (
            self.denominator <= 0
            or self.numerator * 3 < self.denominator
            or self.numerator > self.denominator
        ):
            raise ValueError(
                f"trust level {self.numerator}/{self.denominator} must lie in [1/3, 1]"
            )


def _fail(reason: str, signed: int = 0, total: int = 0) -> CommitVerification:
    return CommitVerification(False, reason, signed, total)


def _check_shape(
    block_hash: bytes, height: int, cert: CommitCertificate, validator_set: ValidatorSet
) -> str | None:
    if cert.height != height:
        return f"certificate is for height {cert.height}, expected {height}"
    if cert.block_hash != block_hash:
        return (
            f"certificate is for block {cert.block_hash.hex()[:16]}, "
            f"expected {block_hash.hex()[:16]}"
        )
    if len(cert.signatures) != len(validator_set):
        return (
            f"certificate has {len(cert.signatures)} records for a set of "
            f"{len(validator_set)} validators"
        )
    for position, (record, validator) in enumerate(
        zip(cert.signatures, validator_set.validators, strict=True)
    ):
        if record.validator_address != validator.address:
            return (
                f"record {position} is for {record.validator_address.hex()}, "
                f"expected {validator.address.hex()}"
            )
        if (record.flag is CommitFlag.ABSENT) != (record.signature == b""):
            return f"record {position} ({validator.address.hex()}) flag and signature disagree"
    return None


def record_sign_bytes(
    chain_id: str, cert: CommitCertificate, record: CommitSig
) -> bytes:
    """The precommit bytes ``record`` signed (what ``check`` is asked about for it)."""
    block = cert.block_hash if record.flag is CommitFlag.COMMIT else None
    return vote_sign_bytes(
        chain_id, VoteType.PRECOMMIT, cert.height, cert.round, block, record.validator_address
    )


def verify_commit(
    chain_id: str,
    block_hash: bytes,
    height: int,
    cert: CommitCertificate,
    validator_set: ValidatorSet,
    check: SignatureCheck = default_signature_check,
) -> CommitVerification:
    """Full verification: shape, every present signature, and COMMIT power > 2/3."""
    return _verify(chain_id, block_hash, height, cert, validator_set, check, light=False)


def verify_commit_light(
    chain_id: str,
    block_hash: bytes,
    height: int,
    cert: CommitCertificate,
    validator_set: ValidatorSet,
    check: SignatureCheck = default_signature_check,
) -> CommitVerification:
    """Like ``verify_commit`` but only COMMIT records, stopping once 2/3 are verified."""
    return _verify(chain_id, block_hash, height, cert, validator_set, check, light=True)


def _verify(
    chain_id: str,
    block_hash: bytes,
    height: int,
    cert: CommitCertificate,
    validator_set: ValidatorSet,
    check: SignatureCheck,
    *,
    light: bool,
) -> CommitVerification:
    total = validator_set.total_power
    problem = _check_shape(block_hash, height, cert, validator_set)
    if problem:
        return _fail(problem, 0, total)
    signed = 0
    for record, validator in zip(cert.signatures, validator_set.validators, strict=True):
        if record.flag is CommitFlag.ABSENT or (light and record.flag is not CommitFlag.COMMIT):
            continue
        if not check(validator.public_key, record_sign_bytes(chain_id, cert, record),
                     record.signature):
            return _fail(f"bad signature from {validator.address.hex()}", signed, total)
        if record.flag is CommitFlag.COMMIT:
            signed += validator.power
            if light and validator_set.has_quorum(signed):
                return CommitVerification(True, "ok", signed, total)
    if not validator_set.has_quorum(signed):
        return _fail(f"signed power {signed} is not more than 2/3 of {total}", signed, total)
    return CommitVerification(True, "ok", signed, total)


def verify_commit_light_trusting(
    chain_id: str,
    trusted_set: ValidatorSet,
    cert: CommitCertificate,
    trust_level: TrustLevel | None = None,
    check: SignatureCheck = default_signature_check,
) -> CommitVerification:
    """Skipping verification: trusted validators with > ``trust_level`` of the trusted power
    signed ``cert``. Records of validators unknown to ``trusted_set`` are ignored; an address
    appearing twice counts once (and is an error, since a real certificate cannot contain it).
    Pair this with ``verify_commit_light`` against the new set named by the new header."""
    level = trust_level or TrustLevel()
    total = trusted_set.total_power
    seen: set[bytes] = set()
    signed = 0
    for record in cert.signatures:
        if record.validator_address in seen:
            return _fail(f"validator {record.validator_address.hex()} appears twice", signed,
                         total)
        seen.add(record.validator_address)
        if record.flag is not CommitFlag.COMMIT:
            continue
        validator: Validator | None = trusted_set.get(record.validator_address)
        if validator is None:
            continue
        if not check(validator.public_key, record_sign_bytes(chain_id, cert, record),
                     record.signature):
            return _fail(f"bad signature from {validator.address.hex()}", signed, total)
        signed += validator.power
        if signed * level.denominator > total * level.numerator:
            return CommitVerification(True, "ok", signed, total)
    return _fail(
        f"trusted power {signed} is not more than {level.numerator}/{level.denominator} "
        f"of {total}",
        signed,
        total,
    )
