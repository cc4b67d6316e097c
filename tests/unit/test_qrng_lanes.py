"""Issue 22, item 1: one device split into lanes, each its own hash chain; the two-source rule
counts devices, so lanes of one device never pass for two independent sources."""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from protocol.entropy.chain import ChainHead, HealthSummary, extend, sign_checkpoint
from protocol.entropy.registry import (
    RegistryError,
    SourceRegistry,
    SourceRegistryEntry,
    count_devices,
    device_of,
    lane_source_id,
    lane_source_ids,
    source_id_problem,
)
from protocol.entropy.verifier import BadSignatureError, ChainVerifier, DigestMismatchError
from protocol.keys import SigningKey
from protocol.pulse import PulseStatus, is_random, pulse_status
from services.ledger.core import MICRO, Genesis, GenesisAccount, GenesisValidator
from services.ledger.core.app import LedgerApp
from services.ledger.core.genesis import GENESIS_RANDOMNESS_SIZE
from services.ledger.core.genesis_file import genesis_state, load_genesis
from services.ledger.core.params import Params
from services.ledger.core.tx import QrngSource
from services.ledger.genesis_cli import app as genesis_app
from services.qrng_ingest.cli import _lane_argv
from services.qrng_ingest.cli import app as qrng_app
from services.qrng_ingest.lanes import lane_config, lane_stripe, run_lanes
from services.qrng_ingest.service import IngestConfig
from services.qrng_ingest.sources import DeviceFileSource, SourceSpecError, Stripe, parse_source
from tests.unit.test_block import build, pool, tip

KEY = SigningKey.from_seed(bytes(range(32)))


@pytest.mark.parametrize(("source_id", "device"), [
    ("qrng-0", "qrng-0"),
    ("qrng-0.lane-0", "qrng-0"),
    ("qrng-0.lane-17", "qrng-0"),
    ("a.b.lane-2", "a.b"),
    ("qrng-0.lane-", "qrng-0.lane-"),  # no lane number: a source of its own
    ("qrng-0.lane-x", "qrng-0.lane-x"),
    (".lane-1", ".lane-1"),  # no device name
    ("qrng-0.lanes-1", "qrng-0.lanes-1"),
])
def test_device_of(source_id: str, device: str) -> None:
    assert device_of(source_id) == device


def test_lane_ids_are_valid_source_ids_of_their_device() -> None:
    assert lane_source_ids("qrng-0", 1) == ("qrng-0",)  # one lane: the source as before
    lanes = lane_source_ids("qrng-0", 3)
    assert lanes == tuple(lane_source_id("qrng-0", k) for k in range(3))
    assert all(source_id_problem(lane) is None and device_of(lane) == "qrng-0" for lane in lanes)
    assert count_devices((*lanes, "qrng-1", "qrng-2.lane-0", "qrng-2.lane-1")) == 3
    assert count_devices(("qrng-0", "qrng-1")) == 2  # no lanes: every source a device
    with pytest.raises(RegistryError, match="is a lane of 'qrng-0'"):
        lane_source_ids("qrng-0.lane-1", 2)


def test_a_lanes_chunks_never_verify_as_another_lanes() -> None:
    """The lanes share the device's key; a chunk digest and a checkpoint both name the source
    id, so neither a chunk nor a checkpoint moved to another lane's chain is accepted."""
    lane_0, lane_1 = lane_source_ids("qd", 2)
    registry = SourceRegistry(SourceRegistryEntry(lane, KEY.public_key, simulated=True)
                              for lane in (lane_0, lane_1))
    verifier = ChainVerifier(registry, allow_mid_stream=False)
    heads = {}
    for lane in (lane_0, lane_1):
        chunk, heads[lane] = extend(ChainHead(), source_id=lane, private=False,
                                    payload=b"p" * 64, produced_at_ms=1, simulated=True,
                                    health=HealthSummary())
        with pytest.raises(DigestMismatchError):
            verifier.accept_chunk(replace(chunk, source_id=lane_1 if lane == lane_0 else lane_0))
        verifier.accept_chunk(chunk)
    checkpoint = sign_checkpoint(KEY, source_id=lane_0, private=False, first_seq=0,
                                 head=heads[lane_0], signed_at_ms=2)
    with pytest.raises(BadSignatureError):
        verifier.accept_checkpoint(replace(checkpoint, source_id=lane_1,
                                           head_digest=heads[lane_1].digest))
    assert len(verifier.accept_checkpoint(checkpoint)) == 1
    assert (verifier.verified_seq(lane_0), verifier.verified_seq(lane_1)) == (0, -1)


def test_registered_sources_count_devices_and_the_pulse_rule_follows() -> None:
    two_lane_device = tuple(QrngSource(lane, KEY.public_key, True)
                            for lane in lane_source_ids("qrng-0", 2))
    genesis = _genesis(two_lane_device)
    app = LedgerApp()
    assert app.registered_sources(genesis_state(genesis)) == 1
    with_second = _genesis((*two_lane_device, QrngSource("qrng-1", KEY.public_key, True)))
    assert app.registered_sources(genesis_state(with_second)) == 2
    # A block of both lanes of qrng-0 on a chain with two devices registered: one device
    # contributed, so the pulse is marked, not served as random.
    lanes = {"qrng-0.lane-0": range(0, 3), "qrng-0.lane-1": range(0, 3)}
    chain_tip = dataclasses.replace(tip(last_seq=(("qrng-0.lane-0", 0), ("qrng-0.lane-1", 0))),
                                    registered_sources=2)
    header = build(chain_tip, pool(3, lanes)).header
    assert (header.fresh_sources, header.registered_sources) == (1, 2)
    assert not is_random(pulse_status(header))
    assert pulse_status(header) & PulseStatus.TOO_FEW_SOURCES


