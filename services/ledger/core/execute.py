"""Executing one signed transaction against the state: ante checks, fee, then the body.

Order of the ante checks (any failure: ``AnteError``, state unchanged, no fee): size, decode,
chain id, signature, state-independent validity, minimum fee, nonce (reuse or gap), fee funds.
Then the fee moves to the fee pool and the nonce advances; the body runs on that state. If the
body raises a ``BodyError`` its effects are dropped but the fee and nonce stay (see ``errors``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import assert_never

from protocol.app import TxResult
from services.ledger.core import governance, staking
from services.ledger.core.distribution import settle_rewards, withdraw_commission
from services.ledger.core.errors import (
    AnteError,
    BadSignatureError,
    BodyError,
    FeeTooLowError,
    InsufficientDelegationError,
    InsufficientFeeFundsError,
    NonceGapError,
    NonceReusedError,
    SourceExistsError,
    TxTooLargeError,
    UnauthorizedError,
    WrongChainError,
)
from services.ledger.core.state import LedgerState, credit, debit, evolve, get_account
from services.ledger.core.tx import (
    CreateValidator,
    Delegate,
    EditValidator,
    PayForService,
    RegisterQrngSource,
    ServiceKind,
    SignatureCheck,
    SignedTx,
    SubmitProposal,
    Transfer,
    Tx,
    Undelegate,
    Unjail,
    VoteProposal,
    WithdrawRewards,
    decode_signed_tx,
)


@dataclass(frozen=True, slots=True)
class Admitted:
    """A transaction that passed the ante checks, with the state after fee and nonce."""

    tx: Tx
    state: LedgerState


def minimum_fee(state: LedgerState, size: int) -> int:
    return state.params.min_tx_fee + state.params.fee_per_byte * size


def admit(state: LedgerState, tx_bytes: bytes, check: SignatureCheck | None = None) -> Admitted:
    """Run the ante checks and charge the fee; raises ``AnteError`` (state untouched).

    ``check`` verifies the signature in place of ``PublicKey.verify`` (same answer, computed
    elsewhere: the audit verifies on worker processes ahead of re-execution)."""
    if len(tx_bytes) > state.params.max_tx_bytes:
        raise TxTooLargeError(
            f"transaction of {len(tx_bytes)} bytes exceeds {state.params.max_tx_bytes}"
        )
    signed: SignedTx = decode_signed_tx(tx_bytes)
    tx = signed.tx
    if tx.chain_id != state.chain_id:
        raise WrongChainError(f"transaction for chain {tx.chain_id!r}, this is {state.chain_id!r}")
    if not signed.verify_signature(check):
        raise BadSignatureError(f"signature of {tx.sender_address.hex()} does not verify")
    tx.check()
    needed = minimum_fee(state, len(tx_bytes))
    if tx.fee < needed:
        raise FeeTooLowError(f"fee {tx.fee} is below the minimum {needed}")
    sender = tx.sender_address
    account = get_account(state, sender)
    if tx.nonce < account.nonce:
        raise NonceReusedError(f"nonce {tx.nonce} already used; next is {account.nonce}")
    if tx.nonce > account.nonce:
        raise NonceGapError(f"nonce {tx.nonce} skips ahead; next is {account.nonce}")
    if account.balance < tx.fee:
        raise InsufficientFeeFundsError(f"balance {account.balance} cannot pay the fee {tx.fee}")
    charged = dataclasses.replace(account, balance=account.balance - tx.fee, nonce=tx.nonce + 1)
    state = evolve(
        state, accounts=state.accounts.set(sender, charged), fee_pool=state.fee_pool + tx.fee
    )
    return Admitted(tx, state)


def apply_body(state: LedgerState, tx: Tx, height: int) -> LedgerState:
    """The state after ``tx``'s body; raises ``BodyError`` if it does not apply."""
    sender = tx.sender_address
    body = tx.body
    match body:
        case Transfer():
            return credit(debit(state, sender, body.amount), body.to, body.amount)
        case CreateValidator():
            return staking.create_validator(state, tx.sender, body, height)
        case EditValidator():
            return staking.edit_validator(state, sender, body, height)
        case Delegate():
            return staking.delegate(state, sender, body, height)
        case Undelegate():
            return staking.undelegate(state, sender, body, height)
        case WithdrawRewards():
            return _withdraw(state, sender, body.validator)
        case Unjail():
            return staking.unjail(state, sender, height)
        case SubmitProposal():
            return governance.submit_proposal(state, sender, body, height)
        case VoteProposal():
            return governance.vote(state, sender, body, height)
        case RegisterQrngSource():
            return _register_source(state, sender, body)
        case PayForService():
            return _pay_for_service(state, sender, body)
        case _:
            assert_never(body)


def _withdraw(state: LedgerState, sender: bytes, validator: bytes) -> LedgerState:
    staking.get_validator(state, validator)
    is_operator = sender == validator
    if (sender, validator) not in state.delegations and not is_operator:
        raise InsufficientDelegationError(f"{sender.hex()} has no delegation to {validator.hex()}")
    state, _ = settle_rewards(state, sender, validator)
    if is_operator:
        state, _ = withdraw_commission(state, validator)
    return state


def _register_source(state: LedgerState, sender: bytes, body: RegisterQrngSource) -> LedgerState:
    authority = state.params.qrng_registry_authority
    if not authority or sender != authority:
        raise UnauthorizedError(
            f"{sender.hex()} is not the QRNG registry authority; use a governance proposal"
        )
    if body.source.source_id in state.qrng_sources:
        raise SourceExistsError(f"QRNG source {body.source.source_id!r} is already registered")
    return evolve(
        state, qrng_sources=state.qrng_sources.set(body.source.source_id, body.source)
    )


def _pay_for_service(state: LedgerState, sender: bytes, body: PayForService) -> LedgerState:
    price = (
        state.params.price_key_material_per_unit
        if body.service is ServiceKind.KEY_MATERIAL
        else state.params.price_storage_per_unit
    )
    amount = body.units * price
    state = debit(state, sender, amount)
    return evolve(state, fee_pool=state.fee_pool + amount)


def execute_tx(
    state: LedgerState, tx_bytes: bytes, height: int, check: SignatureCheck | None = None
) -> tuple[LedgerState, TxResult]:
    """Apply one transaction of block ``height``; never raises for bad input."""
    try:
        admitted = admit(state, tx_bytes, check)
    except AnteError as exc:
        return state, TxResult(code=exc.code, log=f"{type(exc).__name__}: {exc}")
    fee = admitted.tx.fee
    try:
        state = apply_body(admitted.state, admitted.tx, height)
    except BodyError as exc:
        return admitted.state, TxResult(
            code=exc.code, log=f"{type(exc).__name__}: {exc}", fee_charged=fee
        )
    return state, TxResult(code=0, log="ok", fee_charged=fee)
