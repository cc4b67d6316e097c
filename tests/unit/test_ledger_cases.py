"""One golden ledger vector per case: pre-state, one transaction, post-state.

Where ``test_ledger_vectors`` replays whole scenarios, each file under
``tests/vectors/ledger/cases/`` pins a single rule: the genesis and the setup blocks that make
the pre-state (with its hash and summary), the one block carrying the transaction under test
(its canonical bytes in hex), the expected result code and fee, and the post-state hash and
summary. Another implementation can take any case alone. Keys are Ed25519 from fixed seeds, so
regenerating reproduces the same bytes:

    .venv/bin/python -m tests.unit.test_ledger_cases      # rewrite the case files

Each case also states what must happen (``applied``, or refused with or without the fee), and
the generator refuses to write a case that does not, so a regenerated file cannot quietly
record a changed rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import pytest

from services.ledger import core as ledger
from services.ledger.core.genesis_file import genesis_from_json, genesis_state, genesis_to_json
from tests.support import vectors
from tests.unit.test_ledger_fixtures import (
    FEE,
    Chain,
    address,
    key,
    make_genesis,
    with_params,
)
from tests.unit.test_ledger_vectors import _request_from_json, _request_json, _summary

CASE_DIR = Path(__file__).resolve().parents[1] / "vectors" / "ledger" / "cases"

APPLIED = "applied"  # code 0, fee charged
REFUSED_WITH_FEE = "refused_with_fee"  # the body failed: the fee is still charged
REFUSED = "refused"  # the ante checks failed: nothing changes, no fee


@dataclass(frozen=True)
class Case:
    description: str
    outcome: str
    setup: Callable[[Chain], None]
    tx: Callable[[Chain], bytes]
    params: tuple[tuple[str, int | bytes], ...] = ()  # genesis parameters that differ


def _none(chain: Chain) -> None:
    del chain


def _later(chain: Chain) -> None:
    chain.blocks(5)


def _delegated(chain: Chain) -> None:
    chain.block([chain.tx(10, ledger.Delegate(address(1), 100 * ledger.MICRO))])


def _rewarded(chain: Chain) -> None:
    _delegated(chain)
    chain.blocks(3)


def _proposed(chain: Chain) -> None:
    change = ledger.ParameterChangeProposal(
        (ledger.ParameterChange("block_reward", 3 * ledger.MICRO),))
    chain.block([chain.tx(10, ledger.SubmitProposal(change, 10 * ledger.MICRO))])


def _signed_with_wrong_chain(chain: Chain) -> bytes:
    signer = key(10)
    return ledger.encode_signed_tx(ledger.sign_tx(signer, "another-chain", 0, FEE,
                                    ledger.Transfer(address(11), 1)))


NEW_SOURCE = ledger.QrngSource("qrng-case", key(91).public_key, False)

CASES: dict[str, Case] = {
    "transfer": Case("a transfer moves the amount and charges the fee", APPLIED, _none,
                     lambda c: c.tx(10, ledger.Transfer(address(11), 5 * ledger.MICRO))),
    "transfer_insufficient_funds": Case(
        "a transfer beyond the balance fails in the body: the fee is charged, nothing moves",
        REFUSED_WITH_FEE, _none, lambda c: c.tx(10, ledger.Transfer(address(11), 10**15))),
    "nonce_reused": Case("a nonce already used is refused before the fee", REFUSED, _delegated,
                         lambda c: c.tx(10, ledger.Transfer(address(11), 1), nonce=0)),
    "nonce_from_the_future": Case("a nonce beyond the next one is refused before the fee",
                                  REFUSED, _none,
                                  lambda c: c.tx(10, ledger.Transfer(address(11), 1), nonce=5)),
    "fee_unpayable": Case("an account that cannot pay the fee is refused", REFUSED, _none,
                          lambda c: c.tx(12, ledger.Transfer(address(10), 1))),
    "fee_below_minimum": Case("a fee below min_tx_fee is refused", REFUSED, _none,
                              lambda c: c.tx(10, ledger.Transfer(address(11), 1), fee=FEE - 1)),
    "signature_for_another_chain": Case(
        "a transaction signed for another chain id is refused", REFUSED, _none,
        _signed_with_wrong_chain),
    "create_validator": Case(
        "an account bonds itself as a validator", APPLIED, _none,
        lambda c: c.tx(10, ledger.CreateValidator(200 * ledger.MICRO, 50_000_000, 200_000_000,
                                                  10_000_000))),
    "create_validator_below_min_self_bond": Case(
        "a self-bond below min_self_bond fails in the body", REFUSED_WITH_FEE, _none,
        lambda c: c.tx(10, ledger.CreateValidator(ledger.MICRO, 50_000_000, 200_000_000,
                                                  10_000_000))),
    "edit_validator": Case("a validator changes its commission within the allowed step", APPLIED,
                           _later, lambda c: c.tx(1, ledger.EditValidator(150_000_000))),
    "edit_validator_too_soon": Case(
        "a commission change before a day of blocks has passed fails in the body",
        REFUSED_WITH_FEE, _none, lambda c: c.tx(1, ledger.EditValidator(150_000_000))),
    "delegate": Case("an account delegates to a validator", APPLIED, _none,
                     lambda c: c.tx(10, ledger.Delegate(address(1), 100 * ledger.MICRO))),
    "delegate_to_unknown_validator": Case(
        "a delegation to an address that is no validator fails in the body", REFUSED_WITH_FEE,
        _none, lambda c: c.tx(10, ledger.Delegate(address(11), 100 * ledger.MICRO))),
    "undelegate": Case("an undelegation starts unbonding", APPLIED, _delegated,
                       lambda c: c.tx(10, ledger.Undelegate(address(1), 40 * ledger.MICRO))),
    "withdraw_rewards": Case("a delegator withdraws its accrued rewards", APPLIED, _rewarded,
                             lambda c: c.tx(10, ledger.WithdrawRewards(address(1)))),
    "unjail_when_not_jailed": Case("unjailing a validator that is not jailed fails in the body",
                                   REFUSED_WITH_FEE, _none, lambda c: c.tx(1, ledger.Unjail())),
    "submit_proposal": Case(
        "a parameter-change proposal with its deposit opens for voting", APPLIED, _none,
        lambda c: c.tx(10, ledger.SubmitProposal(ledger.ParameterChangeProposal(
            (ledger.ParameterChange("block_reward", 3 * ledger.MICRO),)), 10 * ledger.MICRO))),
    "vote_proposal": Case("a validator votes on an open proposal", APPLIED, _proposed,
                          lambda c: c.tx(0, ledger.VoteProposal(1, ledger.VoteOption.YES))),
    "propose_qrng_registration": Case(
        "registering a QRNG source goes through governance", APPLIED, _none,
        lambda c: c.tx(10, ledger.SubmitProposal(ledger.QrngRegistryProposal((NEW_SOURCE,), ()),
                                          10 * ledger.MICRO))),
    "register_qrng_source": Case(
        "the registry authority registers a source directly", APPLIED, _none,
        lambda c: c.tx(10, ledger.RegisterQrngSource(NEW_SOURCE)),
        (("qrng_registry_authority", address(10)),)),
    "register_qrng_source_without_authority": Case(
        "only the registry authority may register a source directly", REFUSED_WITH_FEE, _none,
        lambda c: c.tx(10, ledger.RegisterQrngSource(NEW_SOURCE))),
    "pay_for_service": Case("a key-material payment records its commitment", APPLIED, _none,
                            lambda c: c.tx(10, ledger.PayForService(
                                ledger.ServiceKind.KEY_MATERIAL, 4,
                                                             bytes(range(32))))),
}


def _outcome(code: int, fee_charged: int) -> str:
    if code == 0:
        return APPLIED
    return REFUSED_WITH_FEE if fee_charged else REFUSED


def build_case(name: str) -> dict[str, Any]:
    case = CASES[name]
    genesis = with_params(make_genesis(), signed_blocks_window=5, **dict(case.params))
    chain = Chain(genesis)
    case.setup(chain)
    setup = list(chain.requests)
    pre_state, pre_hash = chain.state, ledger.state_hash(chain.state).hex()
    tx = case.tx(chain)
    request = chain.request([tx])
    response = chain.apply(request)
    (result,) = response.tx_results
    outcome = _outcome(result.code, result.fee_charged)
    if outcome != case.outcome:
        raise AssertionError(f"case {name}: expected {case.outcome}, the ledger gave {outcome} "
                             f"(code {result.code}: {result.log})")
    return {
        "description": case.description,
        "genesis": genesis_to_json(genesis),
        "setup_blocks": [_request_json(r) for r in setup],
        "pre_state_hash": pre_hash,
        "pre_state": _summary(pre_state),
        "tx": tx.hex(),
        "block": _request_json(request),
        "expected": {"outcome": outcome, "code": result.code, "fee_charged": result.fee_charged},
        "post_state_hash": response.app_hash.hex(),
        "post_state": _summary(chain.state),
    }


def write_cases() -> None:
    vectors.write(CASE_DIR, CASES, build_case)


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_replays_from_its_pre_state_to_its_post_state(name: str) -> None:
    case = vectors.load(CASE_DIR, name)
    app = ledger.LedgerApp()
    state = genesis_state(genesis_from_json(case["genesis"]))
    for block in case["setup_blocks"]:
        state, _ = app.finalize_block(state, _request_from_json(block))
    assert ledger.state_hash(state).hex() == case["pre_state_hash"]
    assert _summary(state) == case["pre_state"]
    request = _request_from_json(case["block"])
    assert request.txs == (bytes.fromhex(case["tx"]),)
    state, response = app.finalize_block(state, request)
    (result,) = response.tx_results
    assert {"outcome": _outcome(result.code, result.fee_charged), "code": result.code,
            "fee_charged": result.fee_charged} == case["expected"]
    assert response.app_hash.hex() == case["post_state_hash"]
    assert _summary(state) == case["post_state"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_files_are_what_the_generator_produces(name: str) -> None:
    recorded = vectors.load(CASE_DIR, name)
    assert vectors.generated(build_case, name) == recorded


def test_every_transaction_kind_has_a_case() -> None:
    covered = {type(ledger.decode_signed_tx(bytes.fromhex(
        vectors.load(CASE_DIR, name)["tx"])).tx.body) for name in CASES}
    assert set(get_args(ledger.TxBody)) <= covered


if __name__ == "__main__":
    write_cases()
