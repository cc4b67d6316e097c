"""The simulator with the real ledger (``LedgerApp``): a validator that equivocates is caught,
its evidence is included in a later block, and the ledger slashes, jails and tombstones it,
with every honest validator agreeing on every state hash."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from protocol.app import Application
from protocol.keys import SigningKey
from services.ledger.core import (
    MICRO,
    RATE_ONE,
    Genesis,
    GenesisValidator,
    LedgerApp,
    LedgerState,
    Params,
    genesis_state,
)
from tests.support.sim import Behavior, faulty_config, simulate

SELF_BOND = 10_000 * MICRO


def ledger_factory(keys: Sequence[SigningKey], powers: Sequence[int]
                   ) -> tuple[Application[Any], Any]:
    genesis = Genesis(
        chain_id="qustream-sim",
        genesis_time_ms=1_000_000,
        genesis_randomness=bytes(64),
        validators=tuple(
            GenesisValidator(key.public_key, SELF_BOND * power // 10, RATE_ONE // 10,
                             RATE_ONE // 5, RATE_ONE // 100)
            for key, power in zip(keys, powers, strict=True)
        ),
        accounts=(),
        qrng_sources=(),
        params=Params(),
    )
    return LedgerApp(), genesis_state(genesis)


def test_equivocation_is_slashed_jailed_and_tombstoned_by_the_ledger() -> None:
    result = simulate(faulty_config(21, 4, 8, ((0, Behavior.EQUIVOCATE),),
                                    app_factory=ledger_factory))
    assert result.evidence_committed, "the evidence should be included in a block"
    offender = result.evidence_detected[0].validator_address
    states = list(result.final_app_states.values())
    app = LedgerApp()
    assert len({app.state_hash(s) for s in states}) == 1
    state = states[0]
    assert isinstance(state, LedgerState)
    record = state.validators.get(offender)
    assert record is not None and record.jailed and record.tombstoned
    assert record.tokens == SELF_BOND - SELF_BOND * 5 // 100
    assert offender not in state.validator_sets[1]


def test_honest_ledger_network_under_faults() -> None:
    for seed in range(3):
        result = simulate(faulty_config(600 + seed, 4, 6, app_factory=ledger_factory))
        assert result.heights_decided >= 6
        hashes = {LedgerApp().state_hash(s) for s in result.final_app_states.values()
                  if isinstance(s, LedgerState) and s.height == 6}
        assert len(hashes) <= 1
