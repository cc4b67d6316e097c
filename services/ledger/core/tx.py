"""Ledger transactions: types, canonical encoding, signing, strict decoding.

Wire format (all canonical, see ``protocol.canonical``)::

    SignedTx = tag "SignedTx" | nested(Tx) | bytes(signature)
    Tx       = tag "Tx" | text(chain_id) | nested(PublicKey of the sender) | u64(nonce)
               | u64(fee) | nested(body)

The signature is the sender's signature over the whole ``Tx`` message (its tag included), so it
binds the chain id, the nonce, the fee and the body. The body is one canonical message whose
own tag names its type (``Transfer``, ``Delegate``, ...). The sender's address is the address of
the public key the transaction carries; the ledger stores no keys for accounts.

Decoding is strict: a byte string that the encoder could not have produced raises
``TxDecodeError``, so a transaction has one encoding and one hash (``tx_hash``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar, TypeVar

from protocol.canonical import (
    CanonicalDecodeError,
    CanonicalReader,
    CanonicalWriter,
    read_tag,
    sha256,
)
from protocol.codec import read_public_key
from protocol.entropy.registry import source_id_problem
from protocol.keys import ADDRESS_SIZE, PublicKey, SignatureCheck, SigningKey
from services.ledger.core.errors import InvalidTxError, TxDecodeError
from services.ledger.core.params import RATE_ONE, U64_MAX

__all__ = [
    "CreateValidator",
    "Delegate",
    "EditValidator",
    "ParameterChange",
    "ParameterChangeProposal",
    "PayForService",
    "ProposalContent",
    "QrngRegistryProposal",
    "QrngSource",
    "RegisterQrngSource",
    "ServiceKind",
    "SignedTx",
    "SubmitProposal",
    "Transfer",
    "Tx",
    "TxBody",
    "TxDecodeError",
    "Undelegate",
    "Unjail",
    "VoteOption",
    "VoteProposal",
    "WithdrawRewards",
    "decode_signed_tx",
    "encode_signed_tx",
    "sign_tx",
    "tx_hash",
]

MAX_CHAIN_ID_LENGTH = 64
MAX_PROPOSAL_ITEMS = 64
COMMITMENT_SIZE = 32

B = TypeVar("B")


class VoteOption(IntEnum):
    YES = 1
    ABSTAIN = 2
    NO = 3
    NO_WITH_VETO = 4


class ServiceKind(IntEnum):
    """What a ``PayForService`` pays for; the price per unit is a parameter."""

    KEY_MATERIAL = 1  # unit = one key-material request
    STORAGE = 2  # unit = one KiB stored for one day-equivalent (blocks_per_day blocks)


def _check_amount(name: str, value: int, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTxError(f"{name} must be an integer")
    low = 0 if allow_zero else 1
    if not low <= value <= U64_MAX:
        raise InvalidTxError(f"{name}={value} is outside {low}..2^64-1")


def _check_rate(name: str, value: int) -> None:
    _check_amount(name, value, allow_zero=True)
    if value > RATE_ONE:
        raise InvalidTxError(f"{name}={value} exceeds 100% ({RATE_ONE})")


def _check_address(name: str, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != ADDRESS_SIZE:
        raise InvalidTxError(f"{name} must be a {ADDRESS_SIZE}-byte address")


def _write_public_key(writer: CanonicalWriter, key: PublicKey) -> None:
    writer.nested(key.canonical())


@dataclass(frozen=True, slots=True)
class QrngSource:
    """A registered QRNG server: its id, the key that signs its chunks, and its simulated flag."""

    source_id: str
    public_key: PublicKey
    simulated: bool

    def check(self) -> None:
        problem = source_id_problem(self.source_id)  # the registry's rule, shared
        if problem is not None:
            raise InvalidTxError(problem)

    def canonical(self) -> bytes:
        writer = CanonicalWriter("QrngSource").text(self.source_id)
        _write_public_key(writer, self.public_key)
        return writer.boolean(self.simulated).finish()

    @classmethod
    def decode(cls, data: bytes) -> QrngSource:
        reader = CanonicalReader(data, "QrngSource")
        source = cls(reader.text(), read_public_key(reader), reader.boolean())
        reader.done()
        return source


# --- bodies ------------------------------------------------------------------------------
# Each body: TAG (its canonical message name), write() for the fields, read() mirroring it, and
# check() for the state-independent rules (violations are ante errors: no fee is charged).


@dataclass(frozen=True, slots=True)
class Transfer:
    TAG: ClassVar[str] = "Transfer"
    to: bytes
    amount: int

    def write(self, w: CanonicalWriter) -> None:
        w.raw(self.to, ADDRESS_SIZE).u64(self.amount)

    @classmethod
    def read(cls, r: CanonicalReader) -> Transfer:
        return cls(r.raw(ADDRESS_SIZE), r.u64())

    def check(self) -> None:
        _check_address("to", self.to)
        _check_amount("amount", self.amount)


@dataclass(frozen=True, slots=True)
class CreateValidator:
    """The sender becomes a validator; its public key is the validator's consensus key."""

    TAG: ClassVar[str] = "CreateValidator"
    self_bond: int
    commission_rate: int
    max_commission_rate: int
    max_commission_change_rate: int  # per day-equivalent (``blocks_per_day`` blocks)

    def write(self, w: CanonicalWriter) -> None:
        w.u64(self.self_bond).u64(self.commission_rate).u64(self.max_commission_rate)
        w.u64(self.max_commission_change_rate)

    @classmethod
    def read(cls, r: CanonicalReader) -> CreateValidator:
        return cls(r.u64(), r.u64(), r.u64(), r.u64())

    def check(self) -> None:
        _check_amount("self_bond", self.self_bond)
        _check_rate("commission_rate", self.commission_rate)
        _check_rate("max_commission_rate", self.max_commission_rate)
        _check_rate("max_commission_change_rate", self.max_commission_change_rate)
        if self.commission_rate > self.max_commission_rate:
            raise InvalidTxError("commission_rate exceeds max_commission_rate")
        if self.max_commission_change_rate > self.max_commission_rate:
            raise InvalidTxError("max_commission_change_rate exceeds max_commission_rate")


