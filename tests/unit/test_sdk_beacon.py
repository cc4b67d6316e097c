"""The SDK's beacon: range verification (any changed byte fails) and exactly-once failover."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.pulse import PULSE_RANGE_MEDIA_TYPE
from sdk.beacon import (
    BeaconClient,
    FailoverBlockSource,
    verify_pulse_proof,
    verify_pulse_range,
    verify_pulse_range_bytes,
)
from sdk.errors import BlockRejectedError
from sdk.subscriber import BlockSubscriber, TrustedCheckpoint
from sdk.testing import LocalChain, flip_bit, make_local_chain
from services.gateway import beacon as gateway_beacon
from services.gateway.api import create_app
from tests.unit.test_gateway_api import make_gateway

HEIGHTS = 24


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> LocalChain:
    return make_local_chain(tmp_path_factory.mktemp("beacon"), HEIGHTS)


@pytest.fixture(scope="module")
def http(chain: LocalChain) -> TestClient:
    gateway, keys = make_gateway(chain)
    return TestClient(create_app(gateway), headers={"X-API-Key": keys["read"]})


@pytest.fixture(scope="module")
def anchor(chain: LocalChain) -> TrustedCheckpoint:
    return TrustedCheckpoint.from_genesis(chain.genesis)


def test_a_range_verifies_with_one_certificate(http: TestClient,
                                               anchor: TrustedCheckpoint) -> None:
    whole = http.get("/v1/beacon", params={"from": 1, "to": HEIGHTS}).json()
    pulses = verify_pulse_range(whole, anchor.next_validators, anchor=anchor)
    assert [p.height for p in pulses] == list(range(1, HEIGHTS + 1))
    assert [p.randomness.hex() for p in pulses] == [p["randomness"] for p in whole["pulses"]]
    middle = http.get("/v1/beacon", params={"from": 7, "to": 15}).json()
    assert [p.height for p in verify_pulse_range(middle, anchor.next_validators)] == list(
        range(7, 16))
    client = BeaconClient("http://testserver", checkpoint=anchor, client=http)
    assert [p.height for p in client.range(3, HEIGHTS)] == list(range(3, HEIGHTS + 1))


def _flip(document: dict[str, Any], path: tuple[Any, ...], byte: int, bit: int) -> None:
    target: Any = document
    for key in path[:-1]:
        target = target[key]
    raw = base64.b64decode(target[path[-1]])
    target[path[-1]] = base64.b64encode(flip_bit(raw, byte % len(raw), bit)).decode()


@pytest.fixture(scope="module")
def middle(http: TestClient) -> dict[str, Any]:
    document: dict[str, Any] = http.get("/v1/beacon", params={"from": 5, "to": 13}).json()
    return document


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(part=st.sampled_from(["header", "previous_header", "commit", "entropy"]),
       index=st.integers(0, 8), byte=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_any_changed_byte_fails(middle: dict[str, Any], anchor: TrustedCheckpoint, part: str,
                                index: int, byte: int, bit: int) -> None:
    document = copy.deepcopy(middle)
    if part == "header":
        _flip(document, ("pulses", index, "header"), byte, bit)
    elif part == "previous_header":
        _flip(document, ("previous_header",), byte, bit)
    elif part == "commit":
        _flip(document, ("commit",), byte, bit)
    else:
        item = document["pulses"][index]["entropy"][byte % 2]
        digest = bytearray(bytes.fromhex(item[2]))
        digest[byte % 32] ^= 1 << bit
        item[2] = digest.hex()
    with pytest.raises(BlockRejectedError):
        verify_pulse_range(document, anchor.next_validators)


def _binary(http: TestClient, first: int, last: int) -> bytes:
    answer = http.get("/v1/beacon", params={"from": first, "to": last},
                      headers={"Accept": PULSE_RANGE_MEDIA_TYPE})
    assert answer.headers["content-type"] == PULSE_RANGE_MEDIA_TYPE
    return answer.content


def test_a_binary_range_verifies_to_the_json_range_s_pulses(http: TestClient,
                                                            anchor: TrustedCheckpoint) -> None:
    for first, last in ((1, HEIGHTS), (7, 15), (HEIGHTS, HEIGHTS)):
        document = http.get("/v1/beacon", params={"from": first, "to": last}).json()
        expected = verify_pulse_range(document, anchor.next_validators, anchor=anchor)
        assert verify_pulse_range_bytes(_binary(http, first, last), anchor.next_validators,
                                        anchor=anchor) == expected
    with pytest.raises(BlockRejectedError, match="genesis"):
        verify_pulse_range_bytes(_binary(http, 1, 3), anchor.next_validators)


@pytest.fixture(scope="module")
def middle_bytes(http: TestClient) -> bytes:
    return _binary(http, 5, 13)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(position=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7),
       cut=st.integers(1, 64), junk=st.binary(min_size=1, max_size=8))
def test_any_changed_byte_of_a_binary_range_fails(middle_bytes: bytes,
                                                  anchor: TrustedCheckpoint, position: float,
                                                  bit: int, cut: int, junk: bytes) -> None:
    for changed in (flip_bit(middle_bytes, int(position * len(middle_bytes)), bit),
                    middle_bytes[:-cut], middle_bytes + junk):
        with pytest.raises(BlockRejectedError):
            verify_pulse_range_bytes(changed, anchor.next_validators)


@pytest.mark.parametrize("binary", [True, False])
def test_pages_verified_on_processes_link_up_and_short_pages_go_on(
        http: TestClient, anchor: TrustedCheckpoint, binary: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``workers=2``: pages fetched ahead, verified on two processes, each linked to the one
    before; the gateway serves at most 5 pulses a page while the client asks for 7, so every
    page comes back short and the client goes on from where it ended. Without ``binary`` the
    gateway answers JSON (one that predates the binary range) and the client verifies that."""
    monkeypatch.setattr(gateway_beacon, "MAX_PULSES", 5)
    if not binary:
        monkeypatch.setattr(gateway_beacon, "_wants", lambda request, media_type: False)
    serial = BeaconClient("http://testserver", checkpoint=anchor, client=http).range(1, HEIGHTS)
    client = BeaconClient("http://testserver", checkpoint=anchor, client=http)
    client.page_size = 7
    try:
        assert client.range(1, HEIGHTS, workers=2) == serial
        assert [p.height for p in serial] == list(range(1, HEIGHTS + 1))
        assert client.range(9, 9, workers=2) == serial[8:9]
        assert client.range(9, 8, workers=2) == []
    finally:
        client.close()


