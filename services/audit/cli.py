"""``qustream audit``, ``qustream export`` and ``qustream state`` (plain Typer commands).

- ``audit``: replay the topics (live, or ``--from-export DIR``) and re-verify everything (see
  ``replay``); exit status 0 only when every check holds, 1 on any divergence (an export that
  does not match its manifest included), 2 when the audit itself could not run (no export or
  genesis there, Kafka or Cassandra out of reach, ``--at-time`` before the chain's genesis).
- ``export --to DIR``: the audited topics, the genesis and the live projection rows as files
  with a manifest hash, for auditors without access to the cluster.
- ``state --at-height H``: the ledger state after block H, from a verified replay.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from protocol.errors import InputError

GENESIS_HELP = ("Genesis file of the chain (default: the export's copy, else the demo's "
                "<state_dir>/demo/genesis.json).")


class AuditRangeError(InputError):
    """The range asked for holds nothing the chain could have (e.g. a time before genesis)."""


class Rebuild(StrEnum):
    AUTO = "auto"
    CASSANDRA = "cassandra"
    MEMORY = "memory"


WORKERS_HELP = ("Processes verifying signatures ahead of re-execution (default: one per core "
                "beyond the first; 0: verify everything in this process).")


def _genesis(option: Path | None, export: Any = None) -> Path:
    if option is not None:
        return option
    if export is not None and export.genesis is not None:
        return Path(export.genesis)
    from streams.settings import load_settings

    return load_settings().state_dir / "demo" / "genesis.json"


def parse_time(text: str) -> int:
    """Milliseconds since the epoch from an integer or an ISO 8601 time (UTC if no zone)."""
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not milliseconds or ISO 8601: {text!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def audit(
    genesis: Path | None = typer.Option(None, "--genesis", envvar="QUSTREAM_GENESIS",
                                        help=GENESIS_HELP),
    from_export: Path | None = typer.Option(None, "--from-export",
                                            help="Audit an export directory offline."),
    manifest_sha256: str | None = typer.Option(
        None, "--manifest-sha256", help="Expected manifest hash of the export (out of band)."),
    from_height: int = typer.Option(1, "--from-height", min=1,
                                    help="Check signatures from this height (earlier blocks "
                                         "are re-executed only)."),
    to_height: int | None = typer.Option(None, "--to-height", min=1,
                                         help="Stop after this height."),
    at_time: str | None = typer.Option(None, "--at-time",
                                       help="Stop at the last block at or before this time "
                                            "(ms since epoch or ISO 8601)."),
    users: bool = typer.Option(True, "--users/--no-users",
                               help="Rebuild and diff the user projection."),
    keep_rebuild: bool = typer.Option(False, help="Keep the rebuilt audit keyspace."),
    rebuild: Rebuild = typer.Option(
        Rebuild.AUTO, "--rebuild", case_sensitive=False,
        help="Where to rebuild the user projection before the row diff: a fresh Cassandra "
             "keyspace, or in memory (no Cassandra needed). auto: memory for --from-export, "
             "else Cassandra."),
    projection_wait_s: float = typer.Option(
        30.0, "--projection-wait-s", min=0,
        help="How long to wait for the live projection to apply the users.events records "
             "the topic holds, before its rows are read (users it has not applied yet are "
             "then left out of the row diff, with a warning)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document on stdout."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    workers: int | None = typer.Option(None, "--workers", min=0, help=WORKERS_HELP),
) -> None:
    """Replay every topic from offset 0 and re-verify the network's whole history."""
    from streams.signature_pool import SignaturePool

    # First, while this process has one thread: the workers fork in milliseconds.
    with SignaturePool(workers) as pool:
        _audit(pool, genesis, from_export, manifest_sha256, from_height, to_height, at_time,
               users, keep_rebuild, rebuild.value, as_json, progress, projection_wait_s)


def _audit(pool: Any, genesis: Path | None, from_export: Path | None,
           manifest_sha256: str | None, from_height: int, to_height: int | None,
           at_time: str | None, users: bool, keep_rebuild: bool, rebuild: str, as_json: bool,
           progress: bool, projection_wait_s: float = 30.0) -> None:
    from services.audit.core.findings import AuditReport, Finding
    from services.audit.export import ExportError, ExportSource, ExportTamperedError
    from services.audit.replay import AuditOptions, live_projection, run_audit
    from services.audit.report import print_human, print_json, progress_bars
    from services.audit.sources import KafkaSource, LogSource
    from streams.settings import load_settings

    console = Console(stderr=as_json)
    settings = load_settings()
    source: LogSource
    live_rows: Any
    try:
        if from_export is not None:
            export = ExportSource(from_export, manifest_sha256=manifest_sha256)
            source, live_rows = export, export.projection
            genesis_path = _genesis(genesis, export)
        else:
            source = KafkaSource(settings)
            genesis_path = _genesis(genesis)
            live_rows = ((lambda: live_projection(settings, catch_up_s=projection_wait_s))
                         if users else None)
    except ExportTamperedError as exc:  # a finding, not a failure to run
        tampered = AuditReport(facts={"source": f"export {from_export}"})
        tampered.add(Finding("export", str(exc), "export"))
        if as_json:
            print_json(tampered)
        else:
            print_human(tampered, console)
        raise typer.Exit(1) from exc
    except ExportError as exc:
        console.print(f"[red]cannot audit: {exc}[/]")
        raise typer.Exit(2) from exc
    if not genesis_path.exists():
        console.print(f"[red]no genesis file at {genesis_path}[/] (give --genesis)")
        raise typer.Exit(2)
    until_ms = parse_time(at_time) if at_time else None
    if until_ms is not None:
        _check_after_genesis(genesis_path, until_ms, at_time or "")
    options = AuditOptions(genesis_path, from_height, to_height, until_ms, users, keep_rebuild,
                           rebuild=rebuild)
    with progress_bars(console, progress) as bars:
        report = run_audit(source, options, settings=settings, live_rows=live_rows,
                           progress=bars, pool=pool)
    if as_json:
        print_json(report)
    else:
        print_human(report, console)
    raise typer.Exit(0 if report.ok else 1)


