"""``qustream demo``: the whole network on one machine, with a live view.

What it does, in order (each step is idempotent, so a second run continues the same chain):

1. starts the embedded Kafka and Cassandra (or uses the configured external cluster);
2. writes a genesis with 4 validators, 2 simulated QRNG sources (``--lanes K``: each
   registered as K lanes, as ``genesis new --lanes K`` does) and funded accounts under
   ``<state_dir>/demo/`` unless one exists (``--fresh`` deletes the demo's chain first, with
   the QRNG servers' state files: a server that resumed its old hash chain on a new chain
   could never be included, and every pulse would lack fresh entropy). An existing genesis
   decides the network's shape; the demo names the options that ask for another one;
3. creates the catalogue's topics;
4. starts every service as its own OS process under ``streams.supervisor``: the QRNG servers,
   the validators (each with its block builder), the tally, the user command handler, the
   shard_writer and the block store's projector — the same commands a deployment runs;
5. registers a few users and stores encrypted records through the public CLI;
6. shows finalized blocks (verified from genesis, not taken from the topic on trust), QRNG
   health and rate, validator power, missed blocks and jail status, the monitor's active
   alerts, and the services;
7. on Ctrl-C, SIGTERM, SIGHUP (its terminal closed) or after ``--duration`` stops everything
   cleanly and prints a summary and how to inspect the chain.

No way of ending the demo leaves its services running: the signals above stop them; a
``kill -9`` of the demo makes the kernel stop them (``streams.supervisor.die_with_parent``); and
the running services are recorded in ``<state_dir>/demo/services.json``, so the next start
reports and stops whatever a previous run left (and refuses to start while another demo runs on
the same state directory).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from protocol.entropy.registry import device_of, lane_source_ids
from protocol.errors import OperationError
from streams.console import heading, output_console, shell_command
from streams.settings import Settings, load_settings
from streams.supervisor import (
    ServiceSpec,
    Supervisor,
    leftovers,
    previous_supervisor,
    stop_leftovers,
)

QUSTREAM = (sys.executable, "-m", "streams.cli")
MAX_SOURCES = 8
MAX_LANES = 4


class DemoRunningError(OperationError):
    """Another demo runs on the same state directory."""


class _Stopped(Exception):
    """SIGTERM or SIGHUP reached the demo: stop as on Ctrl-C."""


def _on_stop_signals() -> None:
    """SIGTERM and SIGHUP (a closed terminal) end the demo as Ctrl-C does: once."""
    def stop(signum: int, _frame: Any) -> None:
        for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(number, signal.SIG_IGN)  # the cleanup must not be interrupted
        raise _Stopped(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)


def _say(console: Console, text: str) -> None:
    """Print, unless the terminal is gone (closed with SIGHUP): stopping matters more."""
    with contextlib.suppress(OSError):
        console.print(text)


def _clear_leftovers(run_file: Path, console: Console) -> None:
    """Stop what a previous demo left running; refuse while another demo is in charge."""
    other = previous_supervisor(run_file)
    if other is not None:
        raise DemoRunningError(f"another demo (pid {other}) is running with this state "
                               f"directory ({run_file}); stop it first (kill {other})")
    found = leftovers(run_file)
    if found:
        names = ", ".join(f"{f.name} (pid {f.pid})" for f in found)
        console.print(f"[yellow]found {len(found)} services a previous demo left running: "
                      f"{names}; stopping them[/]")
        stop_leftovers(found, run_file)
    else:
        run_file.unlink(missing_ok=True)


# Blocks at the start of a run that may carry no fresh entropy: the sources' first chunks after a
# start are committed to by nothing, and a chunk is fresh only when its source was in the block
# before (docs/precommitment.md).
WARM_UP_BLOCKS = 3


@dataclass
class DemoView:
    """What the watcher threads have seen; read by the renderer. Guarded by ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    blocks: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=10))
    blocks_this_run: int = 0
    first_height: int | None = None
    head: dict[str, Any] | None = None
    finality_ms: list[int] = field(default_factory=list)
    entropy_chunks: int = 0
    not_random: int = 0  # blocks of this run whose pulse carries no fresh entropy
    # the same, past the run's first WARM_UP_BLOCKS (docs/precommitment.md: a source's first
    # chunk after a start is committed to by nothing, and fresh needs the block before too)
    not_random_warm: int = 0
    validators: list[dict[str, Any]] = field(default_factory=list)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    alerts: deque[str] = field(default_factory=lambda: deque(maxlen=5))
    open_alerts: Any = None  # the monitor's open alerts (core.alerts.OpenAlerts)
    users: list[str] = field(default_factory=list)
    errors: deque[str] = field(default_factory=lambda: deque(maxlen=5))


