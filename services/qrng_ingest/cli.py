"""``qustream qrng``: run a QRNG ingest server, watch sources, compute health-test cutoffs."""

from __future__ import annotations

import json
import signal
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.live import Live

app = typer.Typer(help="QRNG servers: ingest, health tests, signatures, monitoring.",
                  no_args_is_help=True)
console = Console(stderr=True)

if TYPE_CHECKING:
    from services.qrng_ingest.service import IngestConfig


@app.command("health-params")
def health_params(
    min_entropy: str = typer.Option(..., "--min-entropy", help="claimed min-entropy H per sample"),
    alpha_exp: int = typer.Option(..., "--alpha-exp", help="alpha = 2^-N (20..40)"),
    binary: bool = typer.Option(False, "--binary", help="1-bit samples (default: 8-bit)"),
) -> None:
    """Print the SP 800-90B RCT/APT cutoffs as JSON."""
    from services.qrng_ingest.core.health import HealthParameterError, HealthParameters

    try:
        params = HealthParameters.derive(Fraction(min_entropy), alpha_exp, binary=binary)
    except (HealthParameterError, ValueError, ZeroDivisionError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(json.dumps(params.to_json_dict()))


@app.command("keygen")
def keygen(out: Path = typer.Option(..., "--out", help="key file to create (mode 0600)")) -> None:
    """Create an ML-DSA-65 signing key for a QRNG server."""
    from protocol.keys import SigningKey

    key = SigningKey.generate()
    key.save(out)
    typer.echo(key.public_key.address_hex)


@app.command("registry-entry")
def registry_entry(
    key: Path = typer.Option(..., "--key", help="the server's signing key file"),
    source_id: str = typer.Option(..., "--source-id"),
    simulated: bool = typer.Option(False, "--simulated", help="source may publish simulator data"),
) -> None:
    """Print the registry entry (source id + public key) that consumers will trust."""
    from protocol.entropy.registry import SourceRegistryEntry
    from protocol.keys import SigningKey

    entry = SourceRegistryEntry(source_id, SigningKey.load(key).public_key, simulated)
    typer.echo(json.dumps(entry.to_json_dict(), indent=2))


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    lowered = text.strip().lower().removesuffix("ib").removesuffix("b")
    if lowered and lowered[-1] in units:
        return int(float(lowered[:-1]) * units[lowered[-1]])
    return int(lowered)


@app.command("run")
def run(
    ctx: typer.Context,
    source: str = typer.Option(..., "--source", help="sim | file:<path> | http(s)://... | "
                               "fault:<mode>[,k=v]"),
    key: Path = typer.Option(..., "--key", help="signing key file (qustream qrng keygen)"),
    source_id: str = typer.Option(..., "--source-id", help="the registered source id (with "
                                  "--lanes K: the device's; lane k publishes as <id>.lane-k)"),
    lanes: int = typer.Option(1, "--lanes", min=1, help="split the device into K lanes, each "
                              "its own hash chain and process (register them with qustream "
                              "genesis new --lanes K, or as <id>.lane-0 .. <id>.lane-(K-1))"),
    lane: int | None = typer.Option(None, "--lane", min=0, help="run only lane k of --lanes "
                                    "in this process (one process per lane under systemd or "
                                    "Kubernetes); without it --lanes K starts all K"),
    chunk_size: str = typer.Option("1MiB", "--chunk-size"),
    min_entropy: str = typer.Option("8", "--min-entropy", help="claimed H per sample"),
    alpha_exp: int = typer.Option(40, "--alpha-exp", help="alpha = 2^-N"),
    binary: bool = typer.Option(False, "--binary", help="1-bit samples"),
    recovery_windows: int = typer.Option(2048, "--recovery-windows"),
    checkpoint_chunks: int = typer.Option(64, "--checkpoint-chunks"),
    checkpoint_ms: int = typer.Option(1000, "--checkpoint-ms"),
    private_share: float = typer.Option(0.0, "--private-share", help="0..1 of chunks to "
                                        "entropy.private"),
    heartbeat_ms: int = typer.Option(2000, "--heartbeat-ms"),
    pace: bool = typer.Option(True, "--pace/--no-pace", help="reveal a public chunk only once "
                              "this source's previous one is in a finalized block on "
                              "chain.blocks (each chunk commits to the next one's bytes; a "
                              "source that saw them early could choose its own to steer the "
                              "beacon). Private chunks are never paced. --no-pace: ingest "
                              "without a chain (benchmarks, tests); the library's "
                              "IngestConfig is unpaced unless asked"),
    rate_floor: float = typer.Option(0.0, "--rate-floor", help="bytes/s; 0 = no alert"),
    stall_ms: int = typer.Option(5000, "--stall-ms"),
    auth_header: str | None = typer.Option(None, "--auth-header", envvar=
                                           "QUSTREAM_QRNG_AUTH_HEADER"),
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="with --lanes: lane "
                                            "k serves on this port + k"),
    max_bytes: str | None = typer.Option(None, "--max-bytes", help="stop after this much "
                                         "(per lane)"),
    duration_s: float | None = typer.Option(None, "--duration", help="stop after seconds"),
    quiet: bool = typer.Option(False, "--quiet", help="no live progress line"),
) -> None:
    """Run one QRNG ingest server until interrupted.

    --lanes K splits the device into K lanes, each its own source <id>.lane-k
    (own hash chain, sequence numbers, state file, checkpoints; one key)
    in its own process, so ingest grows with cores.

    Lanes never publish the same bytes:
    sim and fault sources draw independently in each lane;
    a character device (file:/dev/hwrng) is read by every lane;
    a regular file is striped: lane k reads chunks k, k+K, k+2K, ...;
    an http(s) appliance is opened once per lane: it must serve each its own bytes.

    A lane process that dies is restarted and resumes its own chain
    (lane logs: <state_dir>/qrng/lanes/).

    Paced (the default): each public chunk commits to the next chunk's bytes,
    which stay secret until the committing chunk is in a finalized block,
    so at most one public chunk per block and lane is published.
    Register lanes with qustream genesis new --lanes K;
    the two-source rule counts the lanes of a device as one source.
    """
    from protocol.entropy.chain import CheckpointPolicy
    from protocol.entropy.registry import RegistryError, lane_source_ids, source_id_problem

    if lane is not None and lane >= lanes:
        raise typer.BadParameter(f"lane {lane} is not one of the {lanes} lanes (0..{lanes - 1})",
                                 param_hint="--lane")
    try:
        problem = source_id_problem(lane_source_ids(source_id, lanes)[-1])  # everyone's rule
    except RegistryError as exc:
        problem = str(exc)
    if problem is not None:
        raise typer.BadParameter(problem, param_hint="--source-id")
    from services.qrng_ingest.core.liveness import LivenessPolicy
    from services.qrng_ingest.service import IngestConfig
    from streams.settings import load_settings

    settings = load_settings()
    device = IngestConfig(
        source_id=source_id, chunk_size=_size(chunk_size), min_entropy=Fraction(min_entropy),
        alpha_exponent=alpha_exp, binary=binary, recovery_windows=recovery_windows,
        checkpoint=CheckpointPolicy(checkpoint_chunks, checkpoint_ms),
        private_share=private_share, heartbeat_ms=heartbeat_ms,
        liveness=LivenessPolicy(rate_floor, stall_ms), metrics_port=metrics_port, pace=pace,
    )
    limit = _size(max_bytes) if max_bytes else None
    from protocol.keys import SigningKey
    from services.qrng_ingest.lanes import lane_config, lane_stripe
    from services.qrng_ingest.service import IngestReport, build_service
    from services.qrng_ingest.sources import parse_source

    if lanes > 1 and lane is None:
        # A setting that cannot work fails here, once, not in K restarting lane processes.
        device.health_parameters()
        SigningKey.load(key)
        parse_source(source, auth_header=auth_header).close()
        _run_lanes(ctx, settings.state_dir, device, lanes, auth_header)
        return
    config = lane_config(device, lanes, lane or 0)
    opened = parse_source(source, auth_header=auth_header,
                          stripe=lane_stripe(device, lanes, lane or 0))
    service = build_service(settings, config, opened, SigningKey.load(key))
    signal.signal(signal.SIGTERM, lambda *_: service.stop())
    signal.signal(signal.SIGINT, lambda *_: service.stop())
    started = time.monotonic()

    def line(report: IngestReport) -> str:
        elapsed = max(time.monotonic() - started, 1e-9)
        return (f"{config.source_id}: {report.health_state}  seq {report.last_seq}  "
                f"{report.published_bytes / elapsed / 1e6:.1f} MB/s published  "
                f"{report.dropped_bytes / 1e6:.1f} MB dropped  "
                f"failures RCT {report.rct_failures} APT {report.apt_failures}")

    if quiet:
        report = service.run(max_bytes=limit, duration_s=duration_s)
    else:
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            last = [0.0]

            def progress(report: IngestReport) -> None:
                if time.monotonic() - last[0] > 0.25:
                    last[0] = time.monotonic()
                    live.update(line(report))

            report = service.run(max_bytes=limit, duration_s=duration_s, on_progress=progress)
            live.update(line(report))
    typer.echo(json.dumps({"source_id": config.source_id, "last_seq": report.last_seq,
                           "published_chunks": report.published_chunks,
                           "dropped_bytes": report.dropped_bytes,
                           "withheld_bytes": report.withheld_bytes,
                           "alerts": [a.kind.value for a in report.alerts]}))