def _check_after_genesis(genesis: Path, until_ms: int, text: str) -> None:
    """``--at-time`` before the chain began names no state at all: an error, not an empty OK."""
    from services.ledger.core.chain_spec import ChainSpec

    began = ChainSpec.load(genesis).genesis.genesis_time_ms
    if until_ms < began:
        start = datetime.fromtimestamp(began / 1000, tz=UTC).isoformat(timespec="seconds")
        raise AuditRangeError(f"--at-time {text} is before the chain's genesis ({start}, "
                              f"{began} ms): there is nothing to audit at that time")


def export(
    to: Path = typer.Option(..., "--to", help="Directory to write (must be empty or absent)."),
    genesis: Path | None = typer.Option(None, "--genesis", envvar="QUSTREAM_GENESIS",
                                        help=GENESIS_HELP),
    users: bool = typer.Option(True, "--users/--no-users",
                               help="Include the live projection's rows."),
) -> None:
    """Export the audited topics (with offsets), the genesis and the live user projection."""
    from services.audit.export import write_export
    from services.audit.replay import live_projection
    from services.audit.sources import KafkaSource
    from streams.console import shell_command
    from streams.settings import load_settings

    console = Console()
    settings = load_settings()
    genesis_path = _genesis(genesis)
    # The projection first: every event its rows show is then in the topics read after them.
    live = live_projection(settings) if users else None
    manifest = write_export(KafkaSource(settings), to,
                            genesis_path if genesis_path.exists() else None,
                            live.rows if live else None,
                            projection_positions=live.positions if live else None)
    counts = {topic: sum(p["records"] for p in entry["partitions"].values())
              for topic, entry in manifest["topics"].items()}
    digest = (to / "manifest.sha256").read_text().strip()
    console.print(f"exported to {to}: {json.dumps(counts)}")
    audit_it = shell_command("audit --from-export", str(to), "--manifest-sha256", digest)
    console.print(f"manifest sha256 {digest}  (audit with: {audit_it})", soft_wrap=True)


def state(
    at_height: int = typer.Option(..., "--at-height", min=0, help="Height (0 = genesis)."),
    genesis: Path | None = typer.Option(None, "--genesis", envvar="QUSTREAM_GENESIS",
                                        help=GENESIS_HELP),
    from_export: Path | None = typer.Option(None, "--from-export"),
    as_json: bool = typer.Option(False, "--json"),
    workers: int | None = typer.Option(None, "--workers", min=0, help=WORKERS_HELP),
) -> None:
    """Print the ledger state (balances, stakes, validators, parameters) after height H."""
    from streams.signature_pool import SignaturePool

    with SignaturePool(workers) as pool:  # first: see ``audit``
        _state(pool, at_height, genesis, from_export, as_json)


def _state(pool: Any, at_height: int, genesis: Path | None, from_export: Path | None,
           as_json: bool) -> None:
    from services.audit.export import ExportSource
    from services.audit.replay import AuditOptions, audit_chain
    from services.audit.sources import KafkaSource, LogSource
    from services.audit.state_view import state_view
    from streams.settings import load_settings

    console = Console()
    source: LogSource
    if from_export is not None:
        export_source = ExportSource(from_export)
        source, genesis_path = export_source, _genesis(genesis, export_source)
    else:
        source, genesis_path = KafkaSource(load_settings()), _genesis(genesis)
    _, chain = audit_chain(source, AuditOptions(genesis_path, to_height=max(at_height, 0)
                                                or None), pool=pool)
    if at_height == 0:
        from services.ledger.core.chain_spec import ChainSpec

        chain_state = ChainSpec.load(genesis_path).initial
    else:
        chain_state = chain.chain
    reached = chain_state.tip.height - 1
    if reached < at_height or chain.findings:
        for finding in chain.findings:
            console.print(f"[red]{finding.check}: {finding.reason} [{finding.where()}][/]")
        console.print(f"[red]the verified chain reaches height {reached}, not {at_height}[/]")
        raise typer.Exit(1)
    view = state_view(chain_state)
    if as_json:
        print(json.dumps(view, sort_keys=True))
        return
    console.print_json(json.dumps(view, sort_keys=True))