def _validator_rows(chain: Any) -> list[dict[str, Any]]:
    from services.ledger.core.queries import validators

    state = chain.app_state
    reduction = state.params.power_reduction
    rows = []
    for record in validators(state):
        info = state.signing_infos.get(record.address)
        rows.append({
            "address": record.address.hex(),
            "power": record.tokens // reduction,
            "missed": info.missed_count if info is not None else 0,
            "jailed": "tombstoned" if record.tombstoned else ("yes" if record.jailed else "no"),
            "in_set": record.address in chain.validators,
        })
    return rows


def _watch_blocks(settings: Settings, genesis: Path, view: DemoView, stop: threading.Event,
                  live_from: int) -> None:
    from protocol.follow import FollowError
    from services.consensus.chain_cli import block_summary
    from services.ledger.core.chain_spec import ChainSpec
    from streams.chain_reader import read_blocks

    while not stop.is_set():
        try:
            follower = ChainSpec.load(genesis).follower()
            for verified in read_blocks(settings, follower, follow=True):
                summary = block_summary(verified)
                with view.lock:
                    view.head = summary
                    view.validators = _validator_rows(verified.chain)
                    if summary["height"] >= live_from:
                        view.blocks.appendleft(summary)
                        view.blocks_this_run += 1
                        view.first_height = view.first_height or summary["height"]
                        view.finality_ms.append(summary["proposal_to_finality_ms"])
                        view.entropy_chunks += summary["entropy_chunks"]
                        view.not_random += not summary["random"]
                        if view.blocks_this_run > WARM_UP_BLOCKS:
                            view.not_random_warm += not summary["random"]
                if stop.is_set():
                    return
        except FollowError as exc:  # a block that does not verify: show it, keep watching
            with view.lock:
                view.errors.appendleft(f"chain verification failed: {exc}")
            stop.wait(2)
        except Exception as exc:  # the broker restarting, etc.: retry, the view says why
            with view.lock:
                view.errors.appendleft(f"block reader: {type(exc).__name__}: {exc}")
            stop.wait(2)


def _watch_qrng(settings: Settings, view: DemoView, stop: threading.Event) -> None:
    from streams.codec import CodecError, default_codec
    from streams.kafka import make_consumer

    codec = default_codec()
    consumer = make_consumer(settings, f"demo-view-{time.time_ns()}",
                             **{"auto.offset.reset": "latest"})
    consumer.subscribe([settings.topic("qrng.status")])
    try:
        while not stop.is_set():
            message = consumer.poll(0.5)
            if message is None:
                continue
            try:
                decoded = codec.decode(message.value)
            except CodecError:
                continue
            record = decoded.record
            with view.lock:
                if decoded.schema == "QrngHeartbeatEmitted":
                    view.sources[record["source_id"]] = record
                else:
                    view.alerts.appendleft(
                        f"{record['source_id']}: {record['kind']} {record.get('detail', '')}")
    finally:
        consumer.close()


