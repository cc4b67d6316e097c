"""``qustream builder``: the block builder's entropy pool, standalone.

The builder that proposes runs inside each validator node (``services/consensus/validator.py``):
proposing and voting must share one double-sign guard, so they share one process.
``qustream builder run`` runs the same verified pool alone: it follows ``chain.blocks`` and
``entropy.raw``, verifies every chunk and checkpoint (rejections to ``dlq.entropy``) and prints
what the next proposal would include. Operators use it to check a new QRNG source before
registering it, and to watch the pool without a validator key.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

app = typer.Typer(help="Block builder: the verified entropy pool behind proposals.",
                  no_args_is_help=True)


@app.command("run")
def run(
    genesis: Path = typer.Option(..., "--genesis", help="genesis.json"),
    key: Path | None = typer.Option(None, "--key", help="validator key (only names the "
                                    "consumer; a builder never signs)"),
    interval_s: float = typer.Option(2.0, "--interval", help="seconds between status lines"),
    duration_s: float | None = typer.Option(None, "--duration", help="stop after seconds"),
) -> None:
    """Follow entropy.raw and chain.blocks; print the pool per source as JSON lines."""
    from services.block_builder.service import PoolFollower
    from services.consensus.follower import ChainSpec
    from streams.keys import SigningKey
    from streams.settings import load_settings

    name = "builder" if key is None else f"builder-{SigningKey.load(key).address.hex()[:12]}"
    follower = PoolFollower(load_settings(), ChainSpec.load(genesis), name)
    started = last = time.monotonic()
    try:
        while duration_s is None or time.monotonic() - started < duration_s:
            follower.poll(0.2)
            if time.monotonic() - last >= interval_s:
                last = time.monotonic()
                typer.echo(json.dumps(follower.status()))
    except KeyboardInterrupt:
        pass
    finally:
        follower.close()
