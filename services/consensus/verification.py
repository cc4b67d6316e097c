"""How a validator node checks signatures: every answer remembered, optionally found ahead on
worker processes.

The consensus core and the block builder ask one question, "is this ``signature`` ``key``'s over
``message``?" (a ``protocol.keys.SignatureCheck``). The answer is a pure function of the
(key, message, signature) triple, so remembering or precomputing it changes nothing but time:

1. Remembered: a precommit the node verified as a vote comes back in the next proposal as part
   of its last commit, and a proposal re-sent (a restarted peer) carries the same signature.
   ``VoteVerifier`` remembers at least the last ``remember // 2`` triples that verified and at
   most ``remember`` (two generations, the older dropped whole; a failure is never
   remembered, so a bad signature is verified, and refused, every time). The node's own
   signatures are known from the moment it makes them (``remember``): its precommit is in the
   next block's last commit too, and verifying it there cost one verification per height that
   checked nothing (an eighth of a height's verifications at 4 validators).
2. Ahead: with ``workers`` > 0, the node hands each polled batch of ``chain.consensus`` records
   to ``expect`` before the core sees the first of them; the triples go to worker processes
   (``streams.signature_pool``, the audit's pool) and the core's checks collect the answers while
   the node decodes, counts votes and signs. Whatever was not sent ahead is verified on the spot.
   The pool must be created before any Kafka client exists (its workers fork while the process
   has one thread): the node creates its verifier first.

Whether workers pay depends on the machine: they need a free core, and each verification sent
costs the node a little pickling. ``bench.validator_scale`` measures both.
"""

from __future__ import annotations

from collections.abc import Iterable

from protocol.keys import PublicKey
from streams.signature_pool import SignaturePool, Triple

REMEMBER = 8192  # triples; at least two heights of a 1,000-validator network (prevotes and
# precommits: a height's precommits must still be known when the next proposal brings them)


class VoteVerifier:
    """A ``SignatureCheck`` (call it) that remembers answers and can verify ahead (module doc).
    Close it (or use it as a context manager) to stop its workers."""

    def __init__(self, workers: int = 0, *, remember: int = REMEMBER) -> None:
        self._pool = SignaturePool(workers)
        # (key, message) -> the signature that verified. A key's length fixes its algorithm
        # (``PublicKey`` enforces it), so the algorithm is not in the key: an enum would cost a
        # Python-level hash per lookup. The signature is compared, not hashed: hashing its
        # 3,309 bytes (ML-DSA-65) for every lookup cost more than the rest of the lookup, and
        # each vote is looked up twice (as a vote, then in the next block's last commit, as
        # new bytes objects). A second valid signature of the same message replaces the first;
        # either way an answer is given only for the exact triple.
        # Two generations of plain dicts, the older dropped whole when the newer is full: an
        # exact LRU cost more than it saved. Dropping a dict's oldest key (``next(iter(d))``)
        # scans past every slot deleted before it; an OrderedDict's ``popitem(last=False)``
        # took 7 us per vote in the node (cold after each ML-DSA verification; 0.8 us in a
        # loop), about 1 ms of a 64-validator height (``bench.validator_scale``).
        self._generation = max(1, remember // 2)
        self._known: dict[tuple[bytes, bytes], bytes] = {}
        self._older: dict[tuple[bytes, bytes], bytes] = {}
        self.verified = 0  # answers computed (here or by a worker)
        self.remembered = 0  # answers given from memory

    def __enter__(self) -> VoteVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def workers(self) -> int:
        return self._pool.workers if self._pool.active else 0

    def __call__(self, key: PublicKey, message: bytes, signature: bytes) -> bool:
        item = (key.raw, message)
        if signature == (self._known.get(item) or self._older.get(item)):
            self.remembered += 1
            return True
        self.verified += 1
        if self._pool.active:
            self._pool.flush()  # keep the workers fed: collect answers, send what is waiting
            valid = self._pool.check(key, message, signature)
        else:
            valid = key.verify(message, signature)
        if valid:
            self._keep(item, signature)
        return valid

    def remember(self, key: PublicKey, message: bytes, signature: bytes) -> None:
        """Know a signature this node has just made with its own key, without verifying it: it
        comes back in the next block's last commit, where only the exact triple is answered
        from memory (the same key, sign-bytes and signature bytes), so nothing another party
        sends is taken on trust."""
        self._keep((key.raw, message), signature)

    def _keep(self, item: tuple[bytes, bytes], signature: bytes) -> None:
        if len(self._known) >= self._generation:
            self._older, self._known = self._known, {}
        self._known[item] = signature

    def knows(self, key: PublicKey, message: bytes, signature: bytes) -> bool:
        item = (key.raw, message)
        return signature == (self._known.get(item) or self._older.get(item))

    def expect(self, triples: Iterable[Triple], height: int) -> None:
        """Start verifying ``triples`` (of messages of ``height``) on the workers; no-op
        without workers. Call ``flush`` after the last ``expect`` of a batch."""
        if self._pool.active:
            self._pool.expect((t for t in triples if not self.knows(*t)), height)

    def flush(self) -> None:
        """Hand what ``expect`` buffered to idle workers (never blocks)."""
        if self._pool.active:
            self._pool.flush()

    def forget_before(self, height: int) -> None:
        """Drop answers of heights below ``height`` that the node never asked for (votes that
        arrived after it decided)."""
        if self._pool.active:
            self._pool.forget_before(height)

    def settle(self) -> None:
        """Wait for the workers' answers to everything sent so far (see ``SignaturePool.drain``)."""
        if self._pool.active:
            self._pool.drain()

    def close(self) -> None:
        self._pool.close()