def _watch_alerts(settings: Settings, view: DemoView, stop: threading.Event) -> None:
    """The monitor's open alerts, folded from the alerts topic as they come."""
    from services.monitor.alert_log import read_alerts
    from services.monitor.core.alerts import OpenAlerts, fold

    open_alerts = OpenAlerts()
    while not stop.is_set():
        try:
            for event in read_alerts(settings, follow=True, stop=stop.is_set):
                open_alerts = fold(open_alerts, event)
                with view.lock:
                    view.open_alerts = open_alerts
        except Exception as exc:  # the broker restarting, etc.: retry, the view says why
            with view.lock:
                view.errors.appendleft(f"alerts reader: {type(exc).__name__}: {exc}")
            stop.wait(2)


def _add_users(settings: Settings, demo_dir: Path, count: int, view: DemoView,
               stop: threading.Event) -> None:
    """Register users and store records through the public CLI, as an application would."""
    users_dir = demo_dir / "users"
    users_dir.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        if stop.is_set():
            return
        identity = users_dir / f"user-{index}.json"
        steps: list[tuple[str, ...]] = []
        if not identity.exists():
            steps.append(("keygen", "--out", str(identity)))
            steps.append(("register", "--identity", str(identity)))
        steps.append(("put", "profile", f"demo record {index} at {time.ctime()}",
                      "--identity", str(identity)))
        for step in steps:
            for _attempt in range(20):  # the handler may still be starting
                if stop.is_set():
                    return
                done = subprocess.run([*QUSTREAM, "users", *step], capture_output=True,
                                      text=True, timeout=120)
                if done.returncode == 0:
                    break
                stop.wait(3)
            else:
                with view.lock:
                    view.errors.appendleft(f"users {step[0]} failed: {done.stdout[-200:]}"
                                           f"{done.stderr[-200:]}")
                return
        user_id = json.loads(identity.read_text())["user_id"]
        with view.lock:
            view.users.append(user_id)


def _render(view: DemoView, supervisor: Supervisor, started: float, gateway: str = "") -> Group:
    with view.lock:
        blocks = Table(title="finalized blocks (each verified from genesis)", expand=True)
        for column in ("height", "round", "randomness", "signers", "power", "entropy",
                       "txs", "proposal→final"):
            blocks.add_column(column)
        for b in list(view.blocks):
            randomness = b["randomness"][:24] + "…"
            if not b["random"]:
                randomness = f"[red]NOT RANDOM[/] {randomness[:12]}…"
            blocks.add_row(str(b["height"]), str(b["round"]), randomness,
                           str(b["signers"]), str(b["signed_power"]),
                           f"{b['entropy_chunks']} chunks", str(b["txs"]),
                           f"{b['proposal_to_finality_ms']} ms")
        sources = Table(title="QRNG sources", expand=True)
        for column in ("source", "state", "rate", "last seq", "heartbeat age", "simulated"):
            sources.add_column(column)
        now_ms = int(time.time() * 1000)
        for source_id, hb in sorted(view.sources.items()):
            sources.add_row(source_id, hb["health_state"], f"{hb['bytes_per_s'] / 1e6:.2f} MB/s",
                            str(hb["last_seq"]), f"{(now_ms - hb['at_ms']) / 1000:.1f} s",
                            str(hb["simulated"]))
        validators = Table(title="validators", expand=True)
        for column in ("address", "power", "missed", "jailed", "in set"):
            validators.add_column(column)
        for v in view.validators:
            validators.add_row(v["address"][:16] + "…", str(v["power"]), str(v["missed"]),
                               v["jailed"], "yes" if v["in_set"] else "no")
        alerts = Table(title="active alerts (qustream alerts watch)", expand=True)
        for column in ("severity", "rule", "subject", "for", "summary"):
            alerts.add_column(column)
        now_ms = int(time.time() * 1000)
        for alert in sorted(view.open_alerts.alerts.values() if view.open_alerts else (),
                            key=lambda a: a.since_ms):
            style = "red" if alert.severity == "critical" else "yellow"
            alerts.add_row(f"[{style}]{alert.severity}[/]", alert.rule, alert.subject[:16],
                           f"{max(0, now_ms - alert.since_ms) / 1000:.0f} s", alert.summary)
        services = Table(title="services", expand=True)
        for column in ("service", "pid", "state", "restarts"):
            services.add_column(column)
        for status in supervisor.status():
            services.add_row(status.name, str(status.pid or "-"), status.state.value,
                             str(status.restarts))
        notes = [gateway] if gateway else []
        notes += [f"running {time.monotonic() - started:.0f} s; "
                 f"{view.blocks_this_run} blocks finalized this run; "
                 f"users registered: {len(view.users)}"]
        notes += [f"[yellow]{a}[/]" for a in view.alerts]
        notes += [f"[red]{e}[/]" for e in view.errors]
    return Group(blocks, sources, validators, alerts, services, Panel("\n".join(notes)))