SCRIPT_WITHOUT_MAIN_GUARD = """
import pickle, sys
import httpx
from sdk.beacon import BeaconClient

anchor, pages, media_type = pickle.load(open(sys.argv[1], "rb"))

def answer(request):
    page = pages[int(request.url.params["from"])]
    return httpx.Response(200, content=page, headers={"content-type": media_type})

client = BeaconClient("http://gateway", checkpoint=anchor,
                      client=httpx.Client(transport=httpx.MockTransport(answer)))
client.page_size = 7
first = client.range(1, %(heights)d, workers=2)  # at import time: no main guard
again = client.range(3, 9, workers=2)
print("heights", [p.height for p in first] == list(range(1, %(heights)d + 1)),
      [p.height for p in again] == list(range(3, 10)), first[2:9] == again)
client.close()
"""


def test_a_range_called_without_a_main_guard_is_verified_here(
        http: TestClient, anchor: TrustedCheckpoint, tmp_path: Any) -> None:
    """The trap of every spawned-process program: a script that calls ``range(workers=2)``
    at import time. The verifier processes import the script again and die; the client says
    so once and verifies the pages in its own process, for that call and the next."""
    import pickle
    import subprocess
    import sys

    pages = {first: _binary(http, first, min(first + 6, HEIGHTS))
             for first in range(1, HEIGHTS + 1)}
    (tmp_path / "pages.pickle").write_bytes(
        pickle.dumps((anchor, pages, PULSE_RANGE_MEDIA_TYPE)))
    script = tmp_path / "no_guard.py"
    script.write_text(SCRIPT_WITHOUT_MAIN_GUARD % {"heights": HEIGHTS})
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "pages.pickle")],
                          capture_output=True, text=True, timeout=120,
                          cwd=str(Path(__file__).resolve().parents[2]))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "heights True True True", done.stdout
    assert done.stderr.count("verifying in this process from now on") == 1, done.stderr[-3000:]


def test_a_page_a_verifier_process_refuses_is_refused_here(
        http: TestClient, tmp_path: Any) -> None:
    other = TrustedCheckpoint.from_genesis(make_local_chain(tmp_path, 1).genesis)
    client = BeaconClient("http://testserver", checkpoint=other, client=http)
    try:
        with pytest.raises(BlockRejectedError, match="does not trust") as refused:
            client.range(2, HEIGHTS, workers=2)  # pickled back with its height and reason
        assert refused.value.height == HEIGHTS
        with pytest.raises(BlockRejectedError, match="does not link") as refused:
            client.range(1, HEIGHTS, workers=2)  # another genesis
        assert refused.value.height == 1
    finally:
        client.close()


