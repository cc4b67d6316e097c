"""Issue 22, item 1: one device split into lanes, each its own hash chain; the two-source rule
counts devices, so lanes of one device never pass for two independent sources."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from protocol.entropy.chain import ChainHead, HealthSummary, extend, sign_checkpoint
from protocol.entropy.registry import (
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