def _demo_api_key(settings: Settings, demo_dir: Path) -> str:
    """The demo's ready-made API key (all scopes), created once; only its hash is in the store.

    The store is the gateway's default one (``<state_dir>/gateway/api-keys.json``), the file
    ``qustream gateway api-key create`` writes: a key made by hand works with the demo's
    gateway too."""
    from services.gateway.auth import ApiKeyStore
    from services.gateway.cli import default_keys_file

    saved = demo_dir / "gateway" / "demo-api-key"
    if saved.exists():
        key = saved.read_text().strip()
        if ApiKeyStore(default_keys_file(settings)).lookup(key) is not None:
            return key
        saved.unlink()  # the store was reset: make a new key
    done = subprocess.run([*QUSTREAM, "gateway", "api-key", "create", "--scopes",
                           "read,keys,users", "--label", "demo", "--rate", "500", "--burst",
                           "1000"], check=True, capture_output=True, text=True)
    key = done.stdout.strip().splitlines()[-1]
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.touch(mode=0o600)
    saved.write_text(key + "\n")
    return key


def genesis_command(demo_dir: Path, validators: int, sources: int,
                    lanes: int) -> tuple[str, ...]:
    """The ``genesis new`` that makes the demo's chain: its QRNG sources ``qrng-N`` with their
    keys ``keys/qrng-N.json``, each registered as ``lanes`` lanes."""
    return (*QUSTREAM, "genesis", "new", "--out", str(demo_dir), "--validators", str(validators),
            "--sources", str(sources), "--lanes", str(lanes), "--accounts", "3")


def qrng_devices(genesis: Mapping[str, Any]) -> dict[str, int]:
    """The QRNG devices a genesis registers, each with its number of lanes (1: no lanes)."""
    devices: dict[str, int] = {}
    for source in genesis["qrng_sources"]:
        device = device_of(str(source["source_id"]))
        devices[device] = devices.get(device, 0) + 1
    return devices


def genesis_mismatch(genesis: Mapping[str, Any], validators: int, sources: int,
                     lanes: int) -> str | None:
    """What an existing demo genesis has that the options ask otherwise (the chain keeps its
    genesis), or None."""
    devices = qrng_devices(genesis)
    has = {"--validators": len(genesis["validators"]), "--sources": len(devices),
           "--lanes": max(devices.values(), default=1)}
    asked = {"--validators": validators, "--sources": sources, "--lanes": lanes}
    differ = [f"{option} {has[option]}, not {asked[option]}" for option in asked
              if has[option] != asked[option]]
    if not differ:
        return None
    return (f"the demo chain keeps its genesis ({'; '.join(differ)}); --fresh starts a new "
            "chain with the options given")


