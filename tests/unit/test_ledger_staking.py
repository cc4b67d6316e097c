"""Staking: validators, delegation, unbonding, commission, jail, the set at H+2, slashing."""

from __future__ import annotations

from protocol.app import Misbehavior, MisbehaviorKind
from services.ledger.core import MICRO, CreateValidator, Delegate, EditValidator, Undelegate, Unjail
from services.ledger.core import errors as E
from services.ledger.core.queries import (
    balance,
    delegation_value,
    supply_held,
    unbonding_entries,
    validator,
)
from services.ledger.core.state import JAILED_FOREVER
from tests.unit.test_ledger_fixtures import TEST_PARAMS, Chain, address, make_genesis, with_params


def _codes(chain: Chain) -> list[int]:
    return [result.code for result in chain.responses[-1].tx_results]


def _powers(chain: Chain, height: int) -> dict[bytes, int]:
    return {v.address: v.power for v in chain.app.validator_set(chain.state, height).validators}


def test_genesis_sets_govern_heights_one_and_two() -> None:
    chain = Chain(make_genesis())
    assert _powers(chain, 1) == _powers(chain, 2) == {address(i): 1000 for i in range(4)}


def test_delegation_changes_the_set_two_heights_later() -> None:
    chain = Chain(make_genesis())
    chain.block()
    chain.block([chain.tx(10, Delegate(address(0), 500 * MICRO))])  # height 2
    assert _powers(chain, 3)[address(0)] == 1000
    assert _powers(chain, 4)[address(0)] == 1500
    chain.block()
    assert _powers(chain, 4)[address(0)] == 1500


def test_create_validator_joins_at_h_plus_two_and_top_n_applies() -> None:
    chain = Chain(with_params(make_genesis(accounts=[(10, 5_000 * MICRO)]), max_validators=4))
    chain.block()
    body = CreateValidator(2_000 * MICRO, 0, 100_000_000, 10_000_000)
    chain.block([chain.tx(10, body)])
    assert _codes(chain) == [0]
    powers = _powers(chain, chain.state.height + 2)
    assert powers[address(10)] == 2000
    assert len(powers) == 4  # the newcomer displaced one of the equal-power genesis validators
    dropped = [address(i) for i in range(4) if address(i) not in powers]
    assert dropped == [max(address(i) for i in range(4))]  # ties broken by lowest address


def test_unbonding_pays_out_at_the_end_of_the_completion_block() -> None:
    chain = Chain(make_genesis())
    chain.block()
    chain.block([chain.tx(10, Delegate(address(1), 300 * MICRO))])
    chain.block([chain.tx(10, Undelegate(address(1), 100 * MICRO))])
    created = chain.state.height
    entries = unbonding_entries(chain.state, address(10))
    assert [(v, e.balance, e.completion_height) for v, e in entries] == [
        (address(1), 100 * MICRO, created + TEST_PARAMS.unbonding_period_blocks)
    ]
    while chain.state.height < created + TEST_PARAMS.unbonding_period_blocks - 1:
        chain.block()
    before = balance(chain.state, address(10))
    chain.block()  # the completion height
    assert unbonding_entries(chain.state, address(10)) == ()
    assert balance(chain.state, address(10)) == before + 100 * MICRO
    assert supply_held(chain.state) == chain.state.supply.expected


def test_unbonding_entries_are_bounded() -> None:
    chain = Chain(make_genesis())
    chain.block([chain.tx(10, Delegate(address(1), 100 * MICRO))])
    txs = [chain.tx(10, Undelegate(address(1), MICRO)) for _ in range(8)]
    chain.block(txs)
    assert _codes(chain) == [0] * 7 + [E.TooManyUnbondingEntriesError.code]


def test_undelegating_everything_returns_every_token() -> None:
    chain = Chain(make_genesis())
    chain.block([chain.tx(10, Delegate(address(1), 100 * MICRO))])
    value = delegation_value(chain.state, address(10), address(1))
    chain.block([chain.tx(10, Undelegate(address(1), value))])
    assert _codes(chain) == [0]
    assert delegation_value(chain.state, address(10), address(1)) == 0


def test_operator_below_minimum_self_bond_is_jailed_and_can_unjail_after_rebonding() -> None:
    chain = Chain(make_genesis())
    chain.block([chain.tx(1, Undelegate(address(1), 950 * MICRO))])
    record = validator(chain.state, address(1))
    assert record is not None and record.jailed
    assert address(1) not in _powers(chain, chain.state.height + 2)
    chain.block([chain.tx(1, Unjail())])
    assert _codes(chain) == [E.BelowMinimumSelfBondError.code]
    chain.block([chain.tx(1, Delegate(address(1), 60 * MICRO)), chain.tx(1, Unjail())])
    assert _codes(chain) == [0, 0]
    assert address(1) in _powers(chain, chain.state.height + 2)


