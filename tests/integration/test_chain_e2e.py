"""The network end to end on the real Kafka: real processes (4 validators, the tally, 2 QRNG
ingest servers) under the supervisor, and an independent verifier reading the topics afresh.

The QRNG servers read a FIFO that the test fills with OS random bytes at a fixed pace (the
simulator source is unthrottled and would take both cores); the ingest path (health tests,
hash chain, signed checkpoints) is the production one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from protocol.block import fresh_sources_of
from protocol.entropy.chain import Checkpoint, Chunk
from protocol.entropy.verifier import ChainVerifier, EntropyRejectedError
from protocol.keys import SigningKey
from services.ledger.core.chain_spec import ChainSpec, source_registry
from streams.admin import ensure_topics
from streams.chain_reader import VerifiedBlock, read_blocks
from streams.chain_wire import decode_finalized
from streams.codec import default_codec
from streams.kafka import Position, make_consumer
from streams.settings import Settings
from streams.supervisor import ServiceSpec, Supervisor

pytestmark = pytest.mark.integration

PY = sys.executable
CLI = (PY, "-m", "streams.cli")
REPO_ROOT = Path(__file__).resolve().parents[2]


def env_of(settings: Settings) -> dict[str, str]:
    return settings.to_env()


class PacedFifo:
    """A FIFO filled with ``size`` random bytes every ``interval_s`` (data is dropped while
    nobody reads, so a killed reader never blocks the test)."""

    def __init__(self, path: Path, size: int = 4096, interval_s: float = 0.1) -> None:
        os.mkfifo(path)
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        self._size, self._interval = size, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                os.write(self._fd, os.urandom(self._size))
            except BlockingIOError:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        os.close(self._fd)


@dataclass
class Network:
    settings: Settings
    root: Path
    validators: int
    supervisor: Supervisor
    fifos: list[PacedFifo] = field(default_factory=list)

    @property
    def genesis(self) -> Path:
        return self.root / "net" / "genesis.json"

    @property
    def chain_id(self) -> str:
        return ChainSpec.load(self.genesis).chain_id

    def key_address(self, name: str) -> bytes:
        """The address of the key file ``net/keys/<name>.json`` (e.g. ``validator-0``)."""
        return SigningKey.load(self.root / "net" / "keys" / f"{name}.json").address

    def blocks(self) -> list[VerifiedBlock]:
        return list(read_blocks(self.settings, ChainSpec.load(self.genesis).follower(),
                                idle_timeout_s=3))

    def wait_height(self, height: int, timeout_s: float) -> int:
        """Wait until chain.blocks holds ``height``; returns the height reached."""
        deadline = time.monotonic() + timeout_s
        reached = 0
        while time.monotonic() < deadline:
            self.supervisor.tick()
            reached = finalized_height(self.settings)
            if reached >= height:
                return reached
            time.sleep(0.5)
        return reached

    def log(self, name: str, tail: int = 3000) -> str:
        path = self.supervisor.log_path(name)
        return path.read_text()[-tail:] if path.exists() else ""

    def logs(self) -> str:
        """The end of every validator's log and the tally's, for a failure's message: when
        a height does not decide, the node that refused or went silent is in one of them.
        Each running one first writes its threads' stacks there (``kill -USR1``), which is
        where a silent node shows what it waits for."""
        names = [f"validator-{i}" for i in range(self.validators)] + ["tally"]
        running = {s.name: s.pid for s in self.supervisor.status() if s.pid is not None}
        for name in names:
            if name in running:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(running[name], signal.SIGUSR1)
        time.sleep(1)
        sources = [f"qrng-{i}" for i in range(len(self.fifos))]
        return "\n".join([*(f"--- {name}\n{self.log(name, 8000)}" for name in names),
                          *(f"--- {name}\n{self.log(name, 1500)}" for name in sources)])


def finalized_height(settings: Settings) -> int:
    """The height of the last block on chain.blocks (0 before the first). Its tail is read
    back, committed records only: counting offsets (a record and a marker per block) once made
    a tally killed in mid-transaction look like a block more, its aborted record and marker."""
    topic = settings.topic("chain.blocks")
    consumer = make_consumer(settings, f"probe-{time.time_ns()}")
    try:
        # read_committed: up to the last stable offset, before any open transaction
        last = consumer.last_record(topic, 0, consumer.watermarks(topic)[0],
                                    consumer.end_offsets(topic)[0])
        return 0 if last is None else decode_finalized(last.value).height
    finally:
        consumer.close()


def validator_spec(net_dir: Path, index: int, interval_ms: int = 1000,
                   extra: tuple[str, ...] = ()) -> ServiceSpec:
    return ServiceSpec(f"validator-{index}", (
        *CLI, "validator", "run", "--key", str(net_dir / "keys" / f"validator-{index}.json"),
        "--genesis", str(net_dir / "genesis.json"), "--block-interval-ms", str(interval_ms),
        *extra))


@pytest.fixture
def network_factory(settings: Settings, tmp_path: Path) -> Iterator[object]:
    made: list[Network] = []

    def make(validators: int = 4, interval_ms: int = 1000, sources: int = 2,
             byzantine: tuple[int, ...] = (), tally: bool = True,
             behaviour: str = "double-sign", byzantine_args: tuple[str, ...] = (),
             genesis_args: tuple[str, ...] = (), lanes: int = 1) -> Network:
        import subprocess

        net_dir = tmp_path / "net"
        subprocess.run([*CLI, "genesis", "new", "--validators", str(validators), "--accounts",
                        "3", "--sources", str(sources), "--lanes", str(lanes), "--out",
                        str(net_dir), *genesis_args],
                       check=True, capture_output=True, env={**os.environ, **env_of(settings)})
        ensure_topics(settings)
        specs = []
        fifos = []
        for index in range(sources):
            fifo = PacedFifo(tmp_path / f"qrng-{index}.fifo")
            fifos.append(fifo)
            specs.append(ServiceSpec(f"qrng-{index}", (
                *CLI, "qrng", "run", "--source", f"file:{fifo.path}", "--key",
                str(net_dir / "keys" / f"qrng-{index}.json"), "--source-id", f"qrng-{index}",
                "--chunk-size", "4KiB", "--checkpoint-chunks", "8", "--checkpoint-ms", "300",
                "--lanes", str(lanes), "--quiet"), env=env_of(settings)))
        for index in range(validators):
            spec = validator_spec(net_dir, index, interval_ms)
            argv = spec.argv
            if index in byzantine:  # the same node, misbehaving (tests/support/byzantine.py)
                argv = (sys.executable, "-m", "tests.support.byzantine", behaviour,
                        *argv[argv.index("--key"):], *byzantine_args)
            specs.append(ServiceSpec(spec.name, argv,
                                     env={**env_of(settings), "PYTHONPATH": str(REPO_ROOT)}))
        if tally:
            specs.append(ServiceSpec("tally", (*CLI, "tally", "run", "--genesis",
                                               str(net_dir / "genesis.json")),
                                     env=env_of(settings)))
        supervisor = Supervisor(specs, tmp_path / "logs", max_restarts=3)
        network = Network(settings, tmp_path, validators, supervisor, fifos)
        made.append(network)
        supervisor.start()
        return network

    yield make
    for network in made:
        network.supervisor.stop(grace_s=5)
        for fifo in network.fifos:
            fifo.close()


def verified_chunks(settings: Settings, genesis: Path) -> dict[tuple[str, int], Chunk]:
    """(source, seq) -> every chunk a verified checkpoint covers, read afresh from
    entropy.raw."""
    spec = ChainSpec.load(genesis)
    verifier = ChainVerifier(source_registry(spec.initial.app_state), allow_mid_stream=False)
    topic = settings.topic("entropy.raw")
    consumer = make_consumer(settings, f"entropy-check-{time.time_ns()}")
    codec = default_codec()
    out: dict[tuple[str, int], Chunk] = {}
    try:
        partitions = consumer.partitions(topic, 10)
        ends = {p: consumer.watermarks(topic, p)[1] for p in partitions}
        consumer.assign([Position(topic, p, 0) for p in partitions])
        done = {p for p, end in ends.items() if end == 0}
        deadline = time.monotonic() + 60
        while len(done) < len(partitions) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.offset + 1 >= ends[message.partition]:
                done.add(message.partition)
            schema, record = codec.decode(message.value)
            try:
                if schema == "EntropyChunkPublished":
                    verifier.accept_chunk(Chunk.from_record(record))
                else:
                    for chunk in verifier.accept_checkpoint(Checkpoint.from_record(record)):
                        out[(chunk.source_id, chunk.seq)] = chunk
            except EntropyRejectedError:
                continue
    finally:
        consumer.close()
    return out


def verified_entropy(settings: Settings, genesis: Path) -> dict[tuple[str, int], bytes]:
    """(source, seq) -> payload digest of every chunk a verified checkpoint covers."""
    return {key: chunk.payload_digest for key, chunk in verified_chunks(settings, genesis).items()}


def verify_chain(network: Network, minimum: int) -> list[VerifiedBlock]:
    """The independent verifier: every block re-verified from a fresh consumer (hash links,
    certificates against the set of the height, randomness, state hash by re-execution — all
    in ``read_blocks``), plus every entropy ref against the chunks on entropy.raw."""
    blocks = network.blocks()
    assert len(blocks) >= minimum, f"only {len(blocks)} blocks"
    heights = [b.record.height for b in blocks]
    assert heights == list(range(1, len(blocks) + 1)), "heights have a gap or repeat"
    entropy = verified_entropy(network.settings, network.genesis)
    last_seq: dict[str, int] = {}
    with_entropy = 0
    for block in blocks:
        refs = block.record.block.body.entropy
        with_entropy += bool(refs)
        for ref in refs:
            assert entropy.get((ref.source_id, ref.seq)) == ref.digest, (
                f"block {block.record.height}: {ref.source_id}#{ref.seq} is not a verified chunk")
            assert ref.seq == last_seq.get(ref.source_id, -1) + 1
            last_seq[ref.source_id] = ref.seq
    assert with_entropy >= len(blocks) // 2, "most blocks should carry entropy"
    return blocks


def test_thirty_blocks_end_to_end(network_factory: object) -> None:
    network = network_factory()  # type: ignore[operator]
    reached = network.wait_height(32, timeout_s=120)
    assert reached >= 32, (
        f"reached {reached}\n" + "\n".join(network.log(f"validator-{i}") for i in range(4))
        + network.log("tally"))
    blocks = verify_chain(network, 30)
    two_sources = sum(1 for b in blocks if len(b.record.block.header.entropy_ranges) == 2)
    assert two_sources >= len(blocks) // 2
    latencies = [b.record.finalized_at_ms - b.record.proposed_at_ms for b in blocks]
    assert sorted(latencies)[len(latencies) // 2] < 1000


def test_lanes_of_one_device_count_once_on_a_running_chain(network_factory: object) -> None:
    """Issue 22: two devices of two lanes each (``genesis new --lanes 2``, ``qrng run --lanes
    2``): the validators include all four lanes' chains, and every header counts devices."""
    network = network_factory(lanes=2)  # type: ignore[operator]
    reached = network.wait_height(12, timeout_s=120)
    assert reached >= 12, (
        f"reached {reached}\n" + "\n".join(network.log(f"validator-{i}") for i in range(4))
        + network.log("qrng-0"))
    blocks = verify_chain(network, 10)
    headers = [b.record.block.header for b in blocks]
    assert all(h.registered_sources == 2 for h in headers)  # 4 lanes, 2 devices
    lanes_seen = {r.source_id for h in headers for r in h.entropy_ranges}
    assert lanes_seen == {f"qrng-{d}.lane-{k}" for d in range(2) for k in range(2)}
    both_lanes = [h for h in headers if {r.source_id for r in h.entropy_ranges} >= {
        "qrng-0.lane-0", "qrng-0.lane-1"}]
    assert both_lanes, "no block mixes both lanes of qrng-0"
    previous: tuple[str, ...] | None = None
    for block in blocks:
        header, entropy = block.record.block.header, block.record.block.body.entropy
        devices = {r.source_id.split(".lane-")[0] for r in header.entropy_ranges}
        assert header.fresh_sources <= len(devices) <= 2
        if previous is not None:  # fresh: committed, and its lane was in the block before
            assert header.fresh_sources == fresh_sources_of(entropy, previous)
        previous = tuple(r.source_id for r in header.entropy_ranges)
    random = sum(1 for h in headers if h.fresh_sources == 2)
    assert random >= len(headers) // 2, f"only {random} of {len(headers)} pulses random"
