"""Validators and validator sets, shared by consensus, the ledger, the SDK and the audit.

A validator set is a tuple sorted by address (the canonical order); voting power is an integer.
Quorum arithmetic is integer-only: ``power * 3 > total * 2`` is "more than two thirds".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol.canonical import CanonicalWriter, sha256
from protocol.errors import InputError
from protocol.keys import PublicKey


class ValidatorSetError(InputError):
    """A validator set is malformed (duplicate address, non-positive power, empty)."""


@dataclass(frozen=True, slots=True)
class Validator:
    address: bytes
    public_key: PublicKey
    power: int

    def canonical(self) -> bytes:
        return (
            CanonicalWriter("Validator")
            .raw(self.address, 20)
            .nested(self.public_key.canonical())
            .u64(self.power)
            .finish()
        )


@dataclass(frozen=True, slots=True)
class ValidatorSet:
    validators: tuple[Validator, ...]
    total_power: int = field(init=False)
    _index: Mapping[bytes, int] = field(init=False, repr=False, compare=False)
    # The set is immutable, so its hash is computed once (the ledger hashes both upcoming sets
    # into every state hash, and the chain tip carries one per block).
    _hash: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.validators:
            raise ValidatorSetError("a validator set cannot be empty")
        ordered = tuple(sorted(self.validators, key=lambda v: v.address))
        if ordered != self.validators:
            object.__setattr__(self, "validators", ordered)
        index: dict[bytes, int] = {}
        for position, validator in enumerate(ordered):
            if validator.power <= 0:
                raise ValidatorSetError(
                    f"validator {validator.address.hex()} has non-positive power {validator.power}"
                )
            if validator.address != validator.public_key.address:
                raise ValidatorSetError(
                    f"validator {validator.address.hex()} address does not match its public key"
                )
            if validator.address in index:
                raise ValidatorSetError(f"duplicate validator {validator.address.hex()}")
            index[validator.address] = position
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "total_power", sum(v.power for v in ordered))

    @classmethod
    def of(cls, validators: Iterable[Validator]) -> ValidatorSet:
        return cls(tuple(validators))

    def __len__(self) -> int:
        return len(self.validators)

    def __contains__(self, address: object) -> bool:
        return address in self._index

    def get(self, address: bytes) -> Validator | None:
        position = self._index.get(address)
        return None if position is None else self.validators[position]

    def index_of(self, address: bytes) -> int | None:
        return self._index.get(address)

    def power_of(self, address: bytes) -> int:
        validator = self.get(address)
        return 0 if validator is None else validator.power

    def has_quorum(self, power: int) -> bool:
        """More than two thirds of the total voting power."""
        return power * 3 > self.total_power * 2

    def exceeds_one_third(self, power: int) -> bool:
        return power * 3 > self.total_power

    def canonical(self) -> bytes:
        return (
            CanonicalWriter("ValidatorSet")
            .sequence(self.validators, lambda w, v: w.nested(v.canonical()))
            .finish()
        )

    def hash(self) -> bytes:
        if self._hash is None:
            object.__setattr__(self, "_hash", sha256(self.canonical()))
        assert self._hash is not None
        return self._hash


def validator_set_to_json(validators: ValidatorSet) -> list[dict[str, Any]]:
    return [{"address": v.address.hex(), "public_key": v.public_key.to_text(), "power": v.power}
            for v in validators.validators]


def validator_set_from_json(items: Iterable[dict[str, Any]]) -> ValidatorSet:
    """Parse the JSON of ``validator_set_to_json`` (as ``/v1/validators/{height}`` serves it);
    the caller checks its hash against a header before trusting it."""
    return ValidatorSet.of(
        Validator(bytes.fromhex(item["address"]), PublicKey.from_text(item["public_key"]),
                  int(item["power"])) for item in items)
