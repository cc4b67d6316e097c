"""Signatures verified ahead, on other cores, while the caller does the sequential work.

Two users: the audit (below), which re-executes the chain while its certificates are verified,
and the validator node (``services.consensus.verification``), which steps its consensus core
through a polled batch of votes while their signatures are verified.

An audit is two kinds of work per block: re-executing the ledger (Python, strictly sequential)
and verifying ML-DSA-65 signatures (four or more per certificate, one per transaction; C inside
``cryptography``). They are about equal, so on a two-core machine the audit runs them side by
side: the reader decodes each record a window ahead of re-execution and sends the signatures it
will be asked about — (public key, message, signature) — to worker processes; when the auditor
reaches the block, its ``SignatureCheck`` only collects the answers.

Why processes, not threads: verification releases the GIL, but every call must take it back,
and a thread re-executing Python holds it for its whole switch interval (5 ms), so a verifying
thread would spend most of its time waiting. For the same reason the pool talks to its workers
over plain pipes from the calling thread, not through ``ProcessPoolExecutor``, whose feeder and
manager threads would wait for the GIL in the same way. Only bytes cross the boundary.

Safety does not depend on the guess: the answer for a (key, message, signature) triple is that
triple's verification, wherever it ran. The reader guesses keys from the validator sets it knows;
a triple the auditor asks about that was not sent ahead (a new validator, a changed set, an
evidence vote) is verified on the spot, and answers never asked for are dropped. If a worker
dies, everything from then on is verified on the spot: the same answers, one core.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable
from multiprocessing.connection import Connection
from typing import Any

from protocol.keys import Algorithm, PublicKey
from streams.orphans import watch_parent

Triple = tuple[PublicKey, bytes, bytes]
_Item = tuple[str, bytes, bytes, bytes]  # algorithm, raw key, message, signature

BATCH = 12  # signatures per message to a worker: ~65 KiB, about 4 ms of work
QUEUED = 3  # batches per worker: one being verified, two waiting in its socket buffer


def default_workers() -> int:
    """One worker per core beyond the one that re-executes (at least one)."""
    return max(1, (os.cpu_count() or 2) - 1)


def _verify_batch(items: list[_Item]) -> list[bool]:
    return [PublicKey(Algorithm(alg), raw).verify(message, signature)
            for alg, raw, message, signature in items]


def _serve(conn: Connection, owner: int, start_method: str) -> None:
    """A worker: answer batches in order until the pool closes its end, or until the process
    that started it is gone (``streams.orphans``: a forked worker holds a copy of the pool's end
    of its pipe, so kill -9 of the pool's process never shows here as end of file)."""
    watch_parent(os.getppid() if start_method == "forkserver" else owner)  # a forkserver's child
    while True:
        try:
            batch = conn.recv()
        except (EOFError, OSError):
            return
        if batch is None:  # the pool is closing
            return
        conn.send(_verify_batch(batch))


def _single_threaded() -> bool:
    """True when this process runs exactly one thread, native ones included (Linux)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _context() -> Any:
    # fork starts a worker in milliseconds, but is only safe while no other thread runs
    # (librdkafka's native threads, a progress bar's): a lock held by one of them at the fork
    # stays held forever in the child. Otherwise a forkserver, which starts clean but re-imports
    # the main module for every worker (up to a second). Callers create the pool first thing
    # (the CLI does, before any Kafka client or progress bar) so that fork is the usual case.
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and _single_threaded():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


class _Worker:
    """One verifying process and its pipe; batches are answered in the order sent."""

    def __init__(self, context: Any) -> None:
        self.conn, child = context.Pipe(duplex=True)
        self.process = context.Process(
            target=_serve, args=(child, os.getpid(), context.get_start_method()), daemon=True,
            name="qustream-verify")
        self.process.start()
        child.close()
        self.in_flight: deque[int] = deque()  # batch ids sent and not yet answered

    def send(self, batch_id: int, batch: list[_Item]) -> None:
        self.conn.send(batch)
        self.in_flight.append(batch_id)

    def receive(self) -> tuple[int, list[bool]]:
        answers = self.conn.recv()
        return self.in_flight.popleft(), answers

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # already gone
            self.conn.send(None)  # answered batches are dropped; the worker exits
        self.conn.close()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)


class SignaturePool:
    """``expect`` triples ahead; ``check`` is the ``SignatureCheck`` that answers them.

    ``workers=0`` verifies everything inline (no processes): the same answers, one core.
    Use as a context manager, or call ``close``.
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = default_workers() if workers is None else workers
        context = _context() if self.workers > 0 else None
        self.start_method: str | None = context.get_start_method() if context else None
        self._workers = [_Worker(context) for _ in range(self.workers)]
        self._next_worker = itertools.cycle(range(max(1, self.workers)))
        self._batch_ids = itertools.count()
        self._buffered: dict[_Item, int] = {}  # item -> tag, not sent yet (in order)
        # item -> (worker index, batch id, position, tag)
        self._pending: dict[_Item, tuple[int, int, int, int]] = {}
        self._answers: dict[int, list[bool]] = {}  # batch id -> answers received
        self._local: dict[_Item, tuple[bool, int]] = {}  # verified here while waiting
        self.prefetched = 0  # answers collected from the workers
        self.stolen = 0  # expected, verified here (while waiting, or unsent when asked)
        self.inline = 0  # verified on the spot (not expected, no workers, or a worker died)

    def __enter__(self) -> SignaturePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def active(self) -> bool:
        return bool(self._workers)

    def close(self) -> None:
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.stop()
        self._buffered.clear()
        self._pending.clear()
        self._answers.clear()
        self._local.clear()

    def expect(self, triples: Iterable[Triple], tag: int = 0) -> None:
        """Start verifying these; the answers wait for ``check``. ``tag`` (the block height
        they are for) lets ``forget_before`` drop answers nobody asked for."""
        if not self._workers:
            return
        for key, message, signature in triples:
            item = (key.algorithm.value, key.raw, message, signature)
            if item not in self._pending and item not in self._local:
                self._buffered.setdefault(item, tag)
        if len(self._buffered) >= BATCH:
            self.flush()

    def flush(self) -> None:
        """Collect finished answers and give idle workers the oldest buffered signatures.

        Never blocks: a worker holds at most ``QUEUED`` batches, so sending fits its socket
        buffer. What no worker can take yet stays buffered; if the auditor asks for it before
        a worker is free, ``check`` verifies it itself (so the calling core helps when the
        workers are the bottleneck)."""
        try:
            for worker in self._workers:
                while worker.in_flight and worker.conn.poll(0):
                    self._store(worker.receive())
            while self._buffered and self._workers:
                worker = min(self._workers, key=lambda w: len(w.in_flight))
                if len(worker.in_flight) >= QUEUED:
                    return
                batch = list(itertools.islice(self._buffered, BATCH))
                batch_id = next(self._batch_ids)
                worker.send(batch_id, batch)
                index = self._workers.index(worker)
                for position, item in enumerate(batch):
                    self._pending[item] = (index, batch_id, position, self._buffered.pop(item))
        except (EOFError, OSError, ValueError):
            self.close()  # a dead worker: answers are computed inline from now on

    def drain(self) -> None:
        """Wait until every batch sent to a worker is answered (the answers then wait for
        ``check``); what is still buffered stays unsent. A benchmark calls this to stop its
        clock only when the workers are idle."""
        try:
            for worker in self._workers:
                while worker.in_flight:
                    self._store(worker.receive())
        except (EOFError, OSError):
            self.close()

    def _store(self, received: tuple[int, list[bool]]) -> None:
        self._answers[received[0]] = received[1]

    def check(self, key: PublicKey, message: bytes, signature: bytes) -> bool:
        """The answer for this triple: collected if a worker has it, else verified here."""
        item = (key.algorithm.value, key.raw, message, signature)
        local = self._local.pop(item, None)
        if local is not None:
            return local[0]
        entry = self._pending.pop(item, None)
        answer = None if entry is None else self._answer(*entry[:3])
        if answer is not None:
            self.prefetched += 1
            return answer
        if self._buffered.pop(item, None) is not None:
            self.stolen += 1
        else:
            self.inline += 1
        return key.verify(message, signature)

    def _answer(self, index: int, batch_id: int, position: int) -> bool | None:
        """Wait for a worker's answer; meanwhile verify the newest unsent signatures here (work
        taken from the far end of the queue, so nothing is verified twice and this core never
        idles while the workers are behind)."""
        answers = self._answers.get(batch_id)
        try:
            while answers is None:
                worker = self._workers[index]
                if self._buffered and not worker.conn.poll(0):
                    item, tag = self._buffered.popitem()  # the newest
                    alg, raw, message, signature = item
                    self._local[item] = (PublicKey(Algorithm(alg), raw).verify(message, signature),
                                         tag)
                    self.stolen += 1
                    continue
                self._store(worker.receive())
                answers = self._answers.get(batch_id)
        except (EOFError, OSError, IndexError):
            self.close()  # the worker died: the caller verifies inline
            return None
        return bool(answers[position])

    def forget_before(self, tag: int) -> None:
        """Drop answers expected for tags below ``tag`` that nobody asked for (a key guessed
        wrong, a certificate not checked because its block failed first)."""
        stale = [item for item, entry in self._pending.items() if entry[3] < tag]
        for item in stale:
            del self._pending[item]
        for item in [item for item, (_, t) in self._local.items() if t < tag]:
            del self._local[item]
        live = {entry[1] for entry in self._pending.values()}
        for batch_id in [b for b in self._answers if b not in live]:
            del self._answers[batch_id]

    @property
    def waiting(self) -> int:
        """Expected answers not asked for yet (sent, unsent, or verified here)."""
        return len(self._pending) + len(self._buffered) + len(self._local)
