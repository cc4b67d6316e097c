"""The browser's verdicts agree with the SDK's, block by block, on 100 blocks (some tampered,
some honest but not random).

A local chain of 100 blocks signed with ML-DSA-65 is served by an in-process gateway whose
data source holds, at a dozen heights, a tampered record (each kind of ``TAMPERINGS``); some
honest blocks carry no fresh entropy or entropy of one source only. The explorer's block list
verifies all 100 in Chromium; the SDK's light subscriber verifies each same served record
against the block before it as served (a checkpoint made from it) and the validator set of the
height. Same verdict per block; where both reject, the page names the check that
``protocol.check`` finds first; where both accept, the same pulse verdict (random or not),
which the page computes from the header it verified.

And a network whose head block has no fresh entropy: the page marks it not random, with the
status text, and its "latest random pulse" is the last random block, as /v1/beacon/latest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from protocol.chain import ChainTip
from protocol.check import check_commit, check_header
from protocol.keys import Algorithm
from protocol.pulse import PulseStatus, describe
from sdk.errors import BlockRejectedError
from sdk.subscriber import BlockSubscriber, TrustedCheckpoint
from sdk.testing import LocalChain, make_local_chain
from services.gateway.api import create_app
from services.ledger.core.chain_spec import ChainSpec
from streams.chain_wire import decode_finalized
from tests.browser.chains import TAMPERINGS, local_gateway
from tests.browser.harness import chromium, report, served, wait_for

pytestmark = pytest.mark.timeout(300)

HEIGHTS = 100
FIRST_TAMPERED, EVERY = 7, 8  # heights 7, 15, 23, ...: never adjacent


def _sources_at(height: int) -> int:
    """Of the 2 registered sources, how many contribute to ``height``: none at 2, 10, 18, ...
    (status 256), one at 4, 12, 20, ... (status 512); never at a tampered height."""
    return {2: 0, 4: 1}.get(height % EVERY, 2)


class _One:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def records(self, after: int | None):  # type: ignore[no-untyped-def]
        yield 0, self.raw


def _sdk_verdicts(chain: LocalChain, served_records: list[bytes]
                  ) -> tuple[dict[int, str | None], dict[int, bool | None]]:
    """Per height: None when the SDK accepts the served record, else the first failed check
    (``protocol.check``'s name) — the SDK itself only says accept or reject, with a reason; and
    the accepted block's ``is_random`` (None for a rejected one)."""
    spec = ChainSpec.load(chain.genesis)
    genesis = TrustedCheckpoint.from_genesis(chain.genesis)
    follower = spec.follower()
    verdicts: dict[int, str | None] = {}
    random: dict[int, bool | None] = {}
    previous: TrustedCheckpoint = genesis
    for height, (honest, raw) in enumerate(zip(chain.records, served_records, strict=True), 1):
        validators = follower.chain.validators
        follower.accept(decode_finalized(honest))
        checkpoint = TrustedCheckpoint(previous.chain_id, previous.height, previous.block_hash,
                                       previous.randomness, previous.time_ms, validators)
        subscriber = BlockSubscriber(_One(raw), checkpoint=checkpoint)
        random[height] = None
        try:
            accepted = list(subscriber)
            verdicts[height] = None if [b.height for b in accepted] == [height] else "unknown"
            random[height] = accepted[0].is_random if accepted else None
        except BlockRejectedError:
            record = decode_finalized(raw)
            header = record.block.header
            # a light client's tip, as the SDK's subscriber builds it: no commitments
            tip = ChainTip(previous.chain_id, height, previous.block_hash, previous.time_ms,
                           previous.randomness, (), header.app_hash, validators.hash(),
                           header.next_validators_hash, header.registered_sources,
                           commitments=None, previous_sources=None)
            findings = check_header(tip, validators, record.block)
            commit = check_commit(header.chain_id, validators, record.block, record.commit)
            verdicts[height] = (findings[0].check if findings
                                else commit.check if commit else "rejected")
        record = decode_finalized(raw)
        header = record.block.header
        previous = TrustedCheckpoint(header.chain_id, height, record.block.hash,
                                     header.randomness, header.time_ms, validators)
    return verdicts, random


def test_browser_and_sdk_agree_on_100_blocks(tmp_path: Path) -> None:
    chain = make_local_chain(tmp_path / "chain", HEIGHTS, algorithm=Algorithm.ML_DSA_65,
                             sources_at=_sources_at)
    served_records = list(chain.records)
    kinds = list(TAMPERINGS.items())
    expected: dict[int, str] = {}
    for index, height in enumerate(range(FIRST_TAMPERED, HEIGHTS + 1, EVERY)):
        _name, (check, change) = kinds[index % len(kinds)]
        served_records[height - 1] = change(served_records[height - 1])
        expected[height] = check
    sdk, sdk_random = _sdk_verdicts(chain, served_records)
    for height, check in expected.items():
        assert sdk[height] == check, (height, sdk[height], check)

    with served(create_app(local_gateway(chain, served_records))) as url, \
            chromium(tmp_path / "profile") as driver:
        driver.get(f"{url}/blocks?from=1&count={HEIGHTS}")
        wait_for(driver, "return document.querySelector('#summary[data-done]')", 180)
        browser = driver.execute_script(
            "return Object.fromEntries([...document.querySelectorAll('#blocks tr[data-height]')]"
            ".map(row => [row.dataset.height, row.querySelector('[data-verdict]')"
            ".dataset.verdict]))")
        browser_random = driver.execute_script(
            "return Object.fromEntries([...document.querySelectorAll('#blocks tr[data-height]')]"
            ".map(row => [row.dataset.height, row.querySelector('[data-random]')"
            ".dataset.random]))")
        driver.save_screenshot(str(tmp_path / "blocks-100.png"))
        page = report(driver)
    assert not page.console_errors, page.console_errors
    assert not page.off_loopback, page.off_loopback

    browser_verdicts = {int(h): (None if v == "verified" else v) for h, v in browser.items()}
    assert sorted(browser_verdicts) == list(range(1, HEIGHTS + 1))
    disagreements = {h: (browser_verdicts[h], sdk[h]) for h in sdk
                     if (browser_verdicts[h] is None) != (sdk[h] is None)}
    assert not disagreements, f"browser vs SDK verdicts differ: {disagreements}"
    named = {h: (browser_verdicts[h], sdk[h]) for h in sdk if browser_verdicts[h] != sdk[h]}
    assert not named, f"the page names another check than protocol.check: {named}"
    rejected = [h for h, v in sdk.items() if v is not None]
    assert set(expected) <= set(rejected) and len(rejected) < HEIGHTS // 2
    assert {v for v in sdk.values()} >= {None, *expected.values()}

    pulses = {int(h): {"true": True, "false": False}.get(v) for h, v in browser_random.items()}
    differ = {h: (pulses[h], sdk_random[h]) for h in sdk_random if pulses[h] != sdk_random[h]}
    assert not differ, f"browser vs SDK random verdicts differ: {differ}"
    assert {True, False, None} <= set(sdk_random.values())
    # 2: no entropy; 3: both sources, neither in 2 (not fresh); 4: one source; 5: one of the two
    # sources was in 4; 6: both, both in 5 (docs/precommitment.md)
    assert [sdk_random[h] for h in range(2, 7)] == [False, False, False, False, True]


def test_a_head_without_fresh_entropy_is_marked_not_random(tmp_path: Path) -> None:
    # Two sources registered; block 5 has one, blocks 6 and 7 (the head) none.
    contributing = {5: 1, 6: 0, 7: 0}
    chain = make_local_chain(tmp_path / "chain", 7, sources_at=lambda h: contributing.get(h, 2))
    with served(create_app(local_gateway(chain))) as url, \
            chromium(tmp_path / "profile") as driver:
        driver.get(f"{url}/")
        wait_for(driver, "return document.body.dataset.ready")
        head_mark = wait_for(driver, "return document.querySelector('#blocks tr[data-height"
                                     "=\"7\"] [data-random]:not([data-random=unknown])')")
        assert head_mark.get_attribute("data-random") == "false"
        assert head_mark.text == "⚠ not random"
        assert describe(PulseStatus.NO_FRESH_ENTROPY) in head_mark.get_attribute("title")
        assert driver.find_element("css selector", "#head [data-random]").text == "⚠ not random"
        wait_for(driver, "return document.querySelector('#pulse[data-height]')")
        pulse = driver.find_element("css selector", "#pulse")
        assert pulse.get_attribute("data-height") == "4", pulse.text  # as /v1/beacon/latest
        assert "pulse 4" in pulse.text and "random" in pulse.text
        rows = driver.execute_script(
            "return [...document.querySelectorAll('#blocks tr[data-height]')].map(r => "
            "[Number(r.dataset.height), r.querySelector('[data-random]').dataset.random])")
        assert dict(rows) == {2: "true", 3: "true", 4: "true", 5: "false", 6: "false",
                              7: "false"}
        driver.save_screenshot(str(tmp_path / "home-not-random.png"))

        driver.get(f"{url}/blocks/7")
        line = wait_for(driver, "return document.querySelector('#pulse-status')")
        assert _verdict_of(driver) == "verified"
        assert line.get_attribute("data-random") == "false"
        assert line.get_attribute("data-status") == str(int(PulseStatus.NO_FRESH_ENTROPY))
        assert describe(PulseStatus.NO_FRESH_ENTROPY) in line.text
        driver.get(f"{url}/blocks/5")
        line = wait_for(driver, "return document.querySelector('#pulse-status')")
        assert describe(PulseStatus.TOO_FEW_SOURCES) in line.text

        driver.get(f"{url}/beacon")  # by default the latest random pulse
        wait_for(driver, "return document.querySelector('#pulse-status')")
        assert driver.find_element("css selector", "#pulse h2").text == "Pulse 4"
        assert driver.find_element("css selector", "#pulse-status").get_attribute(
            "data-random") == "true"
        page = report(driver)
    assert not page.console_errors, page.console_errors


def _verdict_of(driver: Any) -> str:
    return str(driver.find_element("css selector", "#verdict strong[data-verdict]")
               .get_attribute("data-verdict"))
