"""The ledger state at a height as plain JSON data (``qustream state``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from protocol.chain import ChainState
from services.ledger.core import LedgerState
from services.ledger.core.queries import supply_held


def state_view(chain: ChainState[LedgerState]) -> dict[str, Any]:
    """Balances, validators (stake, power, jail), the next sets, delegations, unbondings,
    pools, supply and every parameter."""
    state = chain.app_state
    reduction = state.params.power_reduction
    return {
        "chain_id": state.chain_id,
        "height": state.height,
        "time_ms": state.time_ms,
        "state_hash": chain.tip.app_hash.hex(),
        "block_hash": chain.tip.previous_block_hash.hex(),
        "accounts": {address.hex(): {"balance": account.balance, "nonce": account.nonce}
                     for address, account in state.accounts.items()},
        "validators": {
            address.hex(): {"tokens": record.tokens, "power": record.tokens // reduction,
                            "shares": record.shares, "commission_rate": record.commission_rate,
                            "jailed": record.jailed, "jailed_until": record.jailed_until,
                            "tombstoned": record.tombstoned,
                            "in_next_set": address in chain.validators}
            for address, record in state.validators.items()},
        "validator_set_next_height": {v.address.hex(): v.power
                                      for v in chain.validators.validators},
        "delegations": [{"delegator": key[0].hex(), "validator": key[1].hex(),
                         "shares": delegation.shares}
                        for key, delegation in state.delegations.items()],
        "unbondings": [{"delegator": key[0].hex(), "validator": key[1].hex(),
                        "balance": entry.balance, "completion_height": entry.completion_height}
                       for key, entries in state.unbondings.items() for entry in entries],
        "fee_pool": state.fee_pool,
        "community_pool": state.community_pool,
        "supply": {**dataclasses.asdict(state.supply), "held": supply_held(state)},
        "qrng_sources": sorted(state.qrng_sources),
        "params": {k: (v.hex() if isinstance(v, bytes) else v)
                   for k, v in dataclasses.asdict(state.params).items()},
    }