@dataclass(frozen=True, slots=True)
class EditValidator:
    TAG: ClassVar[str] = "EditValidator"
    commission_rate: int

    def write(self, w: CanonicalWriter) -> None:
        w.u64(self.commission_rate)

    @classmethod
    def read(cls, r: CanonicalReader) -> EditValidator:
        return cls(r.u64())

    def check(self) -> None:
        _check_rate("commission_rate", self.commission_rate)


@dataclass(frozen=True, slots=True)
class Delegate:
    TAG: ClassVar[str] = "Delegate"
    validator: bytes
    amount: int

    def write(self, w: CanonicalWriter) -> None:
        w.raw(self.validator, ADDRESS_SIZE).u64(self.amount)

    @classmethod
    def read(cls, r: CanonicalReader) -> Delegate:
        return cls(r.raw(ADDRESS_SIZE), r.u64())

    def check(self) -> None:
        _check_address("validator", self.validator)
        _check_amount("amount", self.amount)


@dataclass(frozen=True, slots=True)
class Undelegate:
    """Start unbonding ``amount`` tokens; they return after ``unbonding_period_blocks``."""

    TAG: ClassVar[str] = "Undelegate"
    validator: bytes
    amount: int

    def write(self, w: CanonicalWriter) -> None:
        w.raw(self.validator, ADDRESS_SIZE).u64(self.amount)

    @classmethod
    def read(cls, r: CanonicalReader) -> Undelegate:
        return cls(r.raw(ADDRESS_SIZE), r.u64())

    def check(self) -> None:
        _check_address("validator", self.validator)
        _check_amount("amount", self.amount)


@dataclass(frozen=True, slots=True)
class WithdrawRewards:
    """Withdraw the sender's rewards from one validator (and its commission if it operates it)."""

    TAG: ClassVar[str] = "WithdrawRewards"
    validator: bytes

    def write(self, w: CanonicalWriter) -> None:
        w.raw(self.validator, ADDRESS_SIZE)

    @classmethod
    def read(cls, r: CanonicalReader) -> WithdrawRewards:
        return cls(r.raw(ADDRESS_SIZE))

    def check(self) -> None:
        _check_address("validator", self.validator)


