"""The browser's verdicts agree with the SDK's, block by block, on 100 blocks (some tampered).

A local chain of 100 blocks signed with ML-DSA-65 is served by an in-process gateway whose
data source holds, at a dozen heights, a tampered record (each kind of ``TAMPERINGS``). The
explorer's block list verifies all 100 in Chromium; the SDK's light subscriber verifies each
same served record against the block before it as served (a checkpoint made from it) and the
validator set of the height. Same verdict per block; where both reject, the page names the
check that ``protocol.check`` finds first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.chain import ChainTip
from protocol.check import check_commit, check_header
from protocol.keys import Algorithm
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


class _One:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def records(self, after: int | None):  # type: ignore[no-untyped-def]
        yield 0, self.raw


def _sdk_verdicts(chain: LocalChain, served_records: list[bytes]) -> dict[int, str | None]:
    """Per height: None when the SDK accepts the served record, else the first failed check
    (``protocol.check``'s name) — the SDK itself only says accept or reject, with a reason."""
    spec = ChainSpec.load(chain.genesis)
    genesis = TrustedCheckpoint.from_genesis(chain.genesis)
    follower = spec.follower()
    verdicts: dict[int, str | None] = {}
    previous: TrustedCheckpoint = genesis
    for height, (honest, raw) in enumerate(zip(chain.records, served_records, strict=True), 1):
        validators = follower.chain.validators
        follower.accept(decode_finalized(honest))
        checkpoint = TrustedCheckpoint(previous.chain_id, previous.height, previous.block_hash,
                                       previous.randomness, previous.time_ms, validators)
        subscriber = BlockSubscriber(_One(raw), checkpoint=checkpoint)
        try:
            accepted = [block.height for block in subscriber]
            verdicts[height] = None if accepted == [height] else "unknown"
        except BlockRejectedError:
            record = decode_finalized(raw)
            header = record.block.header
            tip = ChainTip(previous.chain_id, height, previous.block_hash, previous.time_ms,
                           previous.randomness, (), header.app_hash, validators.hash(),
                           header.next_validators_hash)
            findings = check_header(tip, validators, record.block)
            commit = check_commit(header.chain_id, validators, record.block, record.commit)
            verdicts[height] = (findings[0].check if findings
                                else commit.check if commit else "rejected")
        record = decode_finalized(raw)
        header = record.block.header
        previous = TrustedCheckpoint(header.chain_id, height, record.block.hash,
                                     header.randomness, header.time_ms, validators)
    return verdicts


def test_browser_and_sdk_agree_on_100_blocks(tmp_path: Path) -> None:
    chain = make_local_chain(tmp_path / "chain", HEIGHTS, algorithm=Algorithm.ML_DSA_65)
    served_records = list(chain.records)
    kinds = list(TAMPERINGS.items())
    expected: dict[int, str] = {}
    for index, height in enumerate(range(FIRST_TAMPERED, HEIGHTS + 1, EVERY)):
        _name, (check, change) = kinds[index % len(kinds)]
        served_records[height - 1] = change(served_records[height - 1])
        expected[height] = check
    sdk = _sdk_verdicts(chain, served_records)
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
