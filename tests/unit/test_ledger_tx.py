"""Transaction encoding, decoding, and the typed rejection of every bad transaction."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.keys import Algorithm
from services.ledger.core import (
    MICRO,
    CreateValidator,
    Delegate,
    EditValidator,
    ParameterChange,
    ParameterChangeProposal,
    PayForService,
    QrngRegistryProposal,
    QrngSource,
    RegisterQrngSource,
    ServiceKind,
    SubmitProposal,
    Transfer,
    TxDecodeError,
    Undelegate,
    Unjail,
    VoteOption,
    VoteProposal,
    WithdrawRewards,
    decode_signed_tx,
    encode_signed_tx,
    sign_tx,
    state_hash,
)
from services.ledger.core import errors as E
from services.ledger.core.queries import balance, next_nonce
from tests.unit.test_ledger_fixtures import CHAIN_ID, FEE, Chain, address, key, make_genesis

BODIES = [
    Transfer(address(1), 5),
    CreateValidator(100 * MICRO, 1, 2, 1),
    EditValidator(7),
    Delegate(address(2), 9),
    Undelegate(address(2), 9),
    WithdrawRewards(address(3)),
    Unjail(),
    SubmitProposal(
        ParameterChangeProposal(
            (ParameterChange("block_reward", 5), ParameterChange("qrng_registry_authority", b""))
        ),
        10,
    ),
    SubmitProposal(
        QrngRegistryProposal((QrngSource("s-1", key(5).public_key, False),), ("old",)), 11
    ),
    VoteProposal(1, VoteOption.NO_WITH_VETO),
    RegisterQrngSource(QrngSource("s-2", key(6).public_key, True)),
    PayForService(ServiceKind.STORAGE, 3, bytes(range(32))),
]


@pytest.mark.parametrize("body", BODIES, ids=lambda body: type(body).__name__)
def test_every_body_round_trips(body: object) -> None:
    signed = sign_tx(key(1), CHAIN_ID, 3, FEE, body)  # type: ignore[arg-type]
    encoded = encode_signed_tx(signed)
    decoded = decode_signed_tx(encoded)
    assert decoded == signed
    assert encode_signed_tx(decoded) == encoded
    assert decoded.verify_signature()


def test_ml_dsa_transaction_round_trips_and_verifies() -> None:
    signer = key(1, Algorithm.ML_DSA_65)
    signed = sign_tx(signer, CHAIN_ID, 0, FEE, Transfer(address(2), 1))
    decoded = decode_signed_tx(encode_signed_tx(signed))
    assert decoded.verify_signature()
    assert decoded.tx.sender_address == signer.address


@given(cut=st.integers(min_value=0, max_value=200), extra=st.binary(min_size=1, max_size=4))
@settings(max_examples=60, deadline=None)
def test_truncated_or_extended_bytes_are_decode_errors(cut: int, extra: bytes) -> None:
    encoded = encode_signed_tx(sign_tx(key(1), CHAIN_ID, 0, FEE, Transfer(address(2), 1)))
    with pytest.raises(TxDecodeError):
        decode_signed_tx(encoded[: min(cut, len(encoded) - 1)])
    with pytest.raises(TxDecodeError):
        decode_signed_tx(encoded + extra)


@given(data=st.binary(max_size=300))
@settings(max_examples=100, deadline=None)
def test_arbitrary_bytes_never_crash_the_decoder(data: bytes) -> None:
    with contextlib.suppress(TxDecodeError):
        decode_signed_tx(data)


def test_unknown_body_type_is_a_decode_error() -> None:
    encoded = encode_signed_tx(sign_tx(key(1), CHAIN_ID, 0, FEE, Transfer(address(2), 1)))
    tampered = encoded.replace(b"QuStream/v1/Transfer", b"QuStream/v1/Transfez")
    with pytest.raises(TxDecodeError, match="unknown message type"):
        decode_signed_tx(tampered)


# --- rejections ----------------------------------------------------------------------------


@pytest.fixture
def chain() -> Chain:
    c = Chain(make_genesis())
    c.block()
    return c


def _ante_case(chain: Chain, tx: bytes, error: type[E.LedgerError]) -> None:
    sender_balance = balance(chain.state, address(10))
    nonce = next_nonce(chain.state, address(10))
    assert chain.app.check_tx(chain.state, tx).code == error.code
    request = chain.request([tx])
    reference, _ = chain.app.finalize_block(chain.state, dataclasses.replace(request, txs=()))
    chain.apply(request)
    result = chain.responses[-1].tx_results[0]
    assert (result.code, result.fee_charged) == (error.code, 0)
    assert balance(chain.state, address(10)) == sender_balance
    assert next_nonce(chain.state, address(10)) == nonce
    # An inadmissible transaction leaves exactly the state of an empty block.
    assert state_hash(chain.state) == state_hash(reference)


def test_wrong_chain_id(chain: Chain) -> None:
    tx = encode_signed_tx(sign_tx(key(10), "other-chain", 0, FEE, Transfer(address(11), 1)))
    _ante_case(chain, tx, E.WrongChainError)


def test_bad_signature(chain: Chain) -> None:
    signed = sign_tx(key(10), CHAIN_ID, 0, FEE, Transfer(address(11), 1))
    forged = encode_signed_tx(type(signed)(signed.tx, bytes(len(signed.signature))))
    _ante_case(chain, forged, E.BadSignatureError)


def test_signature_by_another_key(chain: Chain) -> None:
    signed = sign_tx(key(10), CHAIN_ID, 0, FEE, Transfer(address(11), 1))
    other = key(11).sign(signed.tx.sign_bytes())
    _ante_case(chain, encode_signed_tx(type(signed)(signed.tx, other)), E.BadSignatureError)


def test_malformed_bytes(chain: Chain) -> None:
    _ante_case(chain, b"\x00\x01garbage", E.TxDecodeError)


def test_nonce_gap(chain: Chain) -> None:
    _ante_case(chain, chain.tx(10, Transfer(address(11), 1), nonce=1), E.NonceGapError)


def test_fee_below_minimum(chain: Chain) -> None:
    _ante_case(chain, chain.tx(10, Transfer(address(11), 1), fee=FEE - 1), E.FeeTooLowError)


def test_zero_amount_is_invalid(chain: Chain) -> None:
    _ante_case(chain, chain.tx(10, Transfer(address(11), 0)), E.InvalidTxError)


def test_fee_unaffordable(chain: Chain) -> None:
    poor = Chain(make_genesis(accounts=[(10, FEE - 1)]))
    poor.block()
    tx = poor.tx(10, Transfer(address(11), 1))
    assert poor.app.check_tx(poor.state, tx).code == E.InsufficientFeeFundsError.code
    poor.block([tx])
    assert poor.responses[-1].tx_results[0].code == E.InsufficientFeeFundsError.code
    assert balance(poor.state, address(10)) == FEE - 1


def test_oversized_transaction(chain: Chain) -> None:
    big = encode_signed_tx(sign_tx(key(10), CHAIN_ID, 0, FEE, Transfer(address(11), 1)))
    big = big + bytes(chain.state.params.max_tx_bytes)
    _ante_case(chain, big, E.TxTooLargeError)


def test_nonce_reuse_is_rejected_after_the_first_use(chain: Chain) -> None:
    first = chain.tx(10, Transfer(address(11), 1), nonce=0)
    chain.block([first])
    assert chain.responses[-1].tx_results[0].code == 0
    _ante_case(chain, first, E.NonceReusedError)


def test_same_nonce_twice_in_one_block(chain: Chain) -> None:
    tx = chain.tx(10, Transfer(address(11), 1), nonce=0)
    chain.block([tx, tx])
    assert [r.code for r in chain.responses[-1].tx_results] == [0, E.NonceReusedError.code]


def _body_case(chain: Chain, sender: int, body: object, error: type[E.BodyError]) -> None:
    """A failing body charges the fee, consumes the nonce, and does nothing else."""
    sender_address = key(sender).address
    balance_before = balance(chain.state, sender_address)
    nonce = next_nonce(chain.state, sender_address)
    chain.block([chain.tx(sender, body)])  # type: ignore[arg-type]
    result = chain.responses[-1].tx_results[0]
    assert (result.code, result.fee_charged) == (error.code, FEE), result.log
    assert balance(chain.state, sender_address) == balance_before - FEE
    assert next_nonce(chain.state, sender_address) == nonce + 1


def test_insufficient_funds(chain: Chain) -> None:
    _body_case(chain, 10, Transfer(address(11), 10**15), E.InsufficientFundsError)


def test_below_minimum_self_bond(chain: Chain) -> None:
    body = CreateValidator(MICRO, 0, 0, 0)
    _body_case(chain, 10, body, E.BelowMinimumSelfBondError)


def test_validator_exists(chain: Chain) -> None:
    _body_case(chain, 0, CreateValidator(100 * MICRO, 0, 0, 0), E.ValidatorExistsError)


def test_unknown_validator(chain: Chain) -> None:
    _body_case(chain, 10, Delegate(address(55), MICRO), E.UnknownValidatorError)


def test_unjail_when_not_jailed(chain: Chain) -> None:
    _body_case(chain, 0, Unjail(), E.NotJailedError)


def test_undelegate_without_delegation(chain: Chain) -> None:
    _body_case(chain, 10, Undelegate(address(0), MICRO), E.InsufficientDelegationError)


def test_undelegate_more_than_delegated(chain: Chain) -> None:
    _body_case(chain, 0, Undelegate(address(0), 10**13), E.InsufficientDelegationError)


def test_vote_on_unknown_proposal(chain: Chain) -> None:
    _body_case(chain, 10, VoteProposal(7, VoteOption.YES), E.UnknownProposalError)


def test_deposit_too_low(chain: Chain) -> None:
    body = SubmitProposal(ParameterChangeProposal((ParameterChange("block_reward", 1),)), 1)
    _body_case(chain, 10, body, E.DepositTooLowError)


def test_invalid_parameter_proposal(chain: Chain) -> None:
    content = ParameterChangeProposal((ParameterChange("community_tax_rate", 2 * 10**9),))
    _body_case(chain, 10, SubmitProposal(content, 10 * MICRO), E.InvalidProposalError)


def test_register_source_without_authority(chain: Chain) -> None:
    body = RegisterQrngSource(QrngSource("q-9", key(91).public_key, False))
    _body_case(chain, 10, body, E.UnauthorizedError)


def test_commission_edit_too_early(chain: Chain) -> None:
    _body_case(chain, 0, EditValidator(100_000_001), E.CommissionChangeError)


def test_pay_for_service_moves_the_price_into_the_fee_pool(chain: Chain) -> None:
    before = balance(chain.state, address(10))
    chain.block([chain.tx(10, PayForService(ServiceKind.KEY_MATERIAL, 3, bytes(32)))])
    assert chain.responses[-1].tx_results[0].code == 0
    price = 3 * chain.state.params.price_key_material_per_unit
    assert balance(chain.state, address(10)) == before - FEE - price
    assert chain.state.fee_pool == FEE + price


def test_check_tx_accepts_a_good_transaction(chain: Chain) -> None:
    result = chain.app.check_tx(chain.state, chain.tx(10, Transfer(address(11), 1)))
    assert (result.code, result.fee_charged) == (0, FEE)
