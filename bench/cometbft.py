"""CometBFT as the peer of ``bench.finality``: built once, run as a loopback localnet.

``ensure_binary`` builds the pinned ``cometbft`` (``VERSION``) from the Go module proxy with
``go install`` into ``.qustream/tools/cometbft-<version>/`` (a few minutes, first run only;
``.qustream/`` is never committed). ``run_localnet`` creates an n-validator testnet with
``cometbft testnet`` (Ed25519 keys, its default) and runs every node as its own process with the
built-in ``kvstore`` application, every listener on 127.0.0.1 (P2P and RPC on free ports, no
gRPC, pprof or Prometheus), every node a persistent peer of every other. The consensus settings
are CometBFT's defaults except:

- ``timeout_commit``: the wait after a commit before the next height (CometBFT's counterpart of
  ``qustream validator run --block-interval-ms``): 1 s for the latency run, 0 for throughput;
- ``peer_gossip_sleep_duration`` 10 ms (default 100 ms): how long a node's gossip routines sleep
  when a peer has nothing new to receive; at the default, CometBFT waits on it every step.

What is read back, from node 0's log (``log_level`` info, millisecond timestamps): for every
height, the time of the last ``Received proposal`` before its ``Finalizing commit of block``
(the proposal known to the node, to the block committed), and the commit times. The option
names and log messages are CometBFT's own (``config/config.go``, ``internal/consensus/
state.go`` of the pinned version).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from protocol.errors import OperationError
from streams.supervisor import ServiceSpec, Supervisor

VERSION = "v1.0.1"
MODULE = "github.com/cometbft/cometbft/cmd/cometbft"
GOSSIP_SLEEP = "10ms"
_LINE = re.compile(r"^I\[(\d{4}-\d{2}-\d{2}\|\d{2}:\d{2}:\d{2}\.\d{3})\] (.*)$")
_PROPOSAL = re.compile(r"Received proposal .*Proposal\{(\d+)/(\d+) ")
_COMMIT = re.compile(r"Finalizing commit of block .*\bheight=(\d+)")


class CometBftError(OperationError):
    """The peer could not be built or its localnet did not run."""


def tools_dir() -> Path:
    state = Path(os.environ.get("QUSTREAM_STATE_DIR", ".qustream"))
    return state / "tools" / f"cometbft-{VERSION}"


def ensure_binary(say: Callable[[str], None] = print) -> Path:
    """The pinned ``cometbft`` binary, built with ``go install`` on first use."""
    directory = tools_dir().resolve()
    binary = directory / "cometbft"
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        raise CometBftError(f"Go is needed to build CometBFT {VERSION} (the peer); install Go "
                            ">= 1.22 or run without --peer")
    directory.mkdir(parents=True, exist_ok=True)
    say(f"building CometBFT {VERSION} from the Go module proxy into {directory} (first run "
        "only; a few minutes)")
    started = time.monotonic()
    env = {**os.environ, "GOBIN": str(directory), "GOFLAGS": "-trimpath"}
    try:
        result = subprocess.run(["nice", "-n", "10", go, "install", f"{MODULE}@{VERSION}"],
                                env=env, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired as exc:
        raise CometBftError(f"go install {MODULE}@{VERSION} took over 30 minutes") from exc
    if result.returncode != 0 or not binary.exists():
        raise CometBftError(f"go install {MODULE}@{VERSION} failed:\n{result.stderr[-2000:]}")
    say(f"CometBFT {VERSION} built in {time.monotonic() - started:.0f} s")
    return binary


def _free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def _patch(config: Path, values: dict[tuple[str, str], str]) -> None:
    """Set ``key = value`` lines of a TOML file, by (section, key); "" is the top level."""
    section = ""
    lines = []
    missing = set(values)
    for line in config.read_text().splitlines():
        header = re.match(r"^\[([^\]]+)\]\s*$", line)
        if header:
            section = header.group(1)
        else:
            key = re.match(r"^([a-z_]+)\s*=", line)
            if key and (section, key.group(1)) in values:
                line = f"{key.group(1)} = {values[(section, key.group(1))]}"
                missing.discard((section, key.group(1)))
        lines.append(line)
    if missing:
        raise CometBftError(f"{config}: no such settings {sorted(missing)}")
    config.write_text("\n".join(lines) + "\n")


def _run(argv: list[str]) -> str:
    """A short ``cometbft`` command (bounded: it writes files and exits)."""
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True,
                              timeout=120).stdout
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise CometBftError(f"{' '.join(argv[:2])} failed: {exc}") from exc


def _configure(binary: Path, root: Path, validators: int, timeout_commit_ms: int) -> list[Path]:
    _run([str(binary), "testnet", "--v", str(validators), "--o", str(root),
          "--populate-persistent-peers=false"])
    homes = [root / f"node{i}" for i in range(validators)]
    ports = _free_ports(2 * validators)
    ids = [_run([str(binary), "show-node-id", "--home", str(home)]).strip() for home in homes]
    for i, home in enumerate(homes):
        peers = ",".join(f"{ids[j]}@127.0.0.1:{ports[2 * j]}"
                         for j in range(validators) if j != i)
        _patch(home / "config" / "config.toml", {
            ("", "proxy_app"): '"kvstore"',
            ("", "log_level"): '"info"',
            ("rpc", "laddr"): f'"tcp://127.0.0.1:{ports[2 * i + 1]}"',
            ("p2p", "laddr"): f'"tcp://127.0.0.1:{ports[2 * i]}"',
            ("p2p", "persistent_peers"): f'"{peers}"',
            ("p2p", "pex"): "false",
            ("p2p", "addr_book_strict"): "false",
            ("p2p", "allow_duplicate_ip"): "true",
            ("consensus", "timeout_commit"): f'"{timeout_commit_ms}ms"',
            ("consensus", "peer_gossip_sleep_duration"): f'"{GOSSIP_SLEEP}"',
            ("instrumentation", "prometheus"): "false",
        })
    return homes


def _stamp(text: str) -> float:
    moment = datetime.strptime(text, "%Y-%m-%d|%H:%M:%S.%f").replace(tzinfo=UTC)
    return moment.timestamp() * 1000


def parse_log(lines: Iterator[str]) -> list[tuple[int, float, float]]:
    """(height, proposal received ms, commit finalized ms) per committed height, in order.

    A node can commit a height whose proposal message it never received (the block parts and
    +2/3 precommits are enough, which happens under load at 16 validators): such a height
    counts for throughput, its proposal time is NaN and latency leaves it out."""
    proposals: dict[int, float] = {}
    out: list[tuple[int, float, float]] = []
    for line in lines:
        match = _LINE.match(line)
        if not match:
            continue
        at, message = _stamp(match.group(1)), match.group(2)
        proposal = _PROPOSAL.search(message)
        if proposal:
            proposals[int(proposal.group(1))] = at
            continue
        commit = _COMMIT.search(message)
        if commit:
            height = int(commit.group(1))
            out.append((height, proposals.pop(height, math.nan), at))
    return out


def run_localnet(binary: Path, validators: int, timeout_commit_ms: int, blocks: int,
                 timeout_s: float) -> list[tuple[int, float, float]]:
    """Run an n-validator localnet until node 0 committed ``blocks`` heights (or
    ``timeout_s``); returns ``parse_log`` of node 0. Every process is stopped and every file
    removed on the way out."""
    with tempfile.TemporaryDirectory(prefix="qustream-cometbft-") as tmp:
        root = Path(tmp)
        homes = _configure(binary, root / "net", validators, timeout_commit_ms)
        specs = [ServiceSpec(f"node{i}", (str(binary), "start", "--home", str(home)),
                             restart=False) for i, home in enumerate(homes)]
        supervisor = Supervisor(specs, root / "logs", max_restarts=0)
        log = supervisor.log_path("node0")
        try:  # started inside: a failure half-way still stops the nodes already running
            supervisor.start()
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                supervisor.tick()
                time.sleep(1)
                if log.exists() and _commits(log) >= blocks:
                    break
        finally:
            supervisor.stop(grace_s=5)
        if not log.exists():
            raise CometBftError(f"node0 of the {validators}-validator localnet wrote no log")
        with open(log, errors="replace") as handle:
            return parse_log(iter(handle))


def _commits(log: Path) -> int:
    with open(log, errors="replace") as handle:
        return sum(1 for line in handle if "Finalizing commit of block" in line)
