"""``qustream topics``: create the catalogue's topics and report configuration drift."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from streams.console import output_console

app = typer.Typer(help="Kafka topics of the catalogue (DESIGN.md section 3).", no_args_is_help=True)


@app.command("list")
def list_topics(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the catalogue: every topic with partitions, key, writer, retention, segment time
    and schemas."""
    from streams.settings import load_settings
    from streams.topics import CATALOGUE

    settings = load_settings()
    rows = [
        {
            "topic": settings.topic(s.name),
            "partitions": s.partitions,
            "key": s.key,
            "writer": s.writer,
            "retention_ms": s.retention_ms,
            "segment_ms": s.segment_ms,
            "schemas": list(s.schemas),
        }
        for s in CATALOGUE
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="QuStream topic catalogue")
    for column in ("topic", "partitions", "key", "writer", "retention_ms", "segment_ms",
                   "schemas"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(", ".join(v) if isinstance(v, list) else str(v) for v in row.values()))
    output_console().print(table)


@app.command()
def ensure(
    replication_factor: int = typer.Option(
        0, help="Replication factor for new topics (0 = from settings: "
                "QUSTREAM_KAFKA_REPLICATION_FACTOR, or the embedded cluster's size up to 3)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Create missing topics and report drift of existing ones (exit 1 on drift).

    Drift covers partitions and every catalogue config: retention, segment.ms / segment.bytes
    (which make the retention real), max.message.bytes, min.insync.replicas ..."""
    from streams.admin import ensure_topics
    from streams.settings import load_settings

    reports = ensure_topics(load_settings(), replication_factor=replication_factor or None)
    if as_json:
        print(json.dumps([{"topic": r.topic, "status": r.status, "drift": list(r.drift)}
                          for r in reports], indent=2))
    else:
        console = output_console()
        for report in reports:
            colour = {"created": "green", "ok": "cyan", "drift": "yellow"}[report.status]
            console.print(f"[{colour}]{report.status:8}[/] {report.topic}")
            for line in report.drift:
                console.print(f"         {line}")
    if any(r.status == "drift" for r in reports):
        raise typer.Exit(1)
