"""``qustream alerts list | watch``: the monitor's alerts, read from the ``alerts`` topic."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from datetime import UTC, datetime

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from services.monitor.core.alerts import AlertEvent, AlertRaised, OpenAlerts, fold

app = typer.Typer(help="Alerts the monitor raised and resolved (the alerts topic).",
                  no_args_is_help=True)
console = Console()
STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _open_table(open_alerts: OpenAlerts, now_ms: int) -> Table:
    table = Table(title=f"open alerts ({len(open_alerts)})", expand=True)
    for column in ("severity", "rule", "subject", "since", "for", "value", "summary"):
        table.add_column(column)
    ordered = sorted(open_alerts.alerts.values(),
                     key=lambda a: (-("info", "warning", "critical").index(a.severity)
                                    if a.severity in ("info", "warning", "critical") else 0,
                                    a.since_ms))
    for alert in ordered:
        style = STYLE.get(alert.severity, "")
        table.add_row(f"[{style}]{alert.severity}[/]" if style else alert.severity, alert.rule,
                      alert.subject[:24], _time(alert.since_ms),
                      f"{max(0, now_ms - alert.since_ms) / 1000:.0f} s", f"{alert.value:g}",
                      alert.summary)
    return table


def _line(event: AlertEvent) -> str:
    if isinstance(event, AlertRaised):
        return (f"{_time(event.raised_at_ms)} [red]RAISED[/]   {event.rule} {event.subject}: "
                f"{event.summary}")
    return (f"{_time(event.resolved_at_ms)} [green]RESOLVED[/] {event.rule} {event.subject}: "
            f"{event.summary}")


def _json(event: AlertEvent) -> dict[str, object]:
    kind = "raised" if isinstance(event, AlertRaised) else "resolved"
    record: dict[str, object] = {"event": kind}
    record.update({name: getattr(event, name) for name in event.__slots__})  # type: ignore[attr-defined]
    if isinstance(event, AlertRaised):
        record["labels"] = dict(event.labels)
    return record


@app.command("list")
def list_alerts(
    history: bool = typer.Option(False, "--all", help="every raise and resolve still on the "
                                 "topic, oldest first, not only the open alerts"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line"),
) -> None:
    """The open alerts (or, with --all, the alert history the topic keeps)."""
    from services.monitor.alert_log import AlertLogError, read_alerts
    from streams.settings import load_settings

    settings = load_settings()
    open_alerts = OpenAlerts()
    events = []
    try:
        with console.status("reading the alerts topic ...", spinner="dots"):
            for event in read_alerts(settings):
                open_alerts = fold(open_alerts, event)
                events.append(event)
    except AlertLogError as exc:
        Console(stderr=True).print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    if as_json:
        selected: list[AlertEvent] = events if history else list(open_alerts.alerts.values())
        for event in selected:
            typer.echo(json.dumps(_json(event)))
        return
    if history:
        for event in events:
            console.print(_line(event))
    console.print(_open_table(open_alerts, time.time_ns() // 1_000_000))


@app.command("watch")
def watch(
    duration: float | None = typer.Option(None, "--duration", help="stop after seconds"),
) -> None:
    """Follow the alerts live: the open alerts and the latest raises and resolves."""
    from protocol.errors import QuStreamError
    from services.monitor.alert_log import read_alerts
    from streams.kafka import ensure_reachable
    from streams.settings import load_settings

    settings = load_settings()
    ensure_reachable(settings)  # out of reach at the start: one line, not a silent view
    lock = threading.Lock()
    problem: list[str] = []
    state = {"open": OpenAlerts()}
    recent: deque[AlertEvent] = deque(maxlen=12)
    stop = threading.Event()

    def follow() -> None:
        while not stop.is_set():
            try:
                for event in read_alerts(settings, follow=True, stop=stop.is_set):
                    with lock:
                        problem.clear()
                        state["open"] = fold(state["open"], event)
                        recent.appendleft(event)
            except QuStreamError as exc:  # no topic yet, broker gone: say so and try again
                with lock:
                    problem[:] = [str(exc)]
                stop.wait(2)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    started = time.monotonic()

    def render() -> Group:
        with lock:
            table = _open_table(state["open"], time.time_ns() // 1_000_000)
            lines = "\n".join(_line(e) for e in recent) or "(no alert events yet)"
            if problem:
                lines = f"[red]{problem[0]}[/]\n{lines}"
        return Group(table, lines)

    try:
        with Live(render(), console=console, refresh_per_second=2) as screen:
            while duration is None or time.monotonic() - started < duration:
                screen.update(render())
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        reader.join(timeout=5)
