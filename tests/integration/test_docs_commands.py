"""Every shell command that README.md and docs/*.md mark as runnable runs, against a short demo
network, and exits as documented.

Markers, in the Markdown source, an HTML comment right before a ``sh``/``bash`` fence:

- ``<!-- runnable -->``: the block runs here. Each command must exit 0, or N when its first line
  ends with the comment ``# exit N``.
- ``<!-- not-runnable: why -->``: shown to readers, not run here; the comment says why (a
  server that runs until stopped, a Kubernetes cluster, a tool we do not install ...).

Every ``sh``/``bash`` block carries one of the two, so nothing documented goes untested by
accident (``test_every_shell_block_is_marked``).

How they run: one demo network (``qustream demo``, its live view) in a scratch folder that
looks like a checkout to the commands (``.venv``, ``examples``, ``infra`` are links to this one;
its ``.qustream`` is its own), on the test cluster; the demo's gateway port replaces the
documented ``8080``. Each document's runnable blocks run in order in one bash session, as a
reader would type them into one terminal (variables carry over), commands one after the other,
each one's exit status recorded. The demo runs in a pseudo-terminal, and at the end that
terminal is closed as a window would be: the demo must stop every one of its services (SIGHUP),
which is the issue's "closing its terminal" case.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from infra.k8s.validate import helm_binary
from streams.settings import Settings
from tests.integration.test_demo import service_pids
from tests.support.processes import running

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
LINKED = (".venv", "examples", "infra", "schemas", "Makefile", "pyproject.toml")
FENCE = re.compile(r"^```(\w+)?\s*$")
EXPECTED_EXIT = re.compile(r"#\s*exit\s+(\d+)\b")
HEREDOC = re.compile(r"<<-?\s*'?(\w+)'?")
DOCUMENTED_PORT = "127.0.0.1:8080"
BLOCK_BUDGET_S = 420  # one document's commands (the audits re-verify the whole chain)


@dataclass(frozen=True)
class Block:
    document: Path
    line: int  # of the opening fence
    marker: str | None  # "runnable", "not-runnable: why", or None
    text: str


@dataclass(frozen=True)
class Command:
    block: Block
    text: str
    expected: int


def shell_blocks(document: Path) -> Iterator[Block]:
    lines = document.read_text().splitlines()
    index = 0
    while index < len(lines):
        opened = FENCE.match(lines[index])
        if opened is None:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        if opened.group(1) in ("sh", "bash", "shell", "console"):
            before = "\n".join(lines[:index]).rstrip()
            marker = None
            if before.endswith("-->"):
                comment = before[before.rfind("<!--") + 4:-3]
                marker = " ".join(comment.split())
            yield Block(document, index + 1, marker, "\n".join(lines[index + 1:end]))
        index = end + 1


def commands(block: Block) -> Iterator[Command]:
    """The block's commands: continuation lines joined, here-documents kept whole."""
    lines = block.text.splitlines()
    index = 0
    while index < len(lines):
        first = lines[index]
        if not first.strip() or first.lstrip().startswith("#"):
            index += 1
            continue
        taken = [first]
        while taken[-1].endswith("\\") and index + len(taken) < len(lines):
            taken.append(lines[index + len(taken)])
        heredoc = HEREDOC.search(first)
        if heredoc:
            while index + len(taken) < len(lines) and taken[-1].strip() != heredoc.group(1):
                taken.append(lines[index + len(taken)])
        expected = EXPECTED_EXIT.search(first.split("<<")[0])
        yield Command(block, "\n".join(taken), int(expected.group(1)) if expected else 0)
        index += len(taken)


def test_every_shell_block_is_marked() -> None:
    unmarked = [f"{b.document.name}:{b.line}" for d in DOCUMENTS for b in shell_blocks(d)
                if b.marker is None or not (b.marker == "runnable"
                                            or b.marker.startswith("not-runnable:"))]
    assert not unmarked, f"mark these blocks <!-- runnable --> or <!-- not-runnable: why -->: " \
                         f"{unmarked}"
    reasons = [b.marker for d in DOCUMENTS for b in shell_blocks(d)
               if b.marker and b.marker.startswith("not-runnable:")]
    assert all(len(r) > len("not-runnable: ") + 10 for r in reasons), reasons
    assert sum(b.marker == "runnable" for d in DOCUMENTS for b in shell_blocks(d)) >= 10


# ------------------------------------------------------------------ the demo network


class DemoNetwork:
    """``qustream demo`` on the test cluster, drawing its live view in a pseudo-terminal."""

    def __init__(self, settings: Settings, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        for name in LINKED:
            (folder / name).symlink_to(ROOT / name)
        self.settings = settings.model_copy(update={"state_dir": folder / ".qustream"})
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("QUSTREAM_")}
        self.env.update({**self.settings.to_env(), "QUSTREAM_STATE_DIR": ".qustream",
                         "QUSTREAM_TOOLS_BIN": str(helm_binary().parent),
                         "QUSTREAM_KAFKA_CONNECT_TIMEOUT_S": "30", "COLUMNS": "160"})
        self.env.pop("PYTHONPATH", None)
        self.output = bytearray()
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "qustream"), "demo", "--users", "1",
             "--gateway-port", str(self.port)],
            cwd=folder, env=self.env, stdin=slave, stdout=slave, stderr=slave,
            start_new_session=True, preexec_fn=_take_terminal)
        os.close(slave)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.output += chunk

    def text(self) -> str:
        return self.output.decode(errors="replace")

    def wait_ready(self, timeout_s: float = 400) -> None:
        """Until the gateway has verified a few blocks and its private pool holds bytes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.text()[-4000:]
            try:
                ready = httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=5)
                body = ready.json() if ready.status_code == 200 else {}
            except (httpx.HTTPError, ValueError):
                body = {}
            pool = body.get("private_pool") or {}
            if body.get("head", 0) >= 4 and pool.get("available_bytes", 0) >= 4096:
                return
            time.sleep(2)
        raise AssertionError(f"the demo network did not get ready:\n{self.text()[-4000:]}")

    def close_terminal(self) -> dict[str, int]:
        """Close the demo's terminal, as a window would be closed; the services it ran."""
        services = service_pids(self.settings)
        os.close(self.master)
        try:
            self.process.wait(90)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError("the demo did not end when its terminal closed") from None
        return services


