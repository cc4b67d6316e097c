"""``qustream monitor run``: the network monitor (a Faust app over every topic)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(help="The network monitor: windows over every topic, alerts, metrics.",
                  no_args_is_help=True)
console = Console(stderr=True)


@app.command("run")
def run(
    genesis: Path | None = typer.Option(
        None, "--genesis", help="genesis.json: follow the ledger (whose turn each round was, "
        "jail and slash records, QRNG keys to verify checkpoints). Without it the monitor "
        "reads the certificates only."),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", help="serve Prometheus /metrics on this port "
        "(default: QUSTREAM_MONITOR_METRICS_PORT; 0 picks a free one)"),
    metrics_host: str | None = typer.Option(
        None, "--metrics-host", help="interface for /metrics (default 127.0.0.1)"),
    alertmanager_url: str | None = typer.Option(
        None, "--alertmanager-url", help="Alertmanager (or compatible) base URL; alerts are "
        "POSTed to <url>/api/v2/alerts (default: QUSTREAM_MONITOR_ALERTMANAGER_URL)"),
    quiet: bool = typer.Option(False, "--quiet", help="no status lines"),
    log_level: str = typer.Option("WARNING", "--log-level", help="Faust's log level"),
) -> None:
    """Watch every topic and raise / resolve alerts until interrupted (SIGINT or SIGTERM)."""
    import faust

    from services.monitor.app import make_app
    from services.monitor.core.alerts import AlertRaised
    from services.monitor.ledger import LedgerView
    from services.monitor.metrics import serve
    from services.monitor.runtime import MonitorRuntime
    from services.monitor.settings import MonitorSettings
    from streams.kafka import ensure_reachable
    from streams.settings import load_settings

    settings = load_settings()
    ensure_reachable(settings)  # Faust's client would print a traceback of its own
    overrides = {k: v for k, v in (("metrics_port", metrics_port), ("metrics_host", metrics_host),
                                   ("alertmanager_url", alertmanager_url)) if v is not None}
    options = MonitorSettings(**overrides)  # type: ignore[arg-type]
    ledger = LedgerView(genesis) if genesis is not None else None
    runtime = MonitorRuntime(settings, options, ledger)

    def announce(event: object) -> None:
        if quiet:
            return
        if isinstance(event, AlertRaised):
            console.print(f"[red]RAISED[/] {event.rule} {event.subject}: {event.summary}")
        else:
            console.print(f"[green]RESOLVED[/] {event.rule} {event.subject}: "  # type: ignore[attr-defined]
                          f"{event.summary}")  # type: ignore[attr-defined]

    service = make_app(settings, runtime, on_alert=announce)
    if options.metrics_port is not None:
        try:
            port = serve(runtime.snapshot, options.metrics_port, options.metrics_host)
        except OSError as exc:
            console.print(f"[red]cannot serve metrics on {options.metrics_host}:"
                          f"{options.metrics_port}: {exc.strerror or exc}[/]")
            raise typer.Exit(2) from exc
        console.print(f"metrics on http://{options.metrics_host}:{port}/metrics")
    if not quiet:
        started = time.monotonic()

        @service.app.timer(10.0)
        async def status() -> None:
            total = sum(runtime.events.values())
            state = "watching" if runtime.caught_up else "catching up"
            console.print(f"monitor {state}: {total} records in {time.monotonic() - started:.0f} s,"
                          f" {len(runtime.state.sources)} sources, height "
                          f"{runtime.state.network.height}, {len(runtime.open_alerts)} alerts open")

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    console.print(f"monitor {settings.topic('monitor')} on {settings.kafka_bootstrap()} "
                  f"({'ledger from ' + str(genesis) if genesis else 'certificates only'})")
    worker = faust.Worker(service.app, loglevel=log_level.upper(), quiet=True,
                          redirect_stdouts=False)
    worker.execute_from_commandline()
