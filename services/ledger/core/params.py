"""Every ledger parameter, with its default, its bound, and its canonical encoding.

Units: amounts are integer micro-units (``MICRO`` = one token); periods are in blocks; rates are
integers in parts per billion (``RATE_ONE`` = 100%). ``apply_rate`` rounds down, so applying a
rate to an amount never produces more than the exact share (rounding never creates money; the
remainder stays where it was). Every field is in the genesis file and can be changed by a
governance ``ParameterChange``; a change is applied only if the whole new set validates.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from dataclasses import dataclass

from protocol.canonical import CanonicalWriter
from protocol.keys import ADDRESS_SIZE
from services.ledger.core.errors import InvalidParamsError

MICRO = 1_000_000
RATE_ONE = 1_000_000_000
U64_MAX = 2**64 - 1
# The encodable range a parameter must respect beyond its own u64 field: every period is added
# to a block height (unbonding completion, jail release, voting end), and a height stays below
# 2^63, so periods stay below 2^40 blocks (some 170,000 years of 5-second blocks) and their sums
# with any reachable height fit a u64. The liveness window is a bitmap held in the state.
MAX_PERIOD_BLOCKS = 2**40
MAX_SIGNED_BLOCKS_WINDOW = 2**20
MAX_COUNT = 2**16  # validators in the set, unbonding entries per pair
_PERIODS = ("unbonding_period_blocks", "blocks_per_day", "downtime_jail_blocks",
            "max_evidence_age_blocks", "voting_period_blocks")


# Parameters added to running chains: encoded only when not at their default (``Params.encode``).
ADDED_LATER = frozenset({"snapshot_interval_blocks"})


def apply_rate(amount: int, rate: int) -> int:
    """``amount * rate / RATE_ONE`` rounded down (never more than the exact share)."""
    return amount * rate // RATE_ONE


@dataclass(frozen=True, slots=True)
class Params:
    """The ledger's parameters. Field order is the canonical encoding order."""

    # staking
    max_validators: int = 100
    min_self_bond: int = 1_000 * MICRO
    power_reduction: int = MICRO  # voting power = bonded tokens // power_reduction
    unbonding_period_blocks: int = 362_880  # 21 days of 5-second blocks
    max_unbonding_entries: int = 7  # per (delegator, validator), bounds the state
    blocks_per_day: int = 17_280  # "a day" for the commission-change rule
    # distribution
    block_reward: int = 1 * MICRO  # issued every block
    community_tax_rate: int = 20_000_000  # 2%
    # fees
    min_tx_fee: int = 1_000
    fee_per_byte: int = 0
    max_tx_bytes: int = 65_536
    # slashing
    signed_blocks_window: int = 100
    min_signed_per_window_rate: int = 500_000_000  # 50%
    downtime_jail_blocks: int = 120
    slash_fraction_downtime_rate: int = 100_000  # 0.01%
    slash_fraction_double_sign_rate: int = 50_000_000  # 5%
    max_evidence_age_blocks: int = 362_880
    # governance
    min_deposit: int = 10 * MICRO
    voting_period_blocks: int = 34_560
    quorum_rate: int = 334_000_000  # 33.4% of bonded tokens must vote
    threshold_rate: int = 500_000_000  # yes / (yes + no + veto) must exceed 50%
    veto_threshold_rate: int = 334_000_000  # veto / all votes must not exceed 33.4%
    # services
    price_key_material_per_unit: int = 100
    price_storage_per_unit: int = 10
    # state sync: the chain state is written to chain.snapshots after every height divisible by
    # this (protocol.snapshot); 0 = no snapshots
    snapshot_interval_blocks: int = 1_000
    # QRNG registry: an address allowed to register sources directly; empty = governance only
    qrng_registry_authority: bytes = b""

    def validate(self) -> Params:
        """Return ``self`` if every bound holds, else raise ``InvalidParamsError``."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "qrng_registry_authority":
                if not isinstance(value, bytes) or len(value) not in (0, ADDRESS_SIZE):
                    raise InvalidParamsError(
                        "qrng_registry_authority must be empty or a 20-byte address"
                    )
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidParamsError(f"{field.name} must be an integer")
            if not 0 <= value <= U64_MAX:
                raise InvalidParamsError(f"{field.name}={value} is outside 0..2^64-1")
            if field.name.endswith("_rate") and value > RATE_ONE:
                raise InvalidParamsError(f"{field.name}={value} exceeds 100% ({RATE_ONE})")
        for name in (
            "max_validators",
            "power_reduction",
            "unbonding_period_blocks",
            "max_unbonding_entries",
            "blocks_per_day",
            "signed_blocks_window",
            "downtime_jail_blocks",
            "max_evidence_age_blocks",
            "voting_period_blocks",
            "min_self_bond",
        ):
            if getattr(self, name) < 1:
                raise InvalidParamsError(f"{name} must be at least 1")
        if self.max_tx_bytes < 1024:
            raise InvalidParamsError("max_tx_bytes must be at least 1024")
        self._check_encodable()
        if self.threshold_rate == 0 or self.quorum_rate == 0:
            raise InvalidParamsError("quorum_rate and threshold_rate must be positive")
        return self

    def _check_encodable(self) -> None:
        """Bounds that keep every value derived from the parameters inside the state's
        fixed-width fields (see ``MAX_PERIOD_BLOCKS``): a parameter set that passes can never
        make a later block unencodable, so governance cannot halt the chain by accident."""
        for name in _PERIODS:
            if getattr(self, name) > MAX_PERIOD_BLOCKS:
                raise InvalidParamsError(f"{name}={getattr(self, name)} exceeds "
                                         f"{MAX_PERIOD_BLOCKS} blocks")
        if self.signed_blocks_window > MAX_SIGNED_BLOCKS_WINDOW:
            raise InvalidParamsError(f"signed_blocks_window exceeds {MAX_SIGNED_BLOCKS_WINDOW}")
        for name in ("max_validators", "max_unbonding_entries"):
            if getattr(self, name) > MAX_COUNT:
                raise InvalidParamsError(f"{name}={getattr(self, name)} exceeds {MAX_COUNT}")
        if self.min_tx_fee + self.fee_per_byte * self.max_tx_bytes > U64_MAX:
            raise InvalidParamsError("the fee of a transaction of max_tx_bytes (min_tx_fee + "
                                     "fee_per_byte * max_tx_bytes) exceeds 2^64-1")

    def with_changes(self, changes: Iterable[tuple[str, int | bytes]]) -> Params:
        """A validated copy with the named fields replaced; unknown names are errors."""
        names = {field.name for field in dataclasses.fields(self)}
        updates: dict[str, int | bytes] = {}
        for name, value in changes:
            if name not in names:
                raise InvalidParamsError(f"unknown parameter {name!r}")
            expected = bytes if name == "qrng_registry_authority" else int
            if isinstance(value, bool) or not isinstance(value, expected):
                raise InvalidParamsError(f"parameter {name} takes a {expected.__name__}")
            updates[name] = value
        return dataclasses.replace(self, **updates).validate()  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, int | str]:
        """JSON form (the genesis file): integers, and the authority as hex (a parameter of
        ``ADDED_LATER`` only when not at its default, like the canonical encoding)."""
        result: dict[str, int | str] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in ADDED_LATER and value == field.default:
                continue
            result[field.name] = value.hex() if isinstance(value, bytes) else value
        return result

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Params:
        """Parse the JSON form; missing fields take their defaults, unknown ones are errors."""
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidParamsError(f"unknown parameters: {', '.join(unknown)}")
        values: dict[str, int | bytes] = {}
        for name, value in data.items():
            if name == "qrng_registry_authority":
                if not isinstance(value, str):
                    raise InvalidParamsError("qrng_registry_authority must be a hex string")
                try:
                    values[name] = bytes.fromhex(value)
                except ValueError as exc:
                    raise InvalidParamsError("qrng_registry_authority is not hex") from exc
            elif isinstance(value, bool) or not isinstance(value, int):
                raise InvalidParamsError(f"parameter {name} must be an integer")
            else:
                values[name] = value
        return cls(**values).validate()  # type: ignore[arg-type]

    def encode(self, writer: CanonicalWriter) -> CanonicalWriter:
        """Append the canonical encoding: every field in declaration order, u64 or bytes; a
        field added after chains were running (``ADDED_LATER``) only when it differs from its
        default, so the state hashes of those chains stay what they were."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in ADDED_LATER and value == field.default:
                continue
            writer.text(field.name)
            if isinstance(value, bytes):
                writer.bytes(value)
            else:
                writer.u64(value)
        return writer

    def digest(self) -> bytes:
        return _params_digest(self)


@functools.lru_cache(maxsize=16)
def _params_digest(params: Params) -> bytes:
    # Parameters change only by governance, yet every state hash includes their digest; the
    # cache is keyed by value (Params is a frozen, hashable dataclass), so it cannot go stale.
    return params.encode(CanonicalWriter("LedgerParams")).digest()


def parameter_names() -> tuple[str, ...]:
    """Every parameter name, in canonical order."""
    return tuple(field.name for field in dataclasses.fields(Params))
