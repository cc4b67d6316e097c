"""``qustream chain``: read the public chain, verifying every block on the way.

Nothing is taken on trust from Kafka. ``head`` and ``block`` verify light by default
(``light_reads``: from the newest block verified before, kept under the state directory, in
time that does not grow with the chain); with ``--full``, and for ``follow``, ``read_blocks``
re-verifies hash links, commit certificates, randomness and state hashes from genesis up.
The genesis file defaults to the demo's (``<state_dir>/demo/genesis.json``); give ``--genesis``
or ``QUSTREAM_GENESIS`` for another.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from protocol.follow import BlockFollower
from protocol.snapshot import SnapshotError
from services.ledger.core import LedgerState
from services.ledger.core.chain_spec import ChainSpec
from services.ledger.genesis_cli import GENESIS_OPTION, genesis_path
from streams.console import output_console

app = typer.Typer(help="Read and follow the finalized chain (every block verified).",
                  no_args_is_help=True)

def block_summary(verified: Any) -> dict[str, Any]:
    """A JSON-friendly view of a ``chain_reader.VerifiedBlock`` (what the CLI and demo show)."""
    at_height = verified.chain.record_of(verified.record.height)  # the set that signed it
    return record_summary(verified.record, verified.offset,
                          at_height.validators if at_height is not None else None)


def record_summary(record: Any, offset: int, validators: Any) -> dict[str, Any]:
    """The view of a verified ``FinalizedRecord`` at ``offset``; ``validators``, the set that
    signed it, gives the signed power (None when not known)."""
    from protocol.commit import CommitFlag
    from protocol.pulse import describe, health_json, is_random, pulse_status

    header = record.block.header
    body = record.block.body
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
        # per source, the SP 800-90B summaries of the chunks (protocol.pulse.health_by_source)
        "health": health_json(body.entropy),
        "txs": len(body.txs),
        "evidence": len(body.evidence),
        "proposer": header.proposer_address.hex(),
        "signers": len(signed),
        "signed_power": signed_power,
        "state_hash": record.state_hash.hex(),
        "proposal_to_finality_ms": record.finalized_at_ms - record.proposed_at_ms,
        "kafka_offset": offset,
    }


def _print(summary: dict[str, Any], as_json: bool, console: Console) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    from protocol.pulse import SourceHealth

    table = Table(show_header=False, title=f"block {summary['height']}")
    for key, value in summary.items():
        if key == "health":
            text = "\n".join(SourceHealth.from_json(item).describe() for item in value)
            table.add_row(key, text or "no entropy")
        else:
            table.add_row(key, json.dumps(value) if isinstance(value, list) else str(value))
    console.print(table)


FULL_OPTION = typer.Option(
    False, "--full", help="Re-verify every block from genesis, re-executing the ledger (the "
                          "state hashes too), instead of the light client's verification from "
                          "the last verified checkpoint (time independent of the chain's length).")


@app.command()
def head(
    genesis: Path | None = GENESIS_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    full: bool = FULL_OPTION,
) -> None:
    """Show the chain's latest block, verified (and the latest random pulse: a block without
    fresh entropy from enough sources is marked NOT RANDOM).

    By default a light client verifies it from the newest block verified before (kept under
    the state directory) or the genesis: skipping verification, so the time does not grow with
    the chain. When that cannot decide (the validator set changed, the checkpoint is older than
    the trusting period) it says why and verifies fully, as --full does."""
    console = Console(stderr=True)
    summary = None if full else _light(genesis, None, console)
    if summary is None:
        summary = _full_head(genesis, console)
    _print(summary, as_json, output_console())
    if not summary["random"] and not as_json:
        console.print(f"[red]the head is not a random pulse ({summary['pulse']}); the latest "
                      f"random pulse is at height {summary['latest_random_height']}[/]")


def _full_head(genesis: Path | None, console: Console) -> dict[str, Any]:
    from protocol.pulse import is_random, pulse_status
    from streams.chain_reader import read_blocks
    from streams.settings import load_settings

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
    summary["verified"] = "fully, from genesis"
    return summary


def _light(genesis: Path | None, height: int | None, console: Console
           ) -> dict[str, Any] | None:
    """The head (``height`` None) or block ``height`` verified light, its kept checkpoint
    advanced; None when light verification cannot decide (said on ``console``)."""
    from services.consensus.light_reads import (
        LightChain,
        LightUnavailableError,
        checkpoint_path,
        load_checkpoint,
        save_checkpoint,
    )
    from streams.chain_reader import ChainTopic
    from streams.settings import load_settings

    settings = load_settings()
    spec = ChainSpec.load(genesis_path(genesis))
    start = spec.checkpoint()
    kept = checkpoint_path(settings.state_dir, start)
    with ChainTopic(settings) as topic:
        chain = LightChain(topic, start, load_checkpoint(kept, start), spec.trusting_period_ms())
        try:
            with console.status("verifying light from the last checkpoint ..."):
                if height is None:
                    block = chain.head()
                    latest = chain.latest_random(block)
                else:
                    block = chain.block(height)
        except LookupError as exc:
            console.print(f"[yellow]{exc}[/]")
            raise typer.Exit(1) from exc
        except LightUnavailableError as exc:
            console.print(f"[yellow]light verification cannot decide ({exc}); verifying fully "
                          "from genesis[/]")
            return None
    save_checkpoint(kept, chain.trusted)
    summary = record_summary(block.record, block.offset, block.signed_by)
    if height is None:
        summary["latest_random_height"] = latest.record.height if latest else None
    summary["verified"] = f"light: {block.how}"
    return summary


@app.command()
def block(
    height: int = typer.Argument(..., min=1, help="Height of the block."),
    genesis: Path | None = GENESIS_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    full: bool = FULL_OPTION,
) -> None:
    """Show block HEIGHT, verified: light by default (found by bisection over the topic's
    offsets, verified from the kept checkpoint or the genesis), or, with --full, after
    verifying the chain from genesis up to it."""
    from streams.chain_reader import read_blocks
    from streams.settings import load_settings

    console = Console(stderr=True)
    summary = None if full else _light(genesis, height, console)
    if summary is not None:
        _print(summary, as_json, output_console())
        return
    with console.status(f"verifying the chain up to height {height} ..."):
        for verified in read_blocks(load_settings(), _follower(genesis), height):
            if verified.record.height == height:
                found = block_summary(verified)
                found["verified"] = "fully, from genesis"
                _print(found, as_json, output_console())
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


@app.command()
def snapshots(
    genesis: Path | None = GENESIS_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the state snapshots on chain.snapshots, newest first, each verified as a node
    starting from it would verify it: the block after it is verified light from the kept
    checkpoint or the genesis, the snapshot's state must hash to that block's app hash, and
    the block must apply to it. Exit 1 when one is on the topic that no node would accept."""
    from services.consensus.light_reads import checkpoint_path, load_checkpoint
    from services.consensus.snapshots import read_chunks, verified_snapshot
    from streams.chain_wire import assemble_snapshots
    from streams.settings import load_settings

    settings = load_settings()
    spec = ChainSpec.load(genesis_path(genesis))
    start = spec.checkpoint()
    trusted = load_checkpoint(checkpoint_path(settings.state_dir, start), start)
    rows: list[dict[str, Any]] = []
    with Console(stderr=True).status("reading and verifying chain.snapshots ..."):
        chunks = read_chunks(settings)
        for snapshot in assemble_snapshots(chunks, spec.chain_id):
            row: dict[str, Any] = {"height": snapshot.height, "hash": snapshot.hash.hex(),
                                   "bytes": len(snapshot.data)}
            try:
                verified_snapshot(settings, spec, snapshot, trusted)
                row["verified"], row["reason"] = True, ""
            except SnapshotError as exc:
                row["verified"], row["reason"] = False, exc.reason
            rows.append(row)
    complete = {(row["height"], row["hash"]) for row in rows}
    incomplete = {(c.height, c.snapshot_hash.hex()) for c in chunks
                  if c.chain_id == spec.chain_id} - complete
    if as_json:
        print(json.dumps({"snapshots": rows, "incomplete": len(incomplete)}))
    else:
        table = Table("height", "hash", "bytes", "verified")
        for row in rows:
            table.add_row(str(row["height"]), row["hash"][:16], str(row["bytes"]),
                          "yes" if row["verified"] else f"[red]no: {row['reason']}[/]")
        console = output_console()
        console.print(table if rows else "no state snapshot on chain.snapshots")
        if incomplete:
            console.print(f"{len(incomplete)} incomplete snapshots (chunks missing)")
    if any(not row["verified"] and "not on chain.blocks yet" not in row["reason"]
           for row in rows):
        raise typer.Exit(1)


def _follower(genesis: Path | None) -> BlockFollower[LedgerState]:
    """A follower at the genesis the option names (or the default one)."""
    return ChainSpec.load(genesis_path(genesis)).follower()
