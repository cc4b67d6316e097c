"""``qustream validator run``: one validator node (consensus + its block builder)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

app = typer.Typer(help="Validator nodes: vote in consensus, propose blocks when chosen.",
                  no_args_is_help=True)


@app.command("run")
def run(
    key: Path = typer.Option(..., "--key", help="the validator's signing key file"),
    genesis: Path = typer.Option(..., "--genesis", help="genesis.json"),
    state_dir: Path | None = typer.Option(None, "--state-dir",
                                          help="where the double-sign guard lives "
                                               "(default: QUSTREAM_STATE_DIR/validators)"),
    block_interval_ms: int = typer.Option(1000, "--block-interval-ms",
                                          help="pause after each block (0 = as fast as possible)"),
    propose_timeout_ms: int = typer.Option(1500, "--propose-timeout-ms"),
    commit_window_ms: int = typer.Option(
        1000, "--commit-window-ms", min=0,
        help="after a decision, how long to await the other validators' precommits for the "
             "next block's last_commit (0: only those counted by then); the next height starts "
             "as soon as all are in, never before the block interval"),
    absent_window_ms: int = typer.Option(
        300, "--absent-window-ms", min=0,
        help="the shorter wait for validators the previous block's last_commit records as "
             "absent (down, or late beyond the window), so one that is down does not slow "
             "every height by the full window"),
    duration_s: float | None = typer.Option(None, "--duration", help="stop after seconds"),
    from_genesis: bool = typer.Option(
        False, "--from-genesis",
        help="fold chain.blocks from genesis on start instead of starting from the newest "
             "verified state snapshot on chain.snapshots (slower, linear in the chain)"),
    entropy_lookback_s: float = typer.Option(
        600.0, "--entropy-lookback-s", min=0.0,
        help="on start, read entropy.raw from this long before the last block (found by "
             "Kafka's time index; 0 = the whole topic)"),
    verify_workers: int = typer.Option(
        0, "--verify-workers", min=0,
        help="processes verifying vote signatures beside the node (0: in the node). Pays with "
             "many validators on a machine with a core to spare (bench.validator_scale)."),
) -> None:
    """Run a validator until interrupted."""
    from dataclasses import replace

    from services.consensus.validator import NodeOptions, run_validator
    from streams.settings import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = load_settings()
    defaults = NodeOptions()
    options = replace(defaults, block_interval_ms=block_interval_ms,
                      commit_window_ms=commit_window_ms, absent_window_ms=absent_window_ms,
                      timeouts=replace(defaults.timeouts, propose_ms=propose_timeout_ms),
                      from_genesis=from_genesis,
                      entropy_lookback_ms=int(entropy_lookback_s * 1000))
    node = run_validator(settings, genesis, key, state_dir or settings.state_dir / "validators",
                         options, duration_s, verify_workers=verify_workers)
    typer.echo(f"stopped at height {node.follower.next_height}; sent {node.sent} messages; "
               f"rejected {node.rejected}")