@dataclass(frozen=True, slots=True)
class Unjail:
    """Unjail the validator the sender operates."""

    TAG: ClassVar[str] = "Unjail"

    def write(self, w: CanonicalWriter) -> None:
        return None

    @classmethod
    def read(cls, r: CanonicalReader) -> Unjail:
        return cls()

    def check(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class ParameterChange:
    """Set parameter ``name`` to ``value`` (bytes only for ``qrng_registry_authority``)."""

    name: str
    value: int | bytes

    def write(self, w: CanonicalWriter) -> None:
        w.text(self.name)
        if isinstance(self.value, bytes):
            w.u8(1).bytes(self.value)
        else:
            w.u8(0).u64(self.value)

    @classmethod
    def read(cls, r: CanonicalReader) -> ParameterChange:
        name, kind = r.text(), r.u8()
        if kind == 0:
            return cls(name, r.u64())
        if kind == 1:
            return cls(name, r.bytes())
        raise CanonicalDecodeError(f"parameter value kind {kind} is neither 0 nor 1")


@dataclass(frozen=True, slots=True)
class ParameterChangeProposal:
    TAG: ClassVar[str] = "ParameterChangeProposal"
    changes: tuple[ParameterChange, ...]

    def write(self, w: CanonicalWriter) -> None:
        w.sequence(self.changes, lambda w2, change: change.write(w2))

    @classmethod
    def read(cls, r: CanonicalReader) -> ParameterChangeProposal:
        return cls(r.sequence(ParameterChange.read, MAX_PROPOSAL_ITEMS))

    def check(self) -> None:
        if not self.changes or len(self.changes) > MAX_PROPOSAL_ITEMS:
            raise InvalidTxError(f"a proposal changes 1..{MAX_PROPOSAL_ITEMS} parameters")


@dataclass(frozen=True, slots=True)
class QrngRegistryProposal:
    """Register and/or remove QRNG sources (removal first, so a key can be rotated at once)."""

    TAG: ClassVar[str] = "QrngRegistryProposal"
    register: tuple[QrngSource, ...]
    remove: tuple[str, ...]

    def write(self, w: CanonicalWriter) -> None:
        w.sequence(self.register, lambda w2, source: w2.nested(source.canonical()))
        w.sequence(self.remove, lambda w2, source_id: w2.text(source_id))

    @classmethod
    def read(cls, r: CanonicalReader) -> QrngRegistryProposal:
        register = r.sequence(lambda r2: QrngSource.decode(r2.nested()), MAX_PROPOSAL_ITEMS)
        return cls(register, r.sequence(lambda r2: r2.text(), MAX_PROPOSAL_ITEMS))

    def check(self) -> None:
        if not self.register and not self.remove:
            raise InvalidTxError("a registry proposal must register or remove a source")
        if len(self.register) > MAX_PROPOSAL_ITEMS or len(self.remove) > MAX_PROPOSAL_ITEMS:
            raise InvalidTxError(f"at most {MAX_PROPOSAL_ITEMS} sources per proposal")
        for source in self.register:
            source.check()
        ids = [source.source_id for source in self.register]
        if len(set(ids)) != len(ids) or len(set(self.remove)) != len(self.remove):
            raise InvalidTxError("a source id appears twice in one proposal")


ProposalContent = ParameterChangeProposal | QrngRegistryProposal
_CONTENT_TYPES: dict[str, Callable[[CanonicalReader], ProposalContent]] = {
    ParameterChangeProposal.TAG: ParameterChangeProposal.read,
    QrngRegistryProposal.TAG: QrngRegistryProposal.read,
}


def encode_content(content: ProposalContent) -> bytes:
    writer = CanonicalWriter(content.TAG)
    content.write(writer)
    return writer.finish()


def decode_content(data: bytes) -> ProposalContent:
    """The proposal content of ``encode_content`` bytes."""
    return _decode_tagged(data, _CONTENT_TYPES)


def _decode_tagged(data: bytes, types: dict[str, Callable[[CanonicalReader], B]]) -> B:
    name = read_tag(data)
    read = types.get(name)
    if read is None:
        raise CanonicalDecodeError(f"unknown message type {name!r}")
    reader = CanonicalReader(data, name)
    value = read(reader)
    reader.done()
    return value


@dataclass(frozen=True, slots=True)
class SubmitProposal:
    """Submit a governance proposal; ``deposit`` (>= ``min_deposit``) is escrowed."""

    TAG: ClassVar[str] = "SubmitProposal"
    content: ProposalContent
    deposit: int

    def write(self, w: CanonicalWriter) -> None:
        w.nested(encode_content(self.content)).u64(self.deposit)

    @classmethod
    def read(cls, r: CanonicalReader) -> SubmitProposal:
        return cls(_decode_tagged(r.nested(), _CONTENT_TYPES), r.u64())

    def check(self) -> None:
        _check_amount("deposit", self.deposit, allow_zero=True)
        self.content.check()


@dataclass(frozen=True, slots=True)
class VoteProposal:
    TAG: ClassVar[str] = "VoteProposal"
    proposal_id: int
    option: VoteOption

    def write(self, w: CanonicalWriter) -> None:
        w.u64(self.proposal_id).u8(int(self.option))

    @classmethod
    def read(cls, r: CanonicalReader) -> VoteProposal:
        proposal_id, option = r.u64(), r.u8()
        try:
            return cls(proposal_id, VoteOption(option))
        except ValueError as exc:
            raise CanonicalDecodeError(f"unknown vote option {option}") from exc

    def check(self) -> None:
        _check_amount("proposal_id", self.proposal_id)


@dataclass(frozen=True, slots=True)
class RegisterQrngSource:
    """Register a QRNG source directly; only the ``qrng_registry_authority`` may send it."""

    TAG: ClassVar[str] = "RegisterQrngSource"
    source: QrngSource

    def write(self, w: CanonicalWriter) -> None:
        w.nested(self.source.canonical())

    @classmethod
    def read(cls, r: CanonicalReader) -> RegisterQrngSource:
        return cls(QrngSource.decode(r.nested()))

    def check(self) -> None:
        self.source.check()


@dataclass(frozen=True, slots=True)
class PayForService:
    """Pay ``units`` of a service at the parameter price; records a 32-byte commitment.

    The commitment (e.g. to delivered key material) is public in the block; the payment joins
    the fees of the block and is distributed to validators like any fee.
    """

    TAG: ClassVar[str] = "PayForService"
    service: ServiceKind
    units: int
    commitment: bytes

    def write(self, w: CanonicalWriter) -> None:
        w.u8(int(self.service)).u64(self.units).raw(self.commitment, COMMITMENT_SIZE)

    @classmethod
    def read(cls, r: CanonicalReader) -> PayForService:
        kind = r.u8()
        try:
            service = ServiceKind(kind)
        except ValueError as exc:
            raise CanonicalDecodeError(f"unknown service kind {kind}") from exc
        return cls(service, r.u64(), r.raw(COMMITMENT_SIZE))

    def check(self) -> None:
        _check_amount("units", self.units)
        if not isinstance(self.commitment, bytes) or len(self.commitment) != COMMITMENT_SIZE:
            raise InvalidTxError(f"commitment must be {COMMITMENT_SIZE} bytes")


TxBody = (
    Transfer
    | CreateValidator
    | EditValidator
    | Delegate
    | Undelegate
    | WithdrawRewards
    | Unjail
    | SubmitProposal
    | VoteProposal
    | RegisterQrngSource
    | PayForService
)
_BODY_TYPES: dict[str, Callable[[CanonicalReader], TxBody]] = {
    kind.TAG: kind.read
    for kind in (
        Transfer,
        CreateValidator,
        EditValidator,
        Delegate,
        Undelegate,
        WithdrawRewards,
        Unjail,
        SubmitProposal,
        VoteProposal,
        RegisterQrngSource,
        PayForService,
    )
}


def encode_body(body: TxBody) -> bytes:
    writer = CanonicalWriter(body.TAG)
    body.write(writer)
    return writer.finish()


# --- envelope ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tx:
    """An unsigned transaction; ``sign_bytes()`` is what the sender signs."""

    chain_id: str
    sender: PublicKey
    nonce: int
    fee: int
    body: TxBody
    _sign_bytes: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def sender_address(self) -> bytes:
        return self.sender.address

    def sign_bytes(self) -> bytes:
        if self._sign_bytes is None:  # immutable, so encoded once
            writer = CanonicalWriter("Tx").text(self.chain_id)
            _write_public_key(writer, self.sender)
            object.__setattr__(self, "_sign_bytes", writer.u64(self.nonce).u64(self.fee).nested(
                encode_body(self.body)).finish())
        assert self._sign_bytes is not None
        return self._sign_bytes

    def check(self) -> None:
        """State-independent validity (ante): raises ``InvalidTxError``."""
        if not 1 <= len(self.chain_id) <= MAX_CHAIN_ID_LENGTH:
            raise InvalidTxError(f"chain id must be 1..{MAX_CHAIN_ID_LENGTH} characters")
        _check_amount("nonce", self.nonce, allow_zero=True)
        _check_amount("fee", self.fee, allow_zero=True)
        self.body.check()


@dataclass(frozen=True, slots=True)
class SignedTx:
    tx: Tx
    signature: bytes

    def verify_signature(self, check: SignatureCheck | None = None) -> bool:
        """The sender's signature over ``tx.sign_bytes()``; ``check`` (key, message, signature)
        replaces ``PublicKey.verify`` when given (an auditor verifying on other cores)."""
        if check is None:
            return self.tx.sender.verify(self.tx.sign_bytes(), self.signature)
        return check(self.tx.sender, self.tx.sign_bytes(), self.signature)


def sign_tx(key: SigningKey, chain_id: str, nonce: int, fee: int, body: TxBody) -> SignedTx:
    """Build and sign a transaction from ``key``'s account (the ``qustream tx`` CLI path)."""
    tx = Tx(chain_id=chain_id, sender=key.public_key, nonce=nonce, fee=fee, body=body)
    return SignedTx(tx, key.sign(tx.sign_bytes()))


def encode_signed_tx(signed: SignedTx) -> bytes:
    """The bytes that go into ``qs.ledger.tx`` and into blocks."""
    return (
        CanonicalWriter("SignedTx").nested(signed.tx.sign_bytes()).bytes(signed.signature).finish()
    )


def _read_tx(reader: CanonicalReader) -> Tx:
    chain_id = reader.text()
    sender = read_public_key(reader)
    nonce, fee = reader.u64(), reader.u64()
    body = _decode_tagged(reader.nested(), _BODY_TYPES)
    return Tx(chain_id, sender, nonce, fee, body)


def decode_signed_tx(data: bytes) -> SignedTx:
    """Parse signed-transaction bytes; raises ``TxDecodeError`` for anything non-canonical.

    The signature is not verified here (see ``SignedTx.verify_signature``). Memoized by the
    bytes (the result is immutable): a transaction is decoded at admission, at execution, and
    by an auditor both when it sends the signature ahead and when it re-executes.
    """
    return _decode_signed_tx(bytes(data))


@functools.lru_cache(maxsize=4096)
def _decode_signed_tx(data: bytes) -> SignedTx:
    try:
        outer = CanonicalReader(bytes(data), "SignedTx")
        tx_bytes, signature = outer.nested(), outer.bytes()
        outer.done()
        inner = CanonicalReader(tx_bytes, "Tx")
        tx = _read_tx(inner)
        inner.done()
        # The reader is strict, so these bytes are the canonical sign bytes: keep them.
        object.__setattr__(tx, "_sign_bytes", tx_bytes)
    except CanonicalDecodeError as exc:
        raise TxDecodeError(f"not a canonical signed transaction: {exc}") from exc
    return SignedTx(tx, signature)


def tx_hash(data: bytes) -> bytes:
    """The transaction id: SHA-256 of its encoded signed bytes."""
    return sha256(bytes(data))