def _genesis(sources: tuple[QrngSource, ...]) -> Genesis:
    validator = SigningKey.from_seed(bytes([7]) * 32)
    return Genesis(
        chain_id="lanes", genesis_time_ms=1_700_000_000_000,
        genesis_randomness=bytes(GENESIS_RANDOMNESS_SIZE),
        validators=(GenesisValidator(validator.public_key, 10_000 * MICRO, 100_000_000,
                                     200_000_000, 10_000_000),),
        accounts=(GenesisAccount(validator.address, 1_000_000 * MICRO),),
        qrng_sources=sources, params=Params(),
    ).validate()


def test_genesis_new_registers_lanes_with_the_devices_key(tmp_path: Path) -> None:
    out = tmp_path / "net"
    result = CliRunner().invoke(genesis_app, ["new", "--out", str(out), "--validators", "1",
                                              "--sources", "2", "--lanes", "2",
                                              "--algorithm", "ed25519"])
    assert result.exit_code == 0, result.output
    genesis = load_genesis(out / "genesis.json")
    assert [s.source_id for s in genesis.qrng_sources] == [
        "qrng-0.lane-0", "qrng-0.lane-1", "qrng-1.lane-0", "qrng-1.lane-1"]
    for source in genesis.qrng_sources:
        device_key = SigningKey.load(out / "keys" / f"{device_of(source.source_id)}.json")
        assert source.public_key == device_key.public_key
    assert LedgerApp().registered_sources(genesis_state(genesis)) == 2


# --- ingest: K lane processes of one device -----------------------------------------------


def test_lanes_of_a_regular_file_read_disjoint_chunks_that_cover_it(tmp_path: Path) -> None:
    path = tmp_path / "entropy.bin"
    data = os.urandom(7 * 1024 + 100)  # 7 whole chunks of 1 KiB and a partial one
    path.write_bytes(data)
    device = IngestConfig(source_id="qd", chunk_size=1024)
    read: dict[int, list[bytes]] = {}
    for lane in range(3):
        source = parse_source(f"file:{path}", stripe=lane_stripe(device, 3, lane))
        assert "lane" in source.describe()
        read[lane] = []
        while block := source.read(1024):
            read[lane].append(block)
        source.close()
    chunks = [data[i:i + 1024] for i in range(0, len(data), 1024)]
    assert read == {lane: chunks[lane::3] for lane in range(3)}


def test_a_stripe_maps_lane_positions_into_its_own_blocks() -> None:
    stripe = Stripe(lane=1, lanes=2, block_size=10)
    assert stripe.locate(0) == (10, 10)
    assert stripe.locate(4) == (14, 6)  # a partial read continues inside the block
    assert stripe.locate(10) == (30, 10)
    with pytest.raises(SourceSpecError):
        Stripe(lane=2, lanes=2, block_size=10)


def test_a_character_device_is_read_by_every_lane_whole() -> None:
    source = DeviceFileSource("/dev/urandom", Stripe(1, 2, 1024))
    assert source.describe() == "device /dev/urandom"
    assert len(source.read(4096)) == 4096
    source.close()


def test_lane_settings_name_the_lane_and_keep_the_rest() -> None:
    device = IngestConfig(source_id="qd", chunk_size=2048, metrics_port=9100)
    assert lane_config(device, 1, 0) == device  # one lane: the source itself
    lane = lane_config(device, 4, 3)
    assert (lane.source_id, lane.metrics_port, lane.chunk_size) == ("qd.lane-3", 9103, 2048)
    assert lane_config(replace(device, metrics_port=None), 4, 3).metrics_port is None


def test_lane_command_repeats_the_options_for_one_lane(tmp_path: Path) -> None:
    """The command each lane process runs is this one with ``--lane k``: parsed again, it
    gives the same options (the auth header travels in the environment, not the argv)."""
    command = typer.main.get_command(qrng_app).commands["run"]  # type: ignore[attr-defined]
    args = ["--source", "sim", "--key", str(tmp_path / "k.json"), "--source-id", "qd",
            "--lanes", "2", "--binary", "--chunk-size", "64KiB", "--duration", "1.5",
            "--auth-header", "X-Key: secret"]
    ctx = command.make_context("run", list(args))
    argv = _lane_argv(ctx, 1)
    assert argv[:5] == (sys.executable, "-m", "streams.cli", "qrng", "run")
    assert "secret" not in " ".join(argv)
    again = command.make_context("run", list(argv[5:])).params
    assert again == {**ctx.params, "lane": 1, "quiet": True, "auth_header": None}


def test_run_lanes_supervises_one_process_per_lane_and_reports_each(tmp_path: Path) -> None:
    device = IngestConfig(source_id="qd", chunk_size=1024)

    def lane_argv(lane: int) -> tuple[str, ...]:
        return (sys.executable, "-c", f"print('noise'); print('{{\"lane\": {lane}}}')")

    report = run_lanes(device, 2, lane_argv, tmp_path, threading.Event())
    assert report == {"device": "qd", "lanes": [
        {"source_id": f"qd.lane-{lane}", "exit_code": 0, "restarts": 0,
         "report": {"lane": lane}} for lane in range(2)]}