def test_a_range_from_height_one_needs_the_genesis(http: TestClient,
                                                   anchor: TrustedCheckpoint) -> None:
    document = http.get("/v1/beacon", params={"from": 1, "to": 3}).json()
    with pytest.raises(BlockRejectedError):
        verify_pulse_range(document, anchor.next_validators)


def test_one_verified_head_proves_any_older_pulse(http: TestClient,
                                                 anchor: TrustedCheckpoint) -> None:
    client = BeaconClient("http://testserver", checkpoint=anchor, client=http)
    whole = {p.height: p for p in client.range(1, HEIGHTS)}
    for height in (1, 2, 7, 16, HEIGHTS - 1):
        assert client.pulse_with_proof(height) == whole[height]
        assert client.pulse_with_proof(height, head=height + 1) == whole[height]
    liar = BeaconClient("http://testserver", checkpoint=anchor, client=http)
    liar._get = lambda path, params=None, timeout_s=None: http.get(  # type: ignore[method-assign]
        "/v1/beacon/6/proof", params={"head": 20}).json()
    with pytest.raises(BlockRejectedError, match="proved another"):
        liar.pulse_with_proof(5)  # a genuine proof, of another pulse
    with pytest.raises(BlockRejectedError, match="proved another"):
        liar.pulse_with_proof(6, head=21)
    document = http.get("/v1/beacon/5/proof", params={"head": 20}).json()
    assert (document["head"], document["history"]["size"], document["history"]["index"]) == (
        20, 19, 4)
    assert len(document["history"]["path"]) <= (19 - 1).bit_length()  # O(log n)
    assert verify_pulse_proof(document, anchor.next_validators) == whole[5]


def test_a_genuine_pulse_of_another_height_or_time_is_refused(
        http: TestClient, anchor: TrustedCheckpoint, tmp_path: Any) -> None:
    """A gateway could choose among verified pulses (a lottery's, say): each lookup proves
    it got the one it asked for, from the pulse and the header before it."""
    client = BeaconClient("http://testserver", checkpoint=anchor, client=http)
    truth = {p.height: p for p in client.range(1, HEIGHTS)}
    at = truth[5].time_ms  # blocks are a second apart
    assert client.at_height(5) == truth[5] and client.latest() == truth[HEIGHTS]
    assert client.at_or_after(at) == client.at_or_after(at - 999) == truth[5]
    assert client.next(at) == truth[6] and client.previous(at) == truth[4]
    assert client.at_or_after(truth[1].time_ms - 5) == truth[1]
    liar = BeaconClient("http://testserver", checkpoint=anchor, client=http)
    for ask, served in ((lambda c: c.at_height(5), 6), (lambda c: c.at_or_after(at), 6),
                        (lambda c: c.at_or_after(at), 4), (lambda c: c.next(at), 5),
                        (lambda c: c.next(at), 7), (lambda c: c.previous(at), 5),
                        (lambda c: c.previous(at), 6)):
        liar._get = (lambda path, params=None, timeout_s=None, served=served:  # type: ignore[method-assign]
                     http.get(f"/v1/beacon/{served}").json())
        with pytest.raises(BlockRejectedError, match="the gateway answered"):
            ask(liar)
    quiet = make_local_chain(tmp_path, 5, sources_at=lambda height: 0 if height == 3 else 2)
    gateway, keys = make_gateway(quiet)
    other = TestClient(create_app(gateway), headers={"X-API-Key": keys["read"]})
    genesis = TrustedCheckpoint.from_genesis(quiet.genesis)
    liar = BeaconClient("http://testserver", checkpoint=genesis, client=other)
    assert not liar.at_height(3).is_random and liar.latest().height == 5
    liar._get = (lambda path, params=None, timeout_s=None:  # type: ignore[method-assign]
                 other.get("/v1/beacon/3").json())
    with pytest.raises(BlockRejectedError, match="latest random pulse"):
        liar.latest()  # a pulse computable in advance, passed off as the latest random one


