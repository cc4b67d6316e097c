"""Issue 16, item 3: a second block at an applied height is a fork only when its certificate
verifies against that height's validator set. Anything else is input nobody signed: every
reader (follower, node driver, SDK, audit) skips it and goes on; none aborts or alarms."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.commit import CommitFlag, CommitSig
from protocol.follow import ForkError, UnverifiedConflictError
from protocol.messages import VoteType, vote_sign_bytes
from sdk.subscriber import BlockSubscriber, TrustedCheckpoint
from sdk.testing import LocalChain, make_local_chain, tamper
from services.audit.core.chain import ChainAuditor
from services.audit.core.findings import Severity
from services.audit.replay import decode_block_record
from services.audit.sources import LogRecord
from services.consensus.core.state_machine import ConsensusConfig
from services.consensus.node import ConsensusDriver
from services.consensus.tally import _Observer
from services.ledger.core.chain_spec import ChainSpec
from streams.chain_wire import decode_finalized, encode_finalized

HEIGHTS = 5


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> LocalChain:
    return make_local_chain(tmp_path_factory.mktemp("forks"), HEIGHTS)


def conflicting(chain: LocalChain, height: int, signers: frozenset[int]) -> bytes:
    """Another block at ``height`` whose certificate carries valid precommits from the
    validators at ``signers`` (indexes in the set's canonical order) and nothing else."""
    raw = tamper(chain.records[height - 1],
                 header=lambda h: dataclasses.replace(h, time_ms=h.time_ms + 1))
    record = decode_finalized(raw)
    keys = {k.address: k for k in chain.validator_keys}
    signatures = []
    for index, entry in enumerate(record.commit.signatures):
        address = entry.validator_address
        if index in signers:
            signature = keys[address].sign(vote_sign_bytes(
                record.chain_id, VoteType.PRECOMMIT, height, record.commit.round,
                record.block.hash, address))
            signatures.append(CommitSig(CommitFlag.COMMIT, address, signature))
        else:
            signatures.append(CommitSig(CommitFlag.ABSENT, address, b""))
    commit = dataclasses.replace(record.commit, signatures=tuple(signatures))
    return encode_finalized(dataclasses.replace(record, commit=commit))


def signer_sets() -> st.SearchStrategy[frozenset[int]]:
    return st.frozensets(st.integers(min_value=0, max_value=3))


class Observer(ConsensusDriver):
    use_timeouts = False

    def logic(self) -> _Observer:
        return _Observer()


def _observer(chain: LocalChain) -> Observer:
    spec = ChainSpec.load(chain.genesis)
    follower = spec.follower()
    for raw in chain.records:
        follower.accept(decode_finalized(raw))
    return Observer(ConsensusConfig(spec.chain_id, None), follower)


@settings(max_examples=20, deadline=None)
@given(height=st.integers(min_value=1, max_value=HEIGHTS), signers=signer_sets())
def test_follower_and_driver_alarm_only_on_a_verified_conflict(
        chain: LocalChain, height: int, signers: frozenset[int]) -> None:
    fork = len(signers) * 3 > 4 * 2  # four validators of equal power
    bad = decode_finalized(conflicting(chain, height, signers))
    follower = ChainSpec.load(chain.genesis).follower()
    for raw in chain.records:
        follower.accept(decode_finalized(raw))
    with pytest.raises(ForkError if fork else UnverifiedConflictError):
        follower.accept(bad)
    assert follower.next_height == HEIGHTS + 1  # nothing changed
    driver = _observer(chain)
    if fork:
        driver.feed_finalized(bad)
        assert driver.rejected["fork"] == 1
    else:
        with pytest.raises(UnverifiedConflictError):
            driver.feed_finalized(bad)
        assert "fork" not in driver.rejected


@settings(max_examples=20, deadline=None)
@given(height=st.integers(min_value=1, max_value=HEIGHTS), signers=signer_sets(),
       light=st.booleans())
def test_subscribers_skip_unsigned_conflicts_and_keep_going(
        chain: LocalChain, height: int, signers: frozenset[int], light: bool) -> None:
    fork = len(signers) * 3 > 4 * 2
    mode: dict[str, object] = ({"checkpoint": TrustedCheckpoint.from_genesis(chain.genesis)}
                               if light else {"genesis": chain.genesis})
    subscriber = BlockSubscriber(_NoSource(), **mode)  # type: ignore[arg-type]
    for position, raw in enumerate(chain.records[:-1]):
        subscriber.verify(raw, position)
    bad = conflicting(chain, min(height, HEIGHTS - 1), signers)
    if fork:
        with pytest.raises(Exception, match=r"fork|different block|signed"):
            subscriber.verify(bad, 99)
        return
    assert subscriber.verify(bad, 99) is None
    assert subscriber.skipped[-1][0] == 99
    last = subscriber.verify(chain.records[-1], 100)
    assert last is not None and last.height == HEIGHTS


@settings(max_examples=20, deadline=None)
@given(height=st.integers(min_value=1, max_value=HEIGHTS), signers=signer_sets())
def test_audit_reports_a_fork_only_when_it_verifies(
        chain: LocalChain, height: int, signers: frozenset[int]) -> None:
    fork = len(signers) * 3 > 4 * 2
    spec = ChainSpec.load(chain.genesis)
    auditor = ChainAuditor(spec.initial, spec.app)
    records = [*chain.records[:height], conflicting(chain, height, signers),
               *chain.records[height:]]
    for offset, raw in enumerate(records):
        auditor.feed(decode_block_record(LogRecord("chain.blocks", 0, offset, 0, None, raw)))
    assert auditor.applied_height == HEIGHTS
    failures = [f for f in auditor.findings if f.severity is Severity.FAILURE]
    warnings = [f for f in auditor.findings if f.severity is Severity.WARNING]
    if fork:
        assert [(f.check, f.height) for f in failures] == [("fork", height)]
    else:
        assert failures == []
        assert [(w.check, w.height) for w in warnings] == [("unverified_conflict", height)]


class _NoSource:
    def records(self, after: int | None):  # type: ignore[no-untyped-def]
        return iter(())


def test_catch_up_dead_letters_an_unsigned_conflict(chain: LocalChain, tmp_path: Path) -> None:
    """Start-up (``streams.chain_reader.catch_up``'s fold) hands an unverified conflict to
    ``on_skip`` instead of raising: the same ``accept`` path, exercised without Kafka."""
    follower = ChainSpec.load(chain.genesis).follower()
    skipped: list[Exception] = []
    records = [*chain.records[:3], conflicting(chain, 2, frozenset()), *chain.records[3:]]
    for raw in records:
        try:
            follower.accept(decode_finalized(raw))
        except ForkError:
            raise
        except UnverifiedConflictError as exc:
            skipped.append(exc)
    assert follower.next_height == HEIGHTS + 1
    assert len(skipped) == 1 and "does not verify" in str(skipped[0])
