"""Signatures verified ahead on worker processes give exactly the answers of inline verification,
survive a worker killed with SIGKILL, and leave the audit's findings unchanged."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest

from protocol.commit import CommitCertificate
from protocol.keys import Algorithm, SigningKey
from sdk.testing import LocalChain, make_local_chain, tamper
from services.audit.replay import AuditOptions, audit_chain
from services.audit.sources import LogRecord, MemorySource
from streams.signature_pool import BATCH, SignaturePool
from tests.support.processes import running


def _triples(count: int) -> list[tuple]:  # type: ignore[type-arg]
    """(key, message, signature) triples; every third signature is wrong in one way or another."""
    keys = [SigningKey.generate(Algorithm.ML_DSA_65), SigningKey.generate(Algorithm.ED25519)]
    triples = []
    for i in range(count):
        key = keys[i % 2]
        message = f"message {i}".encode()
        signature = key.sign(message)
        if i % 3 == 1:
            signature = bytes([signature[0] ^ 1]) + signature[1:]
        elif i % 3 == 2:
            message += b"!"
        triples.append((key.public_key, message, signature))
    return triples


def test_answers_equal_inline_verification() -> None:
    triples = _triples(3 * BATCH + 5)
    with SignaturePool(1) as pool:
        assert pool.active
        pool.expect(triples, tag=1)
        answers = [pool.check(*triple) for triple in triples]
        assert pool.inline == 0 and pool.prefetched + pool.stolen == len(triples)
    assert answers == [key.verify(message, signature) for key, message, signature in triples]
    assert True in answers and False in answers


def test_a_triple_never_expected_is_verified_on_the_spot() -> None:
    triples = _triples(4)
    with SignaturePool(1) as pool:
        pool.expect(triples[:2])
        assert [pool.check(*t) for t in triples[2:]] == [False, True]  # i = 2: wrong message
        assert pool.inline == 2
        assert pool.check(*triples[0]) is True


def test_no_workers_means_inline() -> None:
    triples = _triples(5)
    with SignaturePool(0) as pool:
        assert not pool.active
        pool.expect(triples)
        assert [pool.check(*t) for t in triples] == [t[0].verify(t[1], t[2]) for t in triples]
        assert pool.inline == 5


def test_a_worker_killed_mid_run_leaves_answers_unchanged() -> None:
    triples = _triples(6 * BATCH)
    with SignaturePool(1) as pool:
        pool.expect(triples, tag=1)
        pool.flush()
        os.kill(pool._workers[0].process.pid, signal.SIGKILL)
        answers = [pool.check(*triple) for triple in triples]
        assert not pool.active  # it noticed, and verified the rest itself
        assert pool.inline > 0
    assert answers == [key.verify(message, signature) for key, message, signature in triples]


def test_forget_before_drops_answers_nobody_asked_for() -> None:
    triples = _triples(BATCH)
    with SignaturePool(1) as pool:
        pool.expect(triples[: BATCH // 2], tag=1)
        pool.expect(triples[BATCH // 2:], tag=5)
        pool.flush()
        pool.forget_before(5)
        assert pool.waiting == BATCH - BATCH // 2
        pool.check(*triples[0])  # forgotten: verified again, on the spot
        assert pool.inline == 1


@pytest.fixture(scope="module")
def local_chain(tmp_path_factory: pytest.TempPathFactory) -> LocalChain:
    return make_local_chain(tmp_path_factory.mktemp("chain"), 80)


def _source(records: list[bytes]) -> MemorySource:
    return MemorySource({"chain.blocks": [
        LogRecord("chain.blocks", 0, offset, 0, None, raw) for offset, raw in enumerate(records)]})


def test_pipelined_audit_equals_the_inline_audit(local_chain: LocalChain) -> None:
    """Beyond the look-ahead window (80 blocks > 64), with and without worker processes."""
    records = list(local_chain.records)
    results = []
    for workers in (0, 1):
        _, auditor = audit_chain(_source(records), AuditOptions(local_chain.genesis,
                                                                workers=workers))
        counts = dict(auditor.counts)
        ahead = counts.pop("signatures_verified_ahead", 0)
        assert ahead == (counts["signature_checks"] if workers else 0)
        results.append((auditor.findings, counts, auditor.chain.tip.app_hash,
                        auditor.applied_height))
    assert results[0] == results[1]
    assert results[1][0] == [] and results[1][3] == 80


def test_a_forged_certificate_signature_is_found_with_workers(local_chain: LocalChain) -> None:
    records = list(local_chain.records)

    def forge(cert: CommitCertificate) -> CommitCertificate:
        first = cert.signatures[1]
        bad = dataclasses.replace(first, signature=bytes([first.signature[0] ^ 1])
                                  + first.signature[1:])
        return dataclasses.replace(cert, signatures=(cert.signatures[0], bad,
                                                     *cert.signatures[2:]))

    records[69] = tamper(records[69], commit=forge)
    found = []
    for workers in (0, 1):
        _, auditor = audit_chain(_source(records), AuditOptions(local_chain.genesis,
                                                                workers=workers))
        found.append([(f.check, f.height, f.offset) for f in auditor.findings])
    assert found[0] == found[1] == [("commit", 70, 69)]


def test_history_lookup_by_height(local_chain: LocalChain) -> None:
    chain = local_chain.final_state
    heights = [record.height for record in chain.history]
    assert heights == list(range(heights[0], heights[0] + len(heights)))  # consecutive
    for height in heights:
        record = chain.record_of(height)
        assert record is not None and record.height == height
    assert chain.record_of(heights[0] - 1) is None
    assert chain.record_of(heights[-1] + 1) is None


_POOL_OWNER = """
import os, sys, threading, time
if sys.argv[1] == "sdk":  # the beacon client's pool (spawn), as ``verify_range`` starts it
    from sdk.beacon import BeaconClient
    client = BeaconClient.__new__(BeaconClient)
    client._pool, client._pool_size = None, 0
    pool = client._verifiers(2)
    list(pool.map(abs, range(8)))
    print("spawn", *pool._processes, flush=True)
    time.sleep(60)
from streams.signature_pool import SignaturePool
if sys.argv[1] == "forkserver":  # a second thread: the pool does not fork then
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
pool = SignaturePool(2)
print(pool.start_method, *(w.process.pid for w in pool._workers), flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("start", ["fork", "forkserver", "sdk"])
def test_workers_exit_when_the_process_that_owns_them_is_killed(start: str) -> None:
    """kill -9 of a pool's process (a validator, an audit, an application's beacon client)
    must not leave its workers running: they never see end of file on their pipes, so they
    watch their parent (``streams.orphans``)."""
    owner = subprocess.Popen([sys.executable, "-c", _POOL_OWNER, start],
                             stdout=subprocess.PIPE, text=True)
    try:
        method, *pids = (owner.stdout.readline() if owner.stdout else "").split()
        assert method == ("spawn" if start == "sdk" else start) and len(pids) == 2
        workers = [int(pid) for pid in pids]
        assert all(running(pid) for pid in workers)
    finally:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 10
    while any(running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in workers if running(pid)]
    for pid in left:  # do not leave them behind when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, "workers outlived their pool's process"