def _lane_argv(ctx: typer.Context, lane: int) -> tuple[str, ...]:
    """This ``qrng run`` command for lane ``lane`` alone: the options as given, plus
    ``--lane``; quiet (its output is a log file); the auth header stays in the environment
    (``QUSTREAM_QRNG_AUTH_HEADER``), out of the process list."""
    argv = [sys.executable, "-m", "streams.cli", "qrng", "run"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if value is None or param.name in ("lane", "quiet", "auth_header"):
            continue
        if getattr(param, "is_flag", False):  # typer's own click: no isinstance
            argv.extend(param.opts[:1] if value else param.secondary_opts[:1])
        else:
            argv.extend((param.opts[0], str(value)))
    return (*argv, "--lane", str(lane), "--quiet")


def _run_lanes(ctx: typer.Context, state_dir: Path, device: IngestConfig, lanes: int,
               auth_header: str | None) -> None:
    import threading

    from services.qrng_ingest.lanes import run_lanes

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    env = {"QUSTREAM_QRNG_AUTH_HEADER": auth_header} if auth_header else {}
    log_dir = state_dir / "qrng" / "lanes"
    console.print(f"{device.source_id}: {lanes} lanes, logs in {log_dir}")
    report = run_lanes(device, lanes, lambda lane: _lane_argv(ctx, lane), log_dir, stop,
                       env=env, on_event=console.print)
    typer.echo(json.dumps(report))
    if any(entry["exit_code"] not in (0, None) for entry in report["lanes"]) and not stop.is_set():
        raise typer.Exit(code=1)


@app.command("status")
def status(
    once: bool = typer.Option(False, "--once", help="print the table once, after catching up"),
    refresh_s: float = typer.Option(1.0, "--refresh", help="seconds between updates"),
) -> None:
    """Live table of every source seen on qrng.status (until Ctrl-C).

    On a terminal the table is redrawn in place; in a pipe or a file it is printed again every
    ``--refresh`` seconds (``--once``: once, after catching up)."""
    from services.qrng_ingest.monitor import StatusBoard
    from streams.codec import CodecError, default_codec
    from streams.console import output_console
    from streams.kafka import make_consumer
    from streams.settings import load_settings

    settings = load_settings()
    consumer = make_consumer(settings, f"qrng-status-{time.time_ns()}")
    consumer.subscribe([settings.topic("qrng.status")])
    board = StatusBoard()
    codec = default_codec()
    out = output_console()

    def drain(budget_s: float) -> int:
        seen = 0
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                if once and seen:
                    break
                continue
            try:
                board.apply(codec.decode(message.value))
            except CodecError:
                continue
            seen += 1
        return seen

    try:
        if once:
            drain(5.0)
            out.print(board.table())
            return
        if not out.is_terminal:
            while True:
                drain(refresh_s)
                out.print(board.table())
                out.file.flush()
        with Live(board.table(), console=out, refresh_per_second=2) as live:
            while True:
                drain(refresh_s)
                live.update(board.table())
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
