"""``qustream blocks``: the block store, a verified projection of chain.blocks into Cassandra.

    qustream blocks project --genesis G [--max-batch N] [--idle-exit-s S]
    qustream blocks status --genesis G        # how far the store reaches, as JSON

``project`` runs until interrupted (or idle ``--idle-exit-s`` seconds); see
``services.block_store.projector`` for what it verifies and in which order it writes. The
gateway serves old blocks, ranges and pulses by time from the store (``docs/api.md``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

app = typer.Typer(help="The block store: chain.blocks, verified, in Cassandra by height and "
                       "by time (what the gateway serves old blocks from).",
                  no_args_is_help=True)

GENESIS = typer.Option(None, "--genesis", envvar="QUSTREAM_GENESIS",
                       help="Genesis file (default: the demo's).")


@app.command("project")
def project(
    genesis: Path | None = GENESIS,
    max_batch: int = typer.Option(500, "--max-batch", min=1,
                                  help="Records verified and written per batch."),
    idle_exit_s: float | None = typer.Option(None, "--idle-exit-s", min=0.0,
                                             help="Stop after this many seconds without a "
                                                  "record (rebuilds, tests)."),
) -> None:
    """Verify every block of chain.blocks and store it; resumes where the store ends."""
    from services.block_store.projector import run_projector
    from services.ledger.core.chain_spec import ChainSpec
    from services.ledger.genesis_cli import genesis_path
    from streams.settings import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    projector = run_projector(load_settings(), ChainSpec.load(genesis_path(genesis)),
                              max_batch=max_batch, idle_exit_s=idle_exit_s)
    stats = projector.stats
    typer.echo(f"stored up to height {projector.stored_height} (this run: {stats.stored} "
               f"blocks, {sum(stats.dead_lettered.values())} records dead-lettered)")


@app.command("status")
def status(genesis: Path | None = GENESIS) -> None:
    """The store's position for the chain of the genesis file: last height, next offset."""
    from services.block_store.core import chain_key
    from services.block_store.queries import BlockQueries
    from services.ledger.core.chain_spec import ChainSpec
    from services.ledger.genesis_cli import genesis_path
    from services.shard_writer.store import connect
    from streams.settings import load_settings

    settings = load_settings()
    spec = ChainSpec.load(genesis_path(genesis))
    chain = chain_key(spec.chain_id, spec.initial.tip.previous_block_hash)
    cluster, session = connect(settings)
    try:
        position = BlockQueries(session, settings.cassandra.keyspace, chain).position()
    finally:
        cluster.shutdown()
    height, next_offset = position or (0, 0)
    typer.echo(json.dumps({"chain": chain, "keyspace": settings.cassandra.keyspace,
                           "height": height, "next_offset": next_offset}))
