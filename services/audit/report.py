"""Rendering an ``AuditReport``: a human summary (rich) or one JSON document."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.audit.core.findings import AuditReport


@contextmanager
def progress_bars(console: Console, enabled: bool = True
                  ) -> Iterator[Callable[[str, int | None], Callable[[int], None]]]:
    """A ``replay.Progress`` drawing one bar per topic (or nothing when disabled).

    A topic's size is an estimate (offsets, and a transactional writer's commit markers take
    offsets too: about half of a topic written one record per transaction), so a bar's total
    becomes its count when the topic is done: when the next topic starts, or at the end."""
    if not enabled:
        yield lambda topic, total: (lambda n: None)
        return
    with Progress(TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        finishers: list[Callable[[], None]] = []

        def finish_all() -> None:
            while finishers:
                finishers.pop()()

        def start(topic: str, total: int | None) -> Callable[[int], None]:
            finish_all()
            task = progress.add_task(topic, total=total or None)
            pending = [0]

            def advance(n: int) -> None:
                pending[0] += n
                if pending[0] >= 500:  # redrawing per record would cost more than auditing it
                    progress.advance(task, pending[0])
                    pending[0] = 0

            def finish() -> None:
                progress.advance(task, pending[0])
                pending[0] = 0
                done = next(t.completed for t in progress.tasks if t.id == task)
                progress.update(task, total=done, completed=done)

            finishers.append(finish)
            return advance

        try:
            yield start
        finally:
            finish_all()


def print_human(report: AuditReport, console: Console) -> None:
    facts = report.facts
    console.rule("QuStream audit")
    console.print(f"source: {facts.get('source')}")
    console.print(f"chain {facts.get('chain_id')}: verified up to height "
                  f"{facts.get('head_height')}, head {str(facts.get('head_block_hash'))[:16]}…, "
                  f"state hash {str(facts.get('state_hash'))[:16]}…")
    table = Table(title="checked", show_header=True)
    table.add_column("what")
    table.add_column("count", justify="right")
    for name, count in sorted(report.checked.items()):
        table.add_row(name, str(count))
    console.print(table)
    for note in report.notes:
        console.print(f"[cyan]note:[/] {note}")
    for finding in report.warnings[:20]:
        console.print(f"[yellow]warning[/] {finding.check}: {finding.reason} "
                      f"[{finding.where()}]")
    failures = report.failures
    for finding in failures[:50]:
        console.print(f"[red]FAIL[/] {finding.check}: {finding.reason} [{finding.where()}]")
    if len(failures) > 50:
        console.print(f"... and {len(failures) - 50} more failures (see --json)")
    first = report.first_divergence()
    if first is None:
        console.print(f"[bold green]OK[/]: every check holds "
                      f"({facts.get('seconds')} s)")
    else:
        console.print(f"[bold red]DIVERGENCE[/]: {len(failures)} failure(s); first at "
                      f"{first.where()}: {first.check}: {first.reason}")


def print_json(report: AuditReport) -> None:
    print(json.dumps(report.to_json(), sort_keys=True))
