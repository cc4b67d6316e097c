"""``qustream chain``: read the public chain, verifying every block on the way.

Nothing is taken on trust from Kafka: ``read_blocks`` re-verifies hash links, commit
certificates, randomness and state hashes from genesis up. The genesis file defaults to the
demo's (``<state_dir>/demo/genesis.json``); give ``--genesis`` or ``QUSTREAM_GENESIS`` for another.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from protocol.follow import BlockFollower
from services.ledger.core import LedgerState
from services.ledger.core.chain_spec import ChainSpec
from services.ledger.genesis_cli import GENESIS_OPTION, genesis_path
from streams.console import output_console

app = typer.Typer(help="Read and follow the finalized chain (every block verified).",
                  no_args_is_help=True)

def block_summary(verified: Any) -> dict[str, Any]:
    """A JSON-friendly view of a ``follower.VerifiedBlock`` (what the CLI and demo show)."""
    from protocol.commit import CommitFlag
    from protocol.pulse import describe, is_random, pulse_status

    record = verified.record
    header = record.block.header
    body = record.block.body
    at_height = verified.chain.record_of(record.height)  # the set that signed this block
    validators = at_height.validators if at_height is not None else None
    signed = [s for s in record.commit.signatures if s.flag is CommitFlag.COMMIT]
    signed_power = None
    if validators is not None:
        signed_power = sum(validators.power_of(s.validator_address) for s in signed)
    return {
        "height": record.height,
        "hash": record.block.hash.hex(),
        "round": record.commit.round,
        "time_ms": header.time_ms,
        "previous_block_hash": header.previous_block_hash.hex(),
        "randomness": header.randomness.hex(),
        "pulse_status": int(pulse_status(header)),
        "random": is_random(pulse_status(header)),
        "pulse": describe(pulse_status(header)),
        "fresh_sources": header.fresh_sources,
        "registered_sources": header.registered_sources,
        "entropy_root": header.entropy_root.hex(),
        "entropy_chunks": len(body.entropy),
        "entropy_ranges": [
            {"source": r.source_id, "first": r.first, "last": r.last}
            for r in header.entropy_ranges
        ],
        "txs": len(body.txs),
        "evidence": len(body.evidence),
        "proposer": header.proposer_address.hex(),
        "signers": len(signed),
        "signed_power": signed_power,
        "state_hash": record.state_hash.hex(),
        "proposal_to_finality_ms": record.finalized_at_ms - record.proposed_at_ms,
        "kafka_offset": verified.offset,
    }


def _print(summary: dict[str, Any], as_json: bool, console: Console) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    table = Table(show_header=False, title=f"block {summary['height']}")
    for key, value in summary.items():
        table.add_row(key, json.dumps(value) if isinstance(value, list) else str(value))
    console.print(table)


@app.command()
def head(
    genesis: Path | None = GENESIS_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Verify the whole chain and show its latest block (and the latest random pulse: a block
    without fresh entropy from enough sources is marked NOT RANDOM)."""
    from protocol.pulse import is_random, pulse_status
    from streams.chain_reader import read_blocks
    from streams.settings import load_settings

    console = Console(stderr=True)
    last = None
    latest_random = None
    with console.status("verifying the chain from genesis ..."):
        for last in read_blocks(load_settings(), _follower(genesis)):
            if is_random(pulse_status(last.record.block.header)):
                latest_random = last.record.height
    if last is None:
        console.print("[yellow]no finalized block yet[/]")
        raise typer.Exit(1)
    summary = block_summary(last)
    summary["latest_random_height"] = latest_random
    _print(summary, as_json, output_console())
    if not summary["random"] and not as_json:
        console.print(f"[red]the head is not a random pulse ({summary['pulse']}); the latest "
                      f"random pulse is at height {latest_random}[/]")


@app.command()
def block(
    height: int = typer.Argument(..., min=1, help="Height of the block."),
    genesis: Path | None = GENESIS_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show block HEIGHT after verifying the chain up to it."""
    from streams.chain_reader import read_blocks
    from streams.settings import load_settings

    console = Console(stderr=True)
    with console.status(f"verifying the chain up to height {height} ..."):
        for verified in read_blocks(load_settings(), _follower(genesis), height):
            if verified.record.height == height:
                _print(block_summary(verified), as_json, output_console())
                return
    console.print(f"[red]no finalized block at height {height}[/]")
    raise typer.Exit(1)


@app.command()
def follow(
    from_height: int = typer.Option(1, "--from", min=1, help="First height to print."),
    genesis: Path | None = GENESIS_OPTION,
    as_json: bool = typer.Option(False, "--json", help="One JSON line per block."),
) -> None:
    """Print every verified block as it is finalized, until Ctrl-C."""
    from streams.chain_reader import read_blocks
    from streams.settings import load_settings

    console = output_console()
    try:
        for verified in read_blocks(load_settings(), _follower(genesis), from_height,
                                    follow=True):
            summary = block_summary(verified)
            if as_json:
                print(json.dumps(summary), flush=True)
            else:
                mark = "" if summary["random"] else "  [red]NOT RANDOM[/]"
                console.print(
                    f"height {summary['height']:>6}  round {summary['round']}  "
                    f"randomness {summary['randomness'][:16]}…{mark}  "
                    f"signers {summary['signers']}  entropy chunks {summary['entropy_chunks']}  "
                    f"txs {summary['txs']}  {summary['proposal_to_finality_ms']} ms"
                )
    except KeyboardInterrupt:
        pass


def _follower(genesis: Path | None) -> BlockFollower[LedgerState]:
    """A follower at the genesis the option names (or the default one)."""
    return ChainSpec.load(genesis_path(genesis)).follower()
