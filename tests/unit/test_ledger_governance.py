"""Governance: thresholds at their exact boundaries, deposits, execution, the QRNG registry."""

from __future__ import annotations

import pytest

from services.ledger.core import (
    MICRO,
    RATE_ONE,
    Delegate,
    ParameterChange,
    ParameterChangeProposal,
    QrngRegistryProposal,
    QrngSource,
    RegisterQrngSource,
    SubmitProposal,
    VoteOption,
    VoteProposal,
)
from services.ledger.core import errors as E
from services.ledger.core.governance import decide
from services.ledger.core.queries import balance, proposal, supply_held
from services.ledger.core.state import ProposalStatus, TallyResult
from tests.unit.test_ledger_fixtures import (
    TEST_PARAMS,
    Chain,
    address,
    key,
    make_genesis,
    with_params,
)

Y, A, N, V = VoteOption.YES, VoteOption.ABSTAIN, VoteOption.NO, VoteOption.NO_WITH_VETO
DEPOSIT = 10 * MICRO
CHANGE = ParameterChangeProposal((ParameterChange("block_reward", 7 * MICRO),))


def _decide(tally: TallyResult, quorum: int, threshold: int, veto: int) -> ProposalStatus:
    return decide(tally, quorum, threshold, veto)


class TestDecideBoundaries:
    """``decide`` with rates in parts per billion, at and next to each boundary."""

    def test_exactly_at_quorum_counts_as_quorum(self) -> None:
        tally = TallyResult(yes=250, abstain=0, no=0, no_with_veto=0, bonded=1000)
        assert _decide(tally, RATE_ONE // 4, RATE_ONE // 2, RATE_ONE // 3) is (
            ProposalStatus.PASSED
        )
        assert _decide(tally, RATE_ONE // 4 + 1, RATE_ONE // 2, RATE_ONE // 3) is (
            ProposalStatus.FAILED_QUORUM
        )

    def test_exactly_at_threshold_fails_one_more_passes(self) -> None:
        at = TallyResult(yes=500, abstain=300, no=500, no_with_veto=0, bonded=2000)
        above = TallyResult(yes=501, abstain=300, no=499, no_with_veto=0, bonded=2000)
        assert _decide(at, 1, RATE_ONE // 2, RATE_ONE // 3) is ProposalStatus.REJECTED
        assert _decide(above, 1, RATE_ONE // 2, RATE_ONE // 3) is ProposalStatus.PASSED

    def test_abstain_counts_for_quorum_not_for_threshold(self) -> None:
        tally = TallyResult(yes=10, abstain=990, no=9, no_with_veto=0, bonded=1000)
        assert _decide(tally, RATE_ONE // 2, RATE_ONE // 2, RATE_ONE // 3) is (
            ProposalStatus.PASSED
        )
        only_abstain = TallyResult(yes=0, abstain=1000, no=0, no_with_veto=0, bonded=1000)
        assert _decide(only_abstain, 1, RATE_ONE // 2, RATE_ONE // 3) is ProposalStatus.REJECTED

    def test_exactly_at_veto_threshold_is_not_a_veto(self) -> None:
        at = TallyResult(yes=600, abstain=100, no=0, no_with_veto=300, bonded=1000)
        above = TallyResult(yes=599, abstain=100, no=0, no_with_veto=301, bonded=1000)
        veto = 300_000_000  # 30% of all votes
        assert _decide(at, 1, RATE_ONE // 2, veto) is ProposalStatus.PASSED
        assert _decide(above, 1, RATE_ONE // 2, veto) is ProposalStatus.VETOED

    def test_nobody_bonded_fails_quorum(self) -> None:
        tally = TallyResult(yes=0, abstain=0, no=0, no_with_veto=0, bonded=0)
        assert _decide(tally, 1, 1, 1) is ProposalStatus.FAILED_QUORUM


def _run(
    votes: dict[int, VoteOption], content: object = CHANGE, **params: int
) -> tuple[Chain, ProposalStatus]:
    """Validator i votes votes[i] (4 validators with equal stake); returns the final status."""
    chain = Chain(with_params(make_genesis(), **params))
    chain.block()
    chain.block([chain.tx(10, SubmitProposal(content, DEPOSIT))])  # type: ignore[arg-type]
    assert chain.responses[-1].tx_results[0].code == 0, chain.responses[-1].tx_results[0].log
    chain.block([chain.tx(voter, VoteProposal(1, option)) for voter, option in votes.items()])
    assert all(r.code == 0 for r in chain.responses[-1].tx_results)
    while chain.state.height < 2 + TEST_PARAMS.voting_period_blocks:
        chain.block()
    found = proposal(chain.state, 1)
    assert found is not None
    assert supply_held(chain.state) == chain.state.supply.expected
    return chain, found.status


def test_one_quarter_of_stake_is_exactly_a_25_percent_quorum() -> None:
    chain, status = _run({0: Y}, quorum_rate=RATE_ONE // 4)
    assert status is ProposalStatus.PASSED
    assert chain.state.params.block_reward == 7 * MICRO
    _, status = _run({0: Y}, quorum_rate=RATE_ONE // 4 + 1)
    assert status is ProposalStatus.FAILED_QUORUM


def test_half_yes_is_rejected_and_the_deposit_refunded() -> None:
    chain, status = _run({0: Y, 1: Y, 2: N, 3: N})
    assert status is ProposalStatus.REJECTED
    assert chain.state.params.block_reward == TEST_PARAMS.block_reward
    assert chain.state.supply.burned == 0
    assert balance(chain.state, address(10)) == 1_000 * MICRO - 1_000  # only the fee is gone


def test_three_quarters_yes_passes() -> None:
    _, status = _run({0: Y, 1: Y, 2: Y, 3: N})
    assert status is ProposalStatus.PASSED


@pytest.mark.parametrize(
    ("veto_rate", "expected"),
    [(RATE_ONE // 4, ProposalStatus.PASSED), (RATE_ONE // 4 - 1, ProposalStatus.VETOED)],
)
def test_veto_boundary_and_burned_deposit(veto_rate: int, expected: ProposalStatus) -> None:
    chain, status = _run({0: Y, 1: Y, 2: Y, 3: V}, veto_threshold_rate=veto_rate)
    assert status is expected
    burned = DEPOSIT if expected is ProposalStatus.VETOED else 0
    assert chain.state.supply.burned == burned


def test_failed_quorum_burns_the_deposit() -> None:
    chain, status = _run({})
    assert status is ProposalStatus.FAILED_QUORUM
    assert chain.state.supply.burned == DEPOSIT


def test_delegator_vote_overrides_its_validators_vote() -> None:
    chain = Chain(make_genesis())
    chain.block([chain.tx(10, Delegate(address(0), 1_000 * MICRO - 10_000))])
    chain.block([chain.tx(11, SubmitProposal(CHANGE, DEPOSIT))])
    # Validator 0 (1000 own + ~1000 delegated) votes yes, its delegator votes no: 1000 vs 1000.
    chain.block([chain.tx(0, VoteProposal(1, Y)), chain.tx(10, VoteProposal(1, N))])
    while chain.state.height < 2 + TEST_PARAMS.voting_period_blocks:
        chain.block()
    found = proposal(chain.state, 1)
    assert found is not None and found.tally is not None
    assert found.tally.yes == 1_000 * MICRO
    assert found.tally.no == 1_000 * MICRO - 10_000
    assert found.status is ProposalStatus.PASSED  # yes is strictly more than half


def test_registry_proposal_registers_and_removes_sources() -> None:
    new = QrngSource("qrng-new", key(95).public_key, False)
    content = QrngRegistryProposal((new,), ("qrng-0",))
    chain, status = _run({0: Y, 1: Y, 2: Y}, content=content)
    assert status is ProposalStatus.PASSED
    assert chain.state.qrng_sources.keys() == ["qrng-new"]


def test_registry_authority_registers_directly() -> None:
    chain = Chain(with_params(make_genesis(), qrng_registry_authority=address(11)))
    source = QrngSource("qrng-direct", key(96).public_key, True)
    chain.block(
        [
            chain.tx(11, RegisterQrngSource(source)),
            chain.tx(11, RegisterQrngSource(source)),
            chain.tx(10, RegisterQrngSource(QrngSource("x", key(97).public_key, True))),
        ]
    )
    codes = [r.code for r in chain.responses[-1].tx_results]
    assert codes == [0, E.SourceExistsError.code, E.UnauthorizedError.code]
    assert chain.state.qrng_sources.get("qrng-direct") == source


def test_votes_after_the_end_are_rejected() -> None:
    chain, _ = _run({0: Y, 1: Y, 2: Y})
    chain.block([chain.tx(3, VoteProposal(1, N))])
    assert chain.responses[-1].tx_results[0].code == E.VotingClosedError.code


def test_passed_change_that_no_longer_applies_fails_execution() -> None:
    # Both proposals are valid when submitted; the second removes a source the first removed.
    content = QrngRegistryProposal((), ("qrng-0",))
    chain = Chain(make_genesis())
    chain.block()
    chain.block(
        [
            chain.tx(10, SubmitProposal(content, DEPOSIT)),
            chain.tx(11, SubmitProposal(content, DEPOSIT)),
        ]
    )
    chain.block([chain.tx(v, VoteProposal(p, Y)) for v in range(4) for p in (1, 2)])
    while chain.state.height < 2 + TEST_PARAMS.voting_period_blocks:
        chain.block()
    statuses = [proposal(chain.state, i).status for i in (1, 2)]  # type: ignore[union-attr]
    assert statuses == [ProposalStatus.PASSED, ProposalStatus.FAILED_EXECUTION]
    assert chain.state.supply.burned == 0
    assert supply_held(chain.state) == chain.state.supply.expected
