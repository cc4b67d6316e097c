"""``qustream tally run``: write finalized blocks to chain.blocks."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

app = typer.Typer(help="The tally: certify +2/3 precommits into finalized blocks.",
                  no_args_is_help=True)


@app.command("run")
def run(
    genesis: Path = typer.Option(..., "--genesis", help="genesis.json"),
    instance: str = typer.Option("0", "--instance",
                                 help="instance name (its Kafka transactional id)"),
    duration_s: float | None = typer.Option(None, "--duration", help="stop after seconds"),
) -> None:
    """Run a tally until interrupted."""
    from services.consensus.tally import run_tally
    from streams.settings import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    tally = run_tally(load_settings(), genesis, instance, duration_s)
    typer.echo(f"stopped at height {tally.follower.next_height}; wrote {tally.written} blocks")