def service_specs(demo_dir: Path, validators: int, devices: Mapping[str, int],
                  block_interval_ms: int, qrng_rate: str, gateway_port: int) -> list[ServiceSpec]:
    """The demo's services: ``qrng-N`` for each QRNG device (``devices``: id -> lanes),
    ``validator-N``, the tally, the user handler and shard writer, the block store, the monitor
    and the gateway."""
    genesis = str(demo_dir / "genesis.json")
    keys = demo_dir / "keys"
    # One ``qrng run`` per device; with lanes it starts and restarts the lane processes itself.
    specs = [
        ServiceSpec(device, (*QUSTREAM, "qrng", "run", "--source", f"sim,rate={qrng_rate}",
                             "--key", str(keys / f"{device}.json"), "--source-id", device,
                             "--lanes", str(lanes), "--chunk-size", "64KiB", "--checkpoint-ms",
                             "250", "--private-share", "0.2", "--pace", "--quiet"))
        for device, lanes in devices.items()
    ]
    specs += [
        ServiceSpec(f"validator-{i}", (*QUSTREAM, "validator", "run", "--key",
                                       str(keys / f"validator-{i}.json"), "--genesis", genesis,
                                       "--state-dir", str(demo_dir / "validators"),
                                       "--block-interval-ms", str(block_interval_ms)))
        for i in range(validators)
    ]
    specs.append(ServiceSpec("tally", (*QUSTREAM, "tally", "run", "--genesis", genesis)))
    specs.append(ServiceSpec("users-handler", (*QUSTREAM, "users", "handler")))
    specs.append(ServiceSpec("shard-writer", (*QUSTREAM, "users", "shard-writer")))
    specs.append(ServiceSpec("block-store", (*QUSTREAM, "blocks", "project", "--genesis",
                                             genesis)))
    specs.append(ServiceSpec("monitor", (*QUSTREAM, "monitor", "run", "--genesis", genesis,
                                         "--quiet")))
    specs.append(ServiceSpec("gateway", (*QUSTREAM, "gateway", "run", "--host", "127.0.0.1",
                                         "--port", str(gateway_port), "--genesis", genesis,
                                         "--delivery-key",
                                         str(demo_dir / "gateway" / "delivery-key.json"))))
    return specs


def _delete_demo_topics(settings: Settings, console: Console) -> None:
    from streams.admin import delete_topics
    from streams.topics import CATALOGUE

    names = delete_topics(settings, [settings.topic(s.name) for s in CATALOGUE])
    if names:
        console.print(f"deleted {len(names)} topics of the previous demo chain")


def reset_qrng_state(state_dir: Path, demo_dir: Path, console: Console) -> list[Path]:
    """Delete the state files of the demo's QRNG servers (``<state_dir>/qrng/<id>.json``):
    a new chain expects every source from sequence 0, and a server resuming its old chain
    would publish chunks no block can include. Returns the files deleted."""
    source_ids = {source_id for index in range(MAX_SOURCES) for lanes in range(1, MAX_LANES + 1)
                  for source_id in lane_source_ids(f"qrng-{index}", lanes)}  # the demo's naming
    try:
        genesis = json.loads((demo_dir / "genesis.json").read_text())
        source_ids |= {str(source["source_id"]) for source in genesis.get("qrng_sources", ())}
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no previous genesis (or an unreadable one): the default names only
    deleted = []
    for source_id in sorted(source_ids):
        path = state_dir / "qrng" / f"{source_id}.json"
        if path.exists():
            path.unlink()
            deleted.append(path)
    if deleted:
        console.print(f"reset the state of {len(deleted)} QRNG servers "
                      f"({', '.join(p.stem for p in deleted)})")
    return deleted


