"""Issue 19, item 0: every block says how many registered sources contributed fresh entropy;
a pulse with none (or fewer than the two-source rule asks) is marked not random everywhere and
never served as the latest random pulse."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from protocol.check import check_header
from protocol.pulse import NOT_RANDOM, PulseStatus, is_random, pulse_status, required_sources
from sdk.subscriber import BlockSubscriber
from sdk.testing import LocalChain, make_local_chain
from services.demo import reset_qrng_state
from services.gateway.api import create_app
from streams.chain_wire import decode_finalized
from tests.unit.test_block import build, pool, tip
from tests.unit.test_gateway_api import make_gateway
from tests.unit.test_sdk_subscriber import ListSource


def _block():  # type: ignore[no-untyped-def]
    """A block of two sources at height 3 (on ``tests.unit.test_block``'s tip)."""
    return build(tip(), pool(3, {"a": range(1, 3), "b": range(1, 3)}))


# Height 1: both sources' first chunks, committed to by nothing (no fresh entropy); 2-3 random;
# 4 no entropy; 5 one source, whose chunk's commitment is two blocks old (no fresh entropy);
# 6 both, but only the source that was in 5 is fresh (one of two); 7 random again; 8 none.
SOURCES_AT = {4: 0, 5: 1, 8: 0}


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> LocalChain:
    return make_local_chain(tmp_path_factory.mktemp("pulses"), 8,
                            sources_at=lambda h: SOURCES_AT.get(h, 2))


@given(fresh=st.integers(0, 8), registered=st.integers(0, 8), height=st.integers(1, 10))
def test_status_rule(fresh: int, registered: int, height: int) -> None:
    header = dataclasses.replace(_block().header, height=height,
                                 fresh_sources=fresh, registered_sources=registered)
    status = pulse_status(header)
    assert is_random(status) == (fresh >= required_sources(registered) and fresh >= 1)
    assert bool(status & PulseStatus.NO_FRESH_ENTROPY) == (fresh == 0)
    assert bool(status & PulseStatus.CHAIN_START) == (height == 1)
    assert not (status & NOT_RANDOM) or not is_random(status)


def test_header_counts_are_checked() -> None:
    block = _block()
    assert block.header.fresh_sources == len(block.header.entropy_ranges) == 2
    lying = dataclasses.replace(block, header=dataclasses.replace(block.header, fresh_sources=3))
    assert lying.structural_problem() is not None
    wrong_count = dataclasses.replace(block, header=dataclasses.replace(
        block.header, registered_sources=block.header.registered_sources + 1))
    assert any(f.check == "entropy_sources" for f in check_header(tip(), None, wrong_count))


def test_statuses_of_the_local_chain(chain: LocalChain) -> None:
    statuses = [pulse_status(decode_finalized(raw).block.header) for raw in chain.records]
    assert [is_random(s) for s in statuses] == [False, True, True, False, False, False, True,
                                                False]
    assert statuses[0] & PulseStatus.NO_FRESH_ENTROPY and statuses[0] & PulseStatus.CHAIN_START
    assert statuses[3] & PulseStatus.NO_FRESH_ENTROPY
    assert statuses[4] & PulseStatus.NO_FRESH_ENTROPY
    assert statuses[5] & PulseStatus.TOO_FEW_SOURCES


def test_the_api_never_serves_a_non_random_pulse_as_the_latest(chain: LocalChain) -> None:
    gateway, keys = make_gateway(chain)
    http = TestClient(create_app(gateway), headers={"X-API-Key": keys["read"]})
    latest = http.get("/v1/beacon/latest").json()
    assert (latest["height"], latest["random"], latest["status"]) == (7, True, 0)
    flat = http.get("/v1/beacon/8").json()
    assert flat["random"] is False and flat["status"] & int(PulseStatus.NO_FRESH_ENTROPY)
    assert "NOT RANDOM" in flat["status_text"]
    head = http.get("/v1/chain/head").json()
    assert (head["height"], head["latest_random_height"]) == (8, 7)
    block = http.get("/v1/blocks/6").json()
    assert block["pulse"]["status"] == int(PulseStatus.TOO_FEW_SOURCES)


def test_the_sdk_marks_pulses_and_tracks_the_latest_random_one(chain: LocalChain) -> None:
    subscriber = BlockSubscriber(ListSource(list(chain.records)), genesis=chain.genesis)
    marks = [(block.height, block.is_random) for block in subscriber]
    assert [h for h, random in marks if not random] == [1, 4, 5, 6, 8]
    assert subscriber.latest_random is not None and subscriber.latest_random.height == 7


def test_demo_fresh_resets_the_qrng_servers_state(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "genesis.json").write_text('{"qrng_sources": [{"source_id": "qrng-lab"}]}')
    state = tmp_path / "qrng"
    state.mkdir()
    for name in ("qrng-0", "qrng-1", "qrng-1.lane-3", "qrng-lab", "someone-else"):
        (state / f"{name}.json").write_text("{}")
    deleted = reset_qrng_state(tmp_path, demo, Console(file=None, quiet=True))
    # the demo's own names, lanes included (--lanes), even when the genesis does not list them
    assert sorted(p.stem for p in deleted) == ["qrng-0", "qrng-1", "qrng-1.lane-3", "qrng-lab"]
    assert [p.name for p in state.iterdir()] == ["someone-else.json"]