def test_commission_edits_respect_max_change_rate_and_daily_limit() -> None:
    chain = Chain(make_genesis())  # commission 10%, max 50%, max change 10% per day
    chain.blocks(TEST_PARAMS.blocks_per_day)
    chain.block(
        [
            chain.tx(0, EditValidator(200_000_001)),  # change > 10%
            chain.tx(0, EditValidator(200_000_000)),  # exactly 10%: accepted
            chain.tx(0, EditValidator(250_000_000)),  # a second change the same day
        ]
    )
    assert _codes(chain) == [
        E.CommissionChangeError.code,
        0,
        E.CommissionChangeError.code,
    ]
    record = validator(chain.state, address(0))
    assert record is not None and record.commission_rate == 200_000_000


# --- slashing ------------------------------------------------------------------------------


def _double_sign(offender: int, height: int, total_power: int = 4000) -> Misbehavior:
    return Misbehavior(MisbehaviorKind.DUPLICATE_VOTE, address(offender), height, 0, total_power)


def test_double_sign_slashes_five_percent_tombstones_and_jails_forever() -> None:
    chain = Chain(make_genesis())
    chain.blocks(3)
    tokens = validator(chain.state, address(2)).tokens  # type: ignore[union-attr]
    chain.block(misbehavior=[_double_sign(2, 2)])
    record = validator(chain.state, address(2))
    assert record is not None
    assert record.tokens == tokens - tokens * 5 // 100
    assert record.tombstoned and record.jailed and record.jailed_until == JAILED_FOREVER
    assert chain.state.supply.slashed == tokens * 5 // 100
    assert address(2) not in _powers(chain, chain.state.height + 2)
    chain.block([chain.tx(2, Unjail())], misbehavior=[_double_sign(2, 3)])
    assert _codes(chain) == [E.ValidatorTombstonedError.code]
    assert chain.state.supply.slashed == tokens * 5 // 100  # punished once
    chain.block([chain.tx(10, Delegate(address(2), MICRO))])
    assert _codes(chain) == [E.ValidatorTombstonedError.code]
    assert supply_held(chain.state) == chain.state.supply.expected


def test_unbonding_stake_remains_slashable_but_earlier_unbonding_is_not() -> None:
    chain = Chain(make_genesis())
    chain.block([chain.tx(10, Delegate(address(1), 400 * MICRO))])  # height 1
    chain.block([chain.tx(10, Undelegate(address(1), 100 * MICRO))])  # height 2: before offence
    chain.block()  # height 3: the offence
    chain.block([chain.tx(10, Undelegate(address(1), 200 * MICRO))])  # height 4: after it
    chain.block(misbehavior=[_double_sign(1, 3)])  # evidence included at height 5
    entries = {e.creation_height: e for _, e in unbonding_entries(chain.state, address(10))}
    assert entries[2].balance == 100 * MICRO  # already unbonding at the offence: untouched
    assert entries[4].balance == 200 * MICRO - 10 * MICRO  # bonded at the offence: 5% cut
    assert supply_held(chain.state) == chain.state.supply.expected
    # The slashed entry pays out what is left of it.
    while chain.state.height < 4 + TEST_PARAMS.unbonding_period_blocks:
        chain.block()
    assert unbonding_entries(chain.state, address(10)) == ()


def test_evidence_older_than_the_maximum_age_is_ignored() -> None:
    chain = Chain(make_genesis())
    chain.blocks(TEST_PARAMS.max_evidence_age_blocks + 2)
    chain.block(misbehavior=[_double_sign(1, 1)])
    assert chain.state.supply.slashed == 0
    assert not validator(chain.state, address(1)).jailed  # type: ignore[union-attr]


def test_downtime_jails_after_the_window_and_unjail_waits_for_the_jail_period() -> None:
    params = TEST_PARAMS  # window 10, min signed 50%: jailed when more than 5 of 10 missed
    chain = Chain(make_genesis())
    chain.block()
    tokens = validator(chain.state, address(3)).tokens  # type: ignore[union-attr]
    observed = 0
    while not validator(chain.state, address(3)).jailed:  # type: ignore[union-attr]
        chain.block(absent=[address(3)])
        observed += 1
        assert observed <= params.signed_blocks_window
    assert observed == params.signed_blocks_window
    jailed_at = chain.state.height
    record = validator(chain.state, address(3))
    assert record is not None and not record.tombstoned
    cut = tokens * params.slash_fraction_downtime_rate // 10**9
    assert record.tokens == tokens - cut and chain.state.supply.slashed == cut
    assert record.jailed_until == jailed_at + params.downtime_jail_blocks
    chain.block([chain.tx(3, Unjail())], absent=[address(3)])
    assert _codes(chain) == [E.StillJailedError.code]
    while chain.state.height + 1 < record.jailed_until:
        chain.block(absent=[address(3)])
    chain.block([chain.tx(3, Unjail())])
    assert _codes(chain) == [0]
    assert address(3) in _powers(chain, chain.state.height + 2)


def test_missing_fewer_than_the_limit_is_not_punished() -> None:
    chain = Chain(make_genesis())
    chain.block()
    for height in range(40):
        chain.block(absent=[address(3)] if height % 2 == 0 else [])  # exactly 50% signed
    assert not validator(chain.state, address(3)).jailed  # type: ignore[union-attr]
    assert chain.state.supply.slashed == 0