def demo(
    duration: float | None = typer.Option(None, "--duration",
                                          help="Stop after this many seconds (default: Ctrl-C)."),
    fresh: bool = typer.Option(False, "--fresh",
                               help="Delete the previous demo chain and start a new genesis."),
    validators: int = typer.Option(4, min=1, max=16, help="Validators in a new genesis."),
    sources: int = typer.Option(2, min=1, max=MAX_SOURCES,
                                help="Simulated QRNG sources in a new genesis."),
    lanes: int = typer.Option(1, min=1, max=MAX_LANES,
                              help="Lanes of each QRNG source in a new genesis."),
    users: int = typer.Option(3, min=0, max=50, help="Users to register and write records for."),
    block_interval_ms: int = typer.Option(1000, help="Pause between blocks."),
    qrng_rate: str = typer.Option("512KiB", help="Rate of each simulated QRNG source (of "
                                  "each lane with --lanes)."),
    gateway_port: int = typer.Option(8080, help="Port of the HTTP gateway (loopback)."),
    live: bool = typer.Option(True, "--live/--plain",
                              help="Live terminal view, or one line per block (logs, CI)."),
) -> None:
    """Run the whole QuStream network locally and watch it finalize randomness."""
    from infra.local.cluster import LocalCluster
    from streams.admin import ensure_topics

    console = output_console()
    settings = load_settings()
    demo_dir = settings.state_dir / "demo"
    run_file = demo_dir / "services.json"
    heading(console, "QuStream demo")
    _clear_leftovers(run_file, console)
    LocalCluster(settings, console=console).up()
    if fresh:
        _delete_demo_topics(settings, console)
        reset_qrng_state(settings.state_dir, demo_dir, console)
        shutil.rmtree(demo_dir, ignore_errors=True)
    if not (demo_dir / "genesis.json").exists():
        subprocess.run(genesis_command(demo_dir, validators, sources, lanes), check=True)
    genesis = json.loads((demo_dir / "genesis.json").read_text())
    mismatch = genesis_mismatch(genesis, validators, sources, lanes)
    if mismatch is not None:
        console.print(f"[yellow]{mismatch}[/]", soft_wrap=True)
    for report in ensure_topics(settings):
        if report.status == "drift":
            console.print(f"[yellow]topic {report.topic} drifted: {'; '.join(report.drift)}[/]")

    api_key = _demo_api_key(settings, demo_dir)
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    console.print(f"explorer: {gateway_url}/   (every block verified in your browser; API "
                  f"reference {gateway_url}/docs)", soft_wrap=True)
    console.print(f"gateway: {gateway_url}   API key: {api_key}   (saved in "
                  f"{demo_dir / 'gateway' / 'demo-api-key'})", soft_wrap=True)
    supervisor = Supervisor(service_specs(demo_dir, len(genesis["validators"]),
                                          qrng_devices(genesis), block_interval_ms, qrng_rate,
                                          gateway_port),
                            demo_dir / "logs", run_file=run_file)
    view = DemoView()
    stop = threading.Event()
    started = time.monotonic()
    live_from = _current_height(settings, demo_dir) + 1
    threads = [
        threading.Thread(target=_watch_blocks, daemon=True,
                         args=(settings, demo_dir / "genesis.json", view, stop, live_from)),
        threading.Thread(target=_watch_qrng, args=(settings, view, stop), daemon=True),
        threading.Thread(target=_watch_alerts, args=(settings, view, stop), daemon=True),
        threading.Thread(target=_add_users, args=(settings, demo_dir, users, view, stop),
                         daemon=True),
    ]
    printed = 0
    ended_by = "Ctrl-C"
    try:  # from the first service on, every way out goes through the cleanup below
        _on_stop_signals()
        supervisor.start()
        for thread in threads:
            thread.start()
        if live and console.is_terminal:
            banner = f"explorer {gateway_url}/  API key {api_key}"
            with Live(_render(view, supervisor, started, banner), console=console,
                      refresh_per_second=2) as screen:
                while duration is None or time.monotonic() - started < duration:
                    supervisor.tick()
                    screen.update(_render(view, supervisor, started, banner))
                    time.sleep(0.5)
        else:
            while duration is None or time.monotonic() - started < duration:
                # soft_wrap: one line per block even when stdout is not a terminal (a
                # pipe or CI log, where rich would otherwise wrap at 80 columns).
                for event in supervisor.tick():
                    console.print(f"[yellow]{event}[/]", soft_wrap=True)
                with view.lock:
                    new = list(view.blocks)[: view.blocks_this_run - printed]
                    printed = view.blocks_this_run
                for b in reversed(new):
                    mark = "" if b["random"] else " [red]NOT RANDOM[/]"
                    console.print(f"block {b['height']} round {b['round']} randomness "
                                  f"{b['randomness'][:24]}…{mark} signers {b['signers']} entropy "
                                  f"{b['entropy_chunks']} chunks {b['proposal_to_finality_ms']} ms",
                                  soft_wrap=True)
                time.sleep(0.5)
        ended_by = f"--duration {duration:g} s"
    except KeyboardInterrupt:
        pass
    except _Stopped as signalled:
        ended_by = str(signalled)
    except OSError:  # the terminal went away (its window closed) while the view was drawn
        ended_by = "the terminal closed"
    finally:
        for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(number, signal.SIG_IGN)  # nothing may interrupt the cleanup
        stop.set()
        _say(console, f"stopping services ({ended_by}) ...")
        supervisor.stop(grace_s=15)
    try:
        _summary(console, view, supervisor, demo_dir, time.monotonic() - started, gateway_url,
                 api_key)
    except OSError:  # the terminal is gone; summary.json was written
        raise typer.Exit(0) from None


