"""``qustream tx``: sign ledger transactions with a key file and submit them to ``ledger.tx``.

Amounts are given in tokens with up to six decimals (``1.5`` = 1,500,000 micro-units) and
converted exactly; rates in percent (``5`` = 5%). The nonce is read from the verified chain (the
account's next nonce after the last finalized block) unless ``--nonce`` is given, e.g. to queue
several transactions before the first is included.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import typer

from services.ledger.core import TxBody
from services.ledger.core.queries import next_nonce
from services.ledger.genesis_cli import GENESIS_OPTION, genesis_path

BodyBuilder = Callable[..., TxBody]

app = typer.Typer(help="Sign and submit staking and transfer transactions.",
                  no_args_is_help=True)

KEY_OPTION = typer.Option(..., "--key", "-k", help="Key file of the sending account.")
FEE_OPTION = typer.Option(None, "--fee", help="Fee in micro-units (default: the chain's minimum).")
NONCE_OPTION = typer.Option(None, "--nonce", help="Nonce (default: next nonce on the chain).")


class AmountError(typer.BadParameter):
    """An amount or rate on the command line is not a valid number of the right precision."""


def parse_tokens(text: str) -> int:
    """Tokens with up to 6 decimals -> integer micro-units, exactly (no floats)."""
    from services.ledger.core import MICRO

    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise AmountError(f"{text!r} is not a number") from exc
    if not value.is_finite():
        raise AmountError(f"{text!r} is not a finite number")
    micro = value * MICRO
    if value <= 0 or micro != micro.to_integral_value():
        raise AmountError(f"{text!r} must be positive with at most 6 decimals")
    return int(micro)


def parse_percent(text: str) -> int:
    """Percent -> parts per billion of the ledger's rate scale, exactly."""
    from services.ledger.core import RATE_ONE

    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise AmountError(f"{text!r} is not a number") from exc
    if not value.is_finite():
        raise AmountError(f"{text!r} is not a finite number")
    scaled = value * RATE_ONE / 100
    if not 0 <= value <= 100 or scaled != scaled.to_integral_value():
        raise AmountError(f"{text!r} must be a percentage between 0 and 100")
    return int(scaled)


def parse_address(text: str) -> bytes:
    try:
        address = bytes.fromhex(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r} is not a hex address") from exc
    if len(address) != 20:
        raise typer.BadParameter("an address is 20 bytes (40 hex characters)")
    return address


def _submit(key_file: Path, genesis: Path | None, fee: int | None, nonce: int | None,
            body: TxBody) -> None:
    from protocol.keys import SigningKey
    from services.ledger.core import encode_signed_tx, sign_tx
    from services.ledger.core.chain_spec import ChainSpec
    from services.ledger.submit import submit_tx
    from streams.chain_reader import catch_up
    from streams.settings import load_settings

    settings = load_settings()
    key = SigningKey.load(key_file)
    spec = ChainSpec.load(genesis_path(genesis))
    if nonce is None:
        follower = catch_up(settings, spec.follower())
        nonce = next_nonce(follower.chain.app_state, key.address)
    if fee is None:
        fee = spec.genesis.params.min_tx_fee
    signed = encode_signed_tx(sign_tx(key, spec.chain_id, nonce, fee, body))
    tx_hash = submit_tx(settings, signed)
    typer.echo(json.dumps({"tx_hash": tx_hash.hex(), "sender": key.public_key.address_hex,
                           "nonce": nonce, "fee": fee, "type": type(body).__name__}))


# The options every command takes besides its own, after them: who sends, on which chain.
SENDER_OPTIONS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
    for name, option, kind in (("key", KEY_OPTION, Path), ("genesis", GENESIS_OPTION, Path | None),
                               ("fee", FEE_OPTION, int | None), ("nonce", NONCE_OPTION, int | None))
]


def _transaction(name: str | None = None) -> Callable[[BodyBuilder], BodyBuilder]:
    """Register ``build`` as the command ``name``: its own options make the transaction body,
    and the command also takes ``SENDER_OPTIONS``, signs the body with them and submits it."""

    def register(build: BodyBuilder) -> BodyBuilder:
        @functools.wraps(build)
        def command(*, key: Path, genesis: Path | None, fee: int | None, nonce: int | None,
                    **options: Any) -> None:
            _submit(key, genesis, fee, nonce, build(**options))

        own = inspect.signature(build, eval_str=True).parameters.values()
        command.__signature__ = inspect.Signature([*own, *SENDER_OPTIONS])  # type: ignore[attr-defined]
        app.command(name)(command)
        return build

    return register


@_transaction()
def transfer(
    to: str = typer.Option(..., help="Recipient address (hex)."),
    amount: str = typer.Option(..., help="Tokens to send, e.g. 12.5."),
) -> TxBody:
    """Send tokens to another account."""
    from services.ledger.core import Transfer

    return Transfer(parse_address(to), parse_tokens(amount))


@_transaction()
def delegate(
    validator: str = typer.Option(..., help="Validator address (hex)."),
    amount: str = typer.Option(..., help="Tokens to bond."),
) -> TxBody:
    """Bond tokens to a validator; its voting power changes two heights after inclusion."""
    from services.ledger.core import Delegate

    return Delegate(parse_address(validator), parse_tokens(amount))


@_transaction()
def undelegate(
    validator: str = typer.Option(..., help="Validator address (hex)."),
    amount: str = typer.Option(..., help="Tokens to unbond (returned after the unbonding period)."),
) -> TxBody:
    """Start unbonding tokens from a validator; they stay slashable until they mature."""
    from services.ledger.core import Undelegate

    return Undelegate(parse_address(validator), parse_tokens(amount))


@_transaction("create-validator")
def create_validator(
    self_bond: str = typer.Option(..., help="Tokens the operator bonds to itself."),
    commission: str = typer.Option("5", help="Commission in percent."),
    max_commission: str = typer.Option("20", help="Maximum commission in percent, forever."),
    max_change: str = typer.Option("1", help="Maximum commission change per day, in percent."),
) -> TxBody:
    """Make the sending account a validator (its key becomes the consensus key)."""
    from services.ledger.core import CreateValidator

    return CreateValidator(parse_tokens(self_bond), parse_percent(commission),
                           parse_percent(max_commission), parse_percent(max_change))


@_transaction("edit-validator")
def edit_validator(
    commission: str = typer.Option(..., help="New commission in percent."),
) -> TxBody:
    """Change the validator's commission (within its maximum change rate)."""
    from services.ledger.core import EditValidator

    return EditValidator(parse_percent(commission))


@_transaction("withdraw-rewards")
def withdraw_rewards(
    validator: str = typer.Option(..., help="Validator address (hex)."),
) -> TxBody:
    """Withdraw rewards earned through a validator (and its commission, for its operator)."""
    from services.ledger.core import WithdrawRewards

    return WithdrawRewards(parse_address(validator))


@_transaction()
def unjail() -> TxBody:
    """Ask to rejoin the validator set after a downtime jail has expired."""
    from services.ledger.core import Unjail

    return Unjail()


@_transaction()
def vote(
    proposal: int = typer.Option(..., help="Proposal id."),
    option: str = typer.Option(..., help="yes, abstain, no or no_with_veto."),
) -> TxBody:
    """Vote on a governance proposal."""
    from services.ledger.core import VoteOption, VoteProposal

    try:
        choice = VoteOption[option.upper()]
    except KeyError as exc:
        raise typer.BadParameter(f"unknown vote option {option!r}") from exc
    return VoteProposal(proposal, choice)
