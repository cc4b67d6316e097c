"""The genesis file: JSON format, loading with typed errors, and the starting ledger state.

Format (``qustream-genesis/1``), every amount an integer in micro-units, every rate an integer
in parts per billion::

    {
      "format": "qustream-genesis/1",
      "chain_id": "qustream-local",
      "genesis_time_ms": 1700000000000,             # unix milliseconds
      "genesis_randomness": "<128 hex digits>",     # 64 bytes: the randomness before block 1
      "validators": [{"public_key": "ml-dsa-65:<base64>", "address": "<40 hex>",
                      "self_bond": 10000000000, "commission_rate": 100000000,
                      "max_commission_rate": 200000000,
                      "max_commission_change_rate": 10000000}],
      "accounts": [{"address": "<40 hex>", "balance": 1000000000000}],
      "qrng_sources": [{"source_id": "qrng-0", "public_key": "ml-dsa-65:<base64>",
                        "simulated": true}],
      "params": {"max_validators": 100, ...}         # every ledger parameter (see Params)
    }

``address`` entries of validators are informational and must match the key. Missing params
take their defaults when loading; ``genesis_to_json`` always writes every parameter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from protocol.keys import KeyError_, PublicKey
from services.ledger.core.errors import InvalidParamsError
from services.ledger.core.genesis import (
    Genesis,
    GenesisAccount,
    GenesisError,
    GenesisValidator,
    genesis_state,
)
from services.ledger.core.params import Params
from services.ledger.core.tx import QrngSource

__all__ = [
    "GENESIS_FORMAT",
    "Genesis",
    "GenesisAccount",
    "GenesisError",
    "GenesisFormatError",
    "GenesisValidator",
    "genesis_from_json",
    "genesis_state",
    "genesis_to_json",
    "load_genesis",
    "save_genesis",
]

GENESIS_FORMAT = "qustream-genesis/1"


class GenesisFormatError(GenesisError):
    """The genesis file is not readable JSON of the documented shape."""


def genesis_to_json(genesis: Genesis) -> dict[str, Any]:
    return {
        "format": GENESIS_FORMAT,
        "chain_id": genesis.chain_id,
        "genesis_time_ms": genesis.genesis_time_ms,
        "genesis_randomness": genesis.genesis_randomness.hex(),
        "validators": [
            {
                "public_key": v.public_key.to_text(),
                "address": v.public_key.address_hex,
                "self_bond": v.self_bond,
                "commission_rate": v.commission_rate,
                "max_commission_rate": v.max_commission_rate,
                "max_commission_change_rate": v.max_commission_change_rate,
            }
            for v in genesis.validators
        ],
        "accounts": [{"address": a.address.hex(), "balance": a.balance} for a in genesis.accounts],
        "qrng_sources": [
            {
                "source_id": s.source_id,
                "public_key": s.public_key.to_text(),
                "simulated": s.simulated,
            }
            for s in genesis.qrng_sources
        ],
        "params": genesis.params.to_dict(),
    }


def _field(entry: dict[str, Any], name: str, kind: type, where: str) -> Any:
    if not isinstance(entry, dict) or name not in entry:
        raise GenesisFormatError(f"{where}: missing field {name!r}")
    value = entry[name]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise GenesisFormatError(f"{where}.{name}: expected an integer")
    if not isinstance(value, kind):
        raise GenesisFormatError(f"{where}.{name}: expected {kind.__name__}")
    return value


def _hex(entry: dict[str, Any], name: str, where: str) -> bytes:
    try:
        return bytes.fromhex(_field(entry, name, str, where))
    except ValueError as exc:
        raise GenesisFormatError(f"{where}.{name}: not hex") from exc


def _key(entry: dict[str, Any], where: str) -> PublicKey:
    try:
        return PublicKey.from_text(_field(entry, "public_key", str, where))
    except KeyError_ as exc:
        raise GenesisFormatError(f"{where}.public_key: {exc}") from exc


def _list(data: dict[str, Any], name: str) -> list[Any]:
    return _field(data, name, list, "genesis")  # type: ignore[no-any-return]


def genesis_from_json(data: Any) -> Genesis:
    """Parse and validate; raises ``GenesisFormatError`` or ``GenesisError``."""
    if not isinstance(data, dict):
        raise GenesisFormatError("genesis must be a JSON object")
    if data.get("format") != GENESIS_FORMAT:
        raise GenesisFormatError(f"genesis format must be {GENESIS_FORMAT!r}")
    validators = []
    for index, entry in enumerate(_list(data, "validators")):
        where = f"validators[{index}]"
        key = _key(entry, where)
        if "address" in entry and entry["address"] != key.address_hex:
            raise GenesisFormatError(f"{where}.address does not match its public key")
        validators.append(
            GenesisValidator(
                public_key=key,
                self_bond=_field(entry, "self_bond", int, where),
                commission_rate=_field(entry, "commission_rate", int, where),
                max_commission_rate=_field(entry, "max_commission_rate", int, where),
                max_commission_change_rate=_field(entry, "max_commission_change_rate", int, where),
            )
        )
    accounts = [
        GenesisAccount(
            _hex(entry, "address", f"accounts[{index}]"),
            _field(entry, "balance", int, f"accounts[{index}]"),
        )
        for index, entry in enumerate(_list(data, "accounts"))
    ]
    sources = [
        QrngSource(
            _field(entry, "source_id", str, f"qrng_sources[{index}]"),
            _key(entry, f"qrng_sources[{index}]"),
            _field(entry, "simulated", bool, f"qrng_sources[{index}]"),
        )
        for index, entry in enumerate(_list(data, "qrng_sources"))
    ]
    try:
        params = Params.from_dict(_field(data, "params", dict, "genesis"))
    except InvalidParamsError as exc:
        raise GenesisError(f"params: {exc}") from exc
    return Genesis(
        chain_id=_field(data, "chain_id", str, "genesis"),
        genesis_time_ms=_field(data, "genesis_time_ms", int, "genesis"),
        genesis_randomness=_hex(data, "genesis_randomness", "genesis"),
        validators=tuple(validators),
        accounts=tuple(accounts),
        qrng_sources=tuple(sources),
        params=params,
    ).validate()


def load_genesis(path: Path | str) -> Genesis:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise GenesisFormatError(f"cannot read genesis file {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise GenesisFormatError(f"genesis file {path} is not JSON: {exc}") from exc
    return genesis_from_json(data)


def save_genesis(genesis: Genesis, path: Path | str) -> None:
    """Write the validated genesis as indented JSON (refuses an invalid one)."""
    genesis.validate()
    Path(path).write_text(json.dumps(genesis_to_json(genesis), indent=2) + "\n")