def _current_height(settings: Settings, demo_dir: Path) -> int:
    """Height of the last finalized block before this run (0 for a new chain)."""
    from services.ledger.core.chain_spec import ChainSpec
    from streams.chain_reader import catch_up

    follower = catch_up(settings, ChainSpec.load(demo_dir / "genesis.json").follower())
    return follower.next_height - 1


def _summary(console: Console, view: DemoView, supervisor: Supervisor, demo_dir: Path,
             elapsed: float, gateway_url: str, api_key: str) -> None:
    with view.lock:
        warm = max(0, view.blocks_this_run - WARM_UP_BLOCKS)
        finality = sorted(view.finality_ms)
        summary = {
            "blocks_finalized": view.blocks_this_run,
            "first_height": view.first_height,
            "head_height": view.head["height"] if view.head else None,
            "head_randomness": view.head["randomness"] if view.head else None,
            "entropy_chunks": view.entropy_chunks,
            "pulses_not_random": view.not_random,
            "finality_p50_ms": finality[len(finality) // 2] if finality else None,
            "users_registered": len(view.users),
            "alerts_open": sorted(f"{a.rule} {a.subject}" for a in
                                  (view.open_alerts.alerts.values() if view.open_alerts else ())),
            "seconds": round(elapsed, 1),
            "service_restarts": {s.name: s.restarts for s in supervisor.status() if s.restarts},
            # A few marked pulses are normal (the blocks before the sources' chunks are
            # precommitted, a source restarting); most of a run without fresh entropy past its
            # warm-up is a broken network.
            "errors": list(view.errors) + (
                [f"{view.not_random_warm} of {warm} blocks after the first {WARM_UP_BLOCKS} "
                 "carried no fresh entropy from enough sources (their pulses are marked not "
                 "random; see dlq.entropy)"]
                if view.not_random_warm * 2 > warm else []),
        }
    (demo_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    heading(console, "summary")
    console.print_json(json.dumps(summary))
    genesis = demo_dir / "genesis.json"
    validator = view.validators[0]["address"] if view.validators else "ADDRESS"
    account = demo_dir / "keys" / "account-0.json"
    console.print(
        "Inspect the chain (every block re-verified from genesis):\n"
        f"  {shell_command('chain head --genesis', str(genesis))}\n"
        f"  {shell_command('chain block 1 --genesis', str(genesis))}\n"
        f"  {shell_command('chain follow --genesis', str(genesis))}\n"
        f"Send a transaction:  {shell_command('tx delegate --key', str(account))}"
        f" --validator {validator} --amount 100 --genesis {genesis}\n"
        f"Explorer (while the demo runs): {gateway_url}/\n"
        f"HTTP API (while the demo runs): curl -H 'Authorization: Bearer {api_key}' "
        f"{gateway_url}/v1/beacon/latest\n"
        f"Alerts the monitor raised: {shell_command('alerts list --all')}\n"
        f"Service logs: {demo_dir / 'logs'}/   Cluster: {shell_command('infra status')}",
        soft_wrap=True,
    )
    if view.blocks_this_run == 0:
        raise typer.Exit(1)
