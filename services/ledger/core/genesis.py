"""The genesis document as a value, its validation, and the ledger state it starts.

The JSON file format lives in ``services.ledger.core.genesis_file``; this module is pure. Genesis
supply = the listed account balances + every validator's self-bond (self-bonds are created at
genesis, not taken from the validator's account).
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.keys import ADDRESS_SIZE, PublicKey
from services.ledger.core import staking
from services.ledger.core.errors import InvalidParamsError, LedgerError
from services.ledger.core.fmap import FrozenMap
from services.ledger.core.params import RATE_ONE, U64_MAX, Params
from services.ledger.core.state import Account, LedgerState, Supply, evolve
from services.ledger.core.tx import MAX_CHAIN_ID_LENGTH, CreateValidator, QrngSource

GENESIS_RANDOMNESS_SIZE = 64


class GenesisError(LedgerError):
    """A genesis document is unusable; the message names the offending entry."""

    code = 93


@dataclass(frozen=True, slots=True)
class GenesisValidator:
    public_key: PublicKey
    self_bond: int
    commission_rate: int
    max_commission_rate: int
    max_commission_change_rate: int


@dataclass(frozen=True, slots=True)
class GenesisAccount:
    address: bytes
    balance: int


@dataclass(frozen=True, slots=True)
class Genesis:
    chain_id: str
    genesis_time_ms: int
    genesis_randomness: bytes
    validators: tuple[GenesisValidator, ...]
    accounts: tuple[GenesisAccount, ...]
    qrng_sources: tuple[QrngSource, ...]
    params: Params

    def validate(self) -> Genesis:
        """Return ``self`` if usable, else raise ``GenesisError`` naming the problem."""
        if (
            not 1 <= len(self.chain_id) <= MAX_CHAIN_ID_LENGTH
            or not self.chain_id.isascii()
            or not self.chain_id.isprintable()
        ):
            raise GenesisError(f"chain id {self.chain_id!r} must be 1..64 printable ASCII")
        if not 0 <= self.genesis_time_ms <= U64_MAX:
            raise GenesisError("genesis_time_ms must be a non-negative u64")
        if len(self.genesis_randomness) != GENESIS_RANDOMNESS_SIZE:
            raise GenesisError(f"genesis randomness must be {GENESIS_RANDOMNESS_SIZE} bytes")
        try:
            self.params.validate()
        except InvalidParamsError as exc:
            raise GenesisError(f"params: {exc}") from exc
        if not self.validators:
            raise GenesisError("genesis needs at least one validator")
        addresses: set[bytes] = set()
        for index, validator in enumerate(self.validators):
            where = f"validators[{index}] ({validator.public_key.address_hex})"
            if validator.public_key.address in addresses:
                raise GenesisError(f"{where}: duplicate validator")
            addresses.add(validator.public_key.address)
            if validator.self_bond < self.params.min_self_bond:
                raise GenesisError(
                    f"{where}: self_bond {validator.self_bond} is below the minimum "
                    f"{self.params.min_self_bond}"
                )
            rates = (
                validator.commission_rate,
                validator.max_commission_rate,
                validator.max_commission_change_rate,
            )
            if any(not 0 <= rate <= RATE_ONE for rate in rates) or (
                validator.commission_rate > validator.max_commission_rate
                or validator.max_commission_change_rate > validator.max_commission_rate
            ):
                raise GenesisError(f"{where}: commission rates are inconsistent")
        seen_accounts: set[bytes] = set()
        for index, account in enumerate(self.accounts):
            if len(account.address) != ADDRESS_SIZE:
                raise GenesisError(f"accounts[{index}]: address must be 20 bytes")
            if account.address in seen_accounts:
                raise GenesisError(f"accounts[{index}]: duplicate address {account.address.hex()}")
            seen_accounts.add(account.address)
            if not 0 <= account.balance <= U64_MAX:
                raise GenesisError(f"accounts[{index}]: balance out of range")
        source_ids: set[str] = set()
        for index, source in enumerate(self.qrng_sources):
            try:
                source.check()
            except LedgerError as exc:
                raise GenesisError(f"qrng_sources[{index}]: {exc}") from exc
            if source.source_id in source_ids:
                raise GenesisError(f"qrng_sources[{index}]: duplicate id {source.source_id!r}")
            source_ids.add(source.source_id)
        if self.total_supply() >= 2**63:
            raise GenesisError("genesis supply must stay below 2^63 micro-units")
        return self

    def total_supply(self) -> int:
        return sum(a.balance for a in self.accounts) + sum(v.self_bond for v in self.validators)


def genesis_state(genesis: Genesis) -> LedgerState:
    """The ledger state at height 0; the validator sets for heights 1 and 2 are the same."""
    genesis.validate()
    state = LedgerState(
        chain_id=genesis.chain_id,
        height=0,
        time_ms=genesis.genesis_time_ms,
        params=genesis.params,
        supply=Supply(genesis=genesis.total_supply()),
        validator_sets=None,  # type: ignore[arg-type]  # replaced below, once stake exists
        accounts=FrozenMap(
            (account.address, Account(balance=account.balance)) for account in genesis.accounts
        ),
        qrng_sources=FrozenMap((source.source_id, source) for source in genesis.qrng_sources),
    )
    for validator in genesis.validators:
        body = CreateValidator(
            self_bond=validator.self_bond,
            commission_rate=validator.commission_rate,
            max_commission_rate=validator.max_commission_rate,
            max_commission_change_rate=validator.max_commission_change_rate,
        )
        address = validator.public_key.address
        state = staking.add_validator(state, validator.public_key, body, height=0)
        state = staking.bond(state, address, address, validator.self_bond)
    validator_set = staking.compute_validator_set(state)
    if validator_set is None:
        raise GenesisError("no genesis validator has voting power (self_bond < power_reduction)")
    return evolve(state, validator_sets=(validator_set, validator_set))
