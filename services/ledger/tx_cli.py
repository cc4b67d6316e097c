"""``qustream tx``: sign ledger transactions with a key file and submit them to ``ledger.tx``.

Amounts are given in tokens with up to six decimals (``1.5`` = 1,500,000 micro-units) and
converted exactly; rates in percent (``5`` = 5%). The nonce is read from the verified chain (the
account's next nonce after the last finalized block) unless ``--nonce`` is given, e.g. to queue
several transactions before the first is included.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import typer

from services.ledger.core.queries import next_nonce
from services.ledger.genesis_cli import GENESIS_OPTION, genesis_path

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
            body: Any) -> None:
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


@app.command()
def transfer(
    to: str = typer.Option(..., help="Recipient address (hex)."),
    amount: str = typer.Option(..., help="Tokens to send, e.g. 12.5."),
    key: Path = KEY_OPTION, genesis: Path | None = GENESIS_OPTION,
    fee: int | None = FEE_OPTION, nonce: int | None = NONCE_OPTION,
) -> None:
    """Send tokens to another account."""
    from services.ledger.core import Transfer

    _submit(key, genesis, fee, nonce, Transfer(parse_address(to), parse_tokens(amount)))


@app.command()
def delegate(
    validator: str = typer.Option(..., help="Validator address (hex)."),
    amount: str = typer.Option(..., help="Tokens to bond."),
    key: Path = KEY_OPTION, genesis: Path | None = GENESIS_OPTION,
    fee: int | None = FEE_OPTION, nonce: int | None = NONCE_OPTION,
) -> None:
    """Bond tokens to a validator; its voting power changes two heights after inclusion."""
    from services.ledger.core import Delegate

    _submit(key, genesis, fee, nonce, Delegate(parse_address(validator), parse_tokens(amount)))


@app.command()
def undelegate(
    validator: str = typer.Option(..., help="Validator address (hex)."),
    amount: str = typer.Option(..., help="Tokens to unbond (returned after the unbonding period)."),
    key: Path = KEY_OPTION, genesis: Path | None = GENESIS_OPTION,
    fee: int | None = FEE_OPTION, nonce: int | None = NONCE_OPTION,
) -> None:
    """Start unbonding tokens from a validator; they stay slashable until they mature."""
    from services.ledger.core import Undelegate

    _submit(key, genesis, fee, nonce, Undelegate(parse_address(validator), parse_tokens(amount)))


@app.command("create-validator")
def create_validator(
    self_bond: str = typer.Option(..., help="Tokens the operator bonds to itself."),
    commission: str = typer.Option("5", help="Commission in percent."),
    max_commission: str = typer.Option("20", help="Maximum commission in percent, forever."),
    max_change: str = typer.Option("1", help="Maximum commission change per day, in percent."),
    key: Path = KEY_OPTION, genesis: Path | None = GENESIS_OPTION,
    fee: int | None = FEE_OPTION, nonce: int | None = NONCE_OPTION,
) -> None:
    """Make the sending account a validator (its key becomes the consensus key)."""
    from services.ledger.core import CreateValidator

    body = CreateValidator(parse_tokens(self_bond), parse_percent(commission),
                           parse_percent(max_commission), parse_percent(max_change))
    _submit(key, genesis, fee, nonce, body)


@app.command("edit-validator")
def edit_validator(
    commission: str = typer.Option(..., help="New commission in percent."),
    key: Path = KEY_OPTION, genesis: Path | None = GENESIS_OPTION,
    fee: int | None = FEE_OPTION, nonce: int | None = NONCE_OPTION,
) -> None:
    """Change the validator's commission (within its maximum change rate)."""
    from services.ledger.core import EditValidator

    _submit(key, genesis, fee, nonce, EditValidator(parse_percent(commission)))


@app.command("withdraw-rewards")
def withdraw_rewards(
    validator: str = typer.Option(..., help="Validator address (hex)."),
    key: Path = KEY_OPTION, genesis: Path | None = GENESIS_OPTION,
    fee: int | None = FEE_OPTION, nonce: int | None = NONCE_OPTION,
) -> None:
    """Withdraw rewards earned through a validator (and its commission, for its operator)."""
    from services.ledger.core import WithdrawRewards

    _submit(key, genesis, fee, nonce, WithdrawRewards(parse_address(validator)))


@app.command()
def unjail(
    key: Path = KEY_OPTION, genesis: Path | None = GENESIS_OPTION,
    fee: int | None = FEE_OPTION, nonce: int | None = NONCE_OPTION,
) -> None:
    """Ask to rejoin the validator set after a downtime jail has expired."""
    from services.ledger.core import Unjail

    _submit(key, genesis, fee, nonce, Unjail())


@app.command()
def vote(
    proposal: int = typer.Option(..., help="Proposal id."),
    option: str = typer.Option(..., help="yes, abstain, no or no_with_veto."),
    key: Path = KEY_OPTION, genesis: Path | None = GENESIS_OPTION,
    fee: int | None = FEE_OPTION, nonce: int | None = NONCE_OPTION,
) -> None:
    """Vote on a governance proposal."""
    from services.ledger.core import VoteOption, VoteProposal

    try:
        choice = VoteOption[option.upper()]
    except KeyError as exc:
        raise typer.BadParameter(f"unknown vote option {option!r}") from exc
    _submit(key, genesis, fee, nonce, VoteProposal(proposal, choice))