def _take_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # the pseudo-terminal becomes the session's terminal


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def demo_network(_base_settings: Settings, kafka_bootstrap: str,
                 cassandra_contact: tuple[str, int],
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoNetwork]:
    from tests.conftest import TEST_PORTS

    host, port = cassandra_contact
    settings = _base_settings.model_copy(update={
        "topic_prefix": f"docs{os.getpid()}.",
        "kafka": _base_settings.kafka.model_copy(update={"bootstrap_servers": kafka_bootstrap}),
        "cassandra": _base_settings.cassandra.model_copy(update={
            "contact_points": host, "port": port, "keyspace": f"docs{os.getpid()}"}),
        "infra": _base_settings.infra.model_copy(update=TEST_PORTS),
    })
    network = DemoNetwork(settings, tmp_path_factory.mktemp("newcomer"))
    try:
        network.wait_ready()
        yield network
    finally:
        if network.process.poll() is None:
            network.process.send_signal(signal.SIGTERM)
            try:
                network.process.wait(60)
            except subprocess.TimeoutExpired:
                network.process.kill()


# ------------------------------------------------------------------ the documents


def _script(commands_: list[Command], port: int) -> str:
    parts = ["set -o pipefail"]
    for index, command in enumerate(commands_):
        parts.append(f'echo "__qs_begin__ {index}" >&2; __qs_t=$EPOCHREALTIME')
        parts.append(command.text.replace(DOCUMENTED_PORT, f"127.0.0.1:{port}"))
        # its exit status, then how long it took (seconds), for the report
        parts.append(f'echo "{index} $? $__qs_t $EPOCHREALTIME" >> "$QS_STATUS"')
    return "\n".join(parts) + "\n"


def run_document(network: DemoNetwork, document: Path) -> list[str]:
    """Run the document's runnable commands in one bash session; the mismatches."""
    runnable = [c for b in shell_blocks(document) if b.marker == "runnable"
                for c in commands(b)]
    if not runnable:
        return []
    status = network.folder / f"{document.stem}.status"
    status.write_text("")
    log = network.folder / f"{document.stem}.log"
    started = time.monotonic()
    with log.open("wb") as out:
        shell = subprocess.Popen(["bash", "-c", _script(runnable, network.port)],
                                 cwd=network.folder, env={**network.env, "QS_STATUS": str(status)},
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        try:
            shell.wait(BLOCK_BUDGET_S)
        except subprocess.TimeoutExpired:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
    took = time.monotonic() - started
    seen = {index: (int(code), float(end) - float(start)) for index, code, start, end
            in (line.split() for line in status.read_text().splitlines())}
    output = log.read_text(errors="replace")
    own = _per_command(output)
    problems = []
    for index, command in enumerate(runnable):
        where = f"{document.name}:{command.block.line}: {command.text.splitlines()[0][:120]}"
        got, ran_s = seen.get(str(index), (None, 0.0))
        if got is None:
            problems.append(f"{where}: did not finish within {BLOCK_BUDGET_S}s")
        elif got != command.expected:
            problems.append(f"{where}: exit {got} after {ran_s:.1f}s, documented "
                            f"{command.expected}\n"
                            f"--- its output ---\n{own.get(index, '')[-4000:]}")
    if problems:
        problems.append(f"--- end of the output of {document.name} ({took:.0f}s) ---\n"
                        f"{output[-2000:]}")
    return problems


def _per_command(output: str) -> dict[int, str]:
    """Each command's own output, split at the markers ``_script`` prints before it."""
    parts = re.split(r"^__qs_begin__ (\d+)$", output, flags=re.MULTILINE)
    return {int(parts[i]): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_documented_commands_run_as_printed(demo_network: DemoNetwork) -> None:
    problems: list[str] = []
    for document in DOCUMENTS:
        problems += run_document(demo_network, document)
    assert not problems, "\n".join(problems)


def test_closing_the_demos_terminal_stops_every_service(demo_network: DemoNetwork) -> None:
    services = demo_network.close_terminal()
    assert len(services) >= 8, (services, demo_network.text()[-3000:])
    deadline = time.monotonic() + 30
    while any(running(pid) for pid in services.values()) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = {name: pid for name, pid in services.items() if running(pid)}
    assert not left, (left, demo_network.text()[-3000:])
    assert not service_pids(demo_network.settings), "the run file outlived the demo"
    summary = json.loads((demo_network.folder / ".qustream" / "demo" / "summary.json").read_text())
    assert summary["blocks_finalized"] >= 4, summary
