"""BlockSubscriber on a locally made chain: every check, tampering, gaps, resume, skipping."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from protocol.commit import CommitFlag, CommitSig
from protocol.validators import ValidatorSet
from sdk.errors import BlockGapError, BlockRejectedError, ForkDetectedError
from sdk.subscriber import BlockSubscriber, TrustedCheckpoint, parse_sse
from sdk.testing import LocalChain, flip_bit, make_local_chain, resign, tamper
from tests.support.block_sources import ListSource


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> LocalChain:
    return make_local_chain(tmp_path_factory.mktemp("chain"), 12)


def _modes(chain: LocalChain) -> list[dict[str, object]]:
    return [{"genesis": chain.genesis},
            {"checkpoint": TrustedCheckpoint.from_genesis(chain.genesis)}]


def test_every_block_verifies_in_both_modes(chain: LocalChain) -> None:
    for mode in _modes(chain):
        blocks = list(BlockSubscriber(ListSource(list(chain.records)), **mode))  # type: ignore[arg-type]
        assert [b.height for b in blocks] == list(range(1, 13))


def _reject(chain: LocalChain, index: int, bad: bytes, mode: dict[str, object]) -> str:
    records = list(chain.records)
    records[index] = bad
    subscriber = BlockSubscriber(ListSource(records), **mode)  # type: ignore[arg-type]
    seen = []
    with pytest.raises(BlockRejectedError) as caught:
        for block in subscriber:
            seen.append(block.height)
    assert seen == list(range(1, index + 1)), "nothing after the bad block is yielded"
    assert caught.value.height in (index + 1, None)
    return caught.value.reason


def test_bit_flip_in_randomness_is_rejected(chain: LocalChain) -> None:
    bad = tamper(chain.records[4], header=lambda h: dataclasses.replace(
        h, randomness=flip_bit(h.randomness, 5, 3)))
    for mode in _modes(chain):
        assert "randomness is not the derived value" in _reject(chain, 4, bad, mode)


def test_removed_signature_is_rejected(chain: LocalChain) -> None:
    def strip(cert):  # type: ignore[no-untyped-def]
        sigs = list(cert.signatures)
        sigs[1] = CommitSig(CommitFlag.COMMIT, sigs[1].validator_address, b"")
        return dataclasses.replace(cert, signatures=tuple(sigs))

    def drop_two(cert):  # type: ignore[no-untyped-def]
        sigs = [CommitSig(CommitFlag.ABSENT, s.validator_address, b"") if i < 2 else s
                for i, s in enumerate(cert.signatures)]
        return dataclasses.replace(cert, signatures=tuple(sigs))

    for mode in _modes(chain):
        assert "flag and signature disagree" in _reject(
            chain, 6, tamper(chain.records[6], commit=strip), mode)
        assert "not more than 2/3" in _reject(
            chain, 6, tamper(chain.records[6], commit=drop_two), mode)


def test_wrong_validator_set_is_rejected(chain: LocalChain, tmp_path: Path) -> None:
    bad = tamper(chain.records[2], header=lambda h: dataclasses.replace(
        h, validators_hash=bytes(32)))
    for mode in _modes(chain):
        assert "validators hash" in _reject(chain, 2, bad, mode)
    # A subscriber trusting another set rejects the genuine chain.
    other = make_local_chain(tmp_path / "other", 1)
    checkpoint = dataclasses.replace(TrustedCheckpoint.from_genesis(chain.genesis),
                                     next_validators=ValidatorSet.of(
                                         TrustedCheckpoint.from_genesis(other.genesis)
                                         .next_validators.validators))
    with pytest.raises(BlockRejectedError, match="wrong validator set"):
        list(BlockSubscriber(ListSource(list(chain.records)), checkpoint=checkpoint))


def test_a_signed_header_with_a_wrong_history_root_is_refused(chain: LocalChain,
                                                              tmp_path: Path) -> None:
    # signed by the validators, so only the history check can tell
    bad = resign(tamper(chain.records[5], header=lambda h: dataclasses.replace(
        h, history_root=bytes(32))), chain.validator_keys)
    for mode in _modes(chain):
        assert "history root" in _reject(chain, 5, bad, mode)
    first = BlockSubscriber(ListSource(list(chain.records[:5])), genesis=chain.genesis)
    assert [b.height for b in first][-1] == 5
    first.checkpoint().save(tmp_path / "cp.json")
    loaded = TrustedCheckpoint.load(tmp_path / "cp.json")
    assert loaded.accumulator is not None
    assert loaded.accumulator == first.checkpoint().accumulator
    assert loaded.accumulator.size == 5
    with pytest.raises(BlockRejectedError, match="history root"):
        BlockSubscriber(ListSource([]), checkpoint=loaded).verify(bad, 5)
    assert BlockSubscriber(ListSource([]), checkpoint=loaded).verify(chain.records[5], 5)


def test_gap_and_fork_are_detected(chain: LocalChain) -> None:
    records = list(chain.records)
    del records[3]
    for mode in _modes(chain):
        with pytest.raises(BlockGapError):
            list(BlockSubscriber(ListSource(records), **mode))  # type: ignore[arg-type]
    subscriber = BlockSubscriber(ListSource([]), checkpoint=TrustedCheckpoint.from_genesis(
        chain.genesis))
    for position, raw in enumerate(chain.records[:3]):
        subscriber.verify(raw, position)
    assert subscriber.verify(chain.records[1], 9) is None  # duplicate: skipped
    forged = tamper(chain.records[1],
                    header=lambda h: dataclasses.replace(h, time_ms=h.time_ms + 1))
    # unsigned: not a fork, skipped (and listed) without stopping the stream
    assert subscriber.verify(forged, 10) is None
    assert subscriber.skipped[-1][0] == 10
    assert subscriber.verify(chain.records[3], 11) is not None
    with pytest.raises(ForkDetectedError):  # signed by the validators: a fork
        subscriber.verify(resign(forged, chain.validator_keys), 12)


def test_resume_from_a_stored_position_and_checkpoint(chain: LocalChain, tmp_path: Path) -> None:
    first = BlockSubscriber(ListSource(list(chain.records[:5])), genesis=chain.genesis)
    assert [b.height for b in first][-1] == 5
    stored = (first.position, first.last.height)  # type: ignore[union-attr]
    again = BlockSubscriber(ListSource(list(chain.records)), genesis=chain.genesis,
                            resume_after=stored)  # type: ignore[arg-type]
    assert [b.height for b in again] == list(range(6, 13))
    first.checkpoint().save(tmp_path / "cp.json")
    light = BlockSubscriber(ListSource(list(chain.records)),
                            checkpoint=TrustedCheckpoint.load(tmp_path / "cp.json"),
                            resume_after=stored)  # type: ignore[arg-type]
    assert [b.height for b in light] == list(range(6, 13))


def test_light_client_skips_ahead(chain: LocalChain) -> None:
    subscriber = BlockSubscriber(ListSource([]), checkpoint=TrustedCheckpoint.from_genesis(
        chain.genesis))
    assert subscriber.skip_to(chain.records[9], 9).height == 10
    assert subscriber.verify(chain.records[10], 10) is not None  # derivation resumes
    bad = tamper(chain.records[11], commit=lambda c: dataclasses.replace(
        c, signatures=tuple(CommitSig(CommitFlag.ABSENT, s.validator_address, b"")
                            for s in c.signatures)))
    fresh = BlockSubscriber(ListSource([]), checkpoint=TrustedCheckpoint.from_genesis(
        chain.genesis))
    with pytest.raises(BlockRejectedError, match="trusted"):
        fresh.skip_to(bad, 11)


def test_parse_sse() -> None:
    lines = ["retry: 1000", "", ": keep-alive", "", "id: 3", "event: block", "data: {}", ""]
    assert list(parse_sse(lines)) == [("3", "{}")]