def test_the_cli_prints_a_pulse_it_proved(http: TestClient, anchor: TrustedCheckpoint,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from sdk import beacon_cli

    # the command closes its client: give it its own
    monkeypatch.setattr(beacon_cli, "_client", lambda *args: BeaconClient(
        "http://testserver", checkpoint=anchor, client=TestClient(http.app)))
    result = CliRunner().invoke(beacon_cli.app, ["prove", "4", "--head", "9", "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert (printed["height"], printed["verified"]) == (4, True)
    assert printed["randomness"] == http.get("/v1/beacon/4").json()["randomness"]
    result = CliRunner().invoke(beacon_cli.app, ["range", "2", "9", "--workers", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["height"] for line in result.output.splitlines()] == list(
        range(2, 10))


@pytest.fixture(scope="module")
def proven(http: TestClient) -> dict[str, Any]:
    document: dict[str, Any] = http.get("/v1/beacon/6/proof", params={"head": 22}).json()
    return document


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(part=st.sampled_from(["pulse", "previous_header", "head_header", "commit", "path",
                             "height", "head"]),
       byte=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_a_tampered_proof_fails(proven: dict[str, Any], anchor: TrustedCheckpoint, part: str,
                                byte: int, bit: int) -> None:
    document = copy.deepcopy(proven)
    if part == "pulse":
        _flip(document, ("pulse", "header"), byte, bit)
    elif part == "path":
        path = document["history"]["path"]
        node = bytearray(bytes.fromhex(path[byte % len(path)]))
        node[byte % 32] ^= 1 << bit
        path[byte % len(path)] = node.hex()
    elif part == "height":  # the document claims another height for the same proof
        document["height"] += 1 + byte % 5
    elif part == "head":
        document["head"] -= 1 + byte % 5
    else:
        _flip(document, (part,), byte, bit)
    with pytest.raises(BlockRejectedError):
        verify_pulse_proof(document, anchor.next_validators)


def test_a_proof_of_another_pulse_fails(http: TestClient, anchor: TrustedCheckpoint) -> None:
    document = http.get("/v1/beacon/6/proof", params={"head": 22}).json()
    other = http.get("/v1/beacon/7/proof", params={"head": 22}).json()
    document["history"]["path"] = other["history"]["path"]
    with pytest.raises(BlockRejectedError, match="inclusion path"):
        verify_pulse_proof(document, anchor.next_validators)
    other["pulse"], other["previous_header"] = document["pulse"], document["previous_header"]
    with pytest.raises(BlockRejectedError):
        verify_pulse_proof(other, anchor.next_validators)


class FlakySource:
    """Serves the chain from a height, failing after ``fail_after`` records per connection and
    starting ``rewind`` heights early (a source that repeats what was already delivered)."""

    def __init__(self, records: tuple[bytes, ...], fail_after: list[int], rewind: int) -> None:
        self.records = records
        self.fail_after = list(fail_after)
        self.rewind = rewind
        self.connections = 0

    def from_height(self, height: int, time_ms: int | None) -> Iterator[bytes]:
        self.connections += 1
        budget = self.fail_after.pop(0) if self.fail_after else len(self.records)
        start = max(1, height - self.rewind)
        for count, raw in enumerate(self.records[start - 1:]):
            if count >= budget:
                raise ConnectionError("dropped")
            yield raw


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(drops=st.lists(st.lists(st.integers(0, 6), max_size=6), min_size=1, max_size=3),
       rewinds=st.lists(st.integers(0, 5), min_size=3, max_size=3))
def test_every_pulse_exactly_once_across_reconnects_and_sources(
        chain: LocalChain, anchor: TrustedCheckpoint, drops: list[list[int]],
        rewinds: list[int]) -> None:
    sources = [(f"source-{i}", FlakySource(chain.records, plan, rewinds[i]))
               for i, plan in enumerate(drops)]
    failover = FailoverBlockSource(sources, max_failures=len(sources) * 8, pause_s=0)
    subscriber = BlockSubscriber(failover, checkpoint=anchor)
    heights = []
    for block in subscriber:
        heights.append(block.height)
        if block.height == HEIGHTS:
            break
    assert heights == list(range(1, HEIGHTS + 1))
    assert failover.reading in {name for name, _ in sources}


def test_failover_gives_up_after_the_bound(chain: LocalChain,
                                           anchor: TrustedCheckpoint) -> None:
    dead = FlakySource(chain.records, [0] * 100, 0)
    failover = FailoverBlockSource([("a", dead), ("b", dead)], max_failures=5, pause_s=0)
    with pytest.raises(ConnectionError):
        list(BlockSubscriber(failover, checkpoint=anchor))
    assert dead.connections == 6

