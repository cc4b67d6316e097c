"""``qustream genesis``: create a genesis file with fresh keys, and show one.

``new`` writes ``genesis.json`` plus one key file per validator, account and QRNG source under
``OUT/keys/`` (mode 0600, via ``SigningKey.save``; existing key files are never overwritten).
Keys and the genesis randomness come from the operating system's CSPRNG: this is the shell, not
the deterministic core.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import typer

from protocol.entropy.registry import lane_source_ids
from protocol.keys import Algorithm, SigningKey
from services.ledger.core import MICRO, Genesis, GenesisAccount, GenesisValidator
from services.ledger.core.genesis import GENESIS_RANDOMNESS_SIZE
from services.ledger.core.genesis_file import (
    GenesisError,
    genesis_state,
    load_genesis,
    save_genesis,
)
from services.ledger.core.params import Params
from services.ledger.core.state import state_hash
from services.ledger.core.tx import QrngSource

app = typer.Typer(help="Create and inspect the genesis file of a QuStream chain.")


GENESIS_OPTION = typer.Option(
    None, "--genesis", envvar="QUSTREAM_GENESIS",
    help="Genesis file of the chain (default: the demo's, <state_dir>/demo/genesis.json).",
)


def genesis_path(option: Path | None) -> Path:
    if option is not None:
        return option
    from streams.settings import load_settings

    return load_settings().state_dir / "demo" / "genesis.json"


@app.command()
def new(
    out: Path = typer.Option(..., "--out", help="Directory for genesis.json and keys/."),
    validators: int = typer.Option(4, "--validators", min=1, help="Number of validators."),
    accounts: int = typer.Option(3, "--accounts", min=0, help="Number of funded accounts."),
    sources: int = typer.Option(2, "--sources", min=0, help="Number of QRNG sources."),
    lanes: int = typer.Option(
        1, "--lanes", min=1,
        help="Lanes per QRNG source: K > 1 registers qrng-N.lane-0 .. qrng-N.lane-(K-1), each "
             "its own hash chain, all with the key keys/qrng-N.json; the two-source rule "
             "counts them as one device (run them with qustream qrng run --lanes K).",
    ),
    chain_id: str = typer.Option("qustream-local", "--chain-id"),
    balance: int = typer.Option(
        1_000_000 * MICRO, "--balance", min=0, help="Micro-units for each account and validator."
    ),
    self_bond: int = typer.Option(
        10_000 * MICRO, "--self-bond", min=1, help="Micro-units each validator bonds."
    ),
    commission_rate: int = typer.Option(
        100_000_000, "--commission-rate", help="Parts per billion (100000000 = 10%)."
    ),
    algorithm: str = typer.Option("ml-dsa-65", "--algorithm", help="ml-dsa-65 or ed25519."),
    simulated: bool = typer.Option(
        True, "--simulated/--hardware", help="Mark the QRNG sources as simulated."
    ),
    snapshot_interval: int = typer.Option(
        Params().snapshot_interval_blocks, "--snapshot-interval", min=0,
        help="Heights between two state snapshots on chain.snapshots (0 = none); nodes start "
             "from the newest verified one instead of folding the chain from genesis.",
    ),
) -> None:
    """Generate keys and write OUT/genesis.json (default parameters, editable afterwards)."""
    genesis_path = out / "genesis.json"
    if genesis_path.exists():
        raise typer.BadParameter(f"{genesis_path} already exists", param_hint="--out")
    scheme = Algorithm.from_option(algorithm)
    keys_dir = out / "keys"
    validator_keys = [SigningKey.generate(scheme) for _ in range(validators)]
    account_keys = [SigningKey.generate(scheme) for _ in range(accounts)]
    source_keys = [SigningKey.generate(scheme) for _ in range(sources)]
    genesis = Genesis(
        chain_id=chain_id,
        genesis_time_ms=int(time.time() * 1000),
        genesis_randomness=os.urandom(GENESIS_RANDOMNESS_SIZE),
        validators=tuple(
            GenesisValidator(
                public_key=key.public_key,
                self_bond=self_bond,
                commission_rate=commission_rate,
                max_commission_rate=max(commission_rate, 200_000_000),
                max_commission_change_rate=10_000_000,
            )
            for key in validator_keys
        ),
        accounts=tuple(
            GenesisAccount(key.address, balance) for key in validator_keys + account_keys
        ),
        qrng_sources=tuple(
            QrngSource(source_id, key.public_key, simulated)
            for index, key in enumerate(source_keys)
            for source_id in lane_source_ids(f"qrng-{index}", lanes)
        ),
        params=Params(snapshot_interval_blocks=snapshot_interval),
    )
    try:
        genesis.validate()
    except GenesisError as exc:
        raise typer.BadParameter(str(exc)) from exc
    out.mkdir(parents=True, exist_ok=True)
    for prefix, keys in (("validator", validator_keys), ("account", account_keys)):
        for index, key in enumerate(keys):
            key.save(keys_dir / f"{prefix}-{index}.json")
    for index, key in enumerate(source_keys):
        key.save(keys_dir / f"qrng-{index}.json")
    save_genesis(genesis, genesis_path)
    typer.echo(f"wrote {genesis_path} and {len(validator_keys + account_keys + source_keys)} keys")


@app.command()
def show(
    path: Path = typer.Argument(..., help="A genesis.json file."),
) -> None:
    """Validate a genesis file and print what it starts: validators, accounts, sources, hash."""
    try:
        genesis = load_genesis(path)
        state = genesis_state(genesis)
    except GenesisError as exc:
        typer.echo(f"invalid genesis: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(f"chain id        {genesis.chain_id}")
    typer.echo(f"genesis time ms {genesis.genesis_time_ms}")
    typer.echo(f"total supply    {genesis.total_supply()} micro-units")
    typer.echo(f"state hash      {state_hash(state).hex()}")
    typer.echo(f"validators      {len(genesis.validators)}")
    for member in state.validator_sets[0].validators:
        typer.echo(f"  {member.address.hex()}  power {member.power}")
    typer.echo(f"accounts        {len(genesis.accounts)}")
    for account in genesis.accounts:
        typer.echo(f"  {account.address.hex()}  {account.balance}")
    typer.echo(f"qrng sources    {len(genesis.qrng_sources)}")
    for source in genesis.qrng_sources:
        flag = " (simulated)" if source.simulated else ""
        typer.echo(f"  {source.source_id}  {source.public_key.address_hex}{flag}")
