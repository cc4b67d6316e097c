"""Assembling a block proposal and the rules every validator applies to one.

Inputs are plain values and small interfaces, so the same code runs in the block builder
service, the simulator and the audit:

- ``ChainTip``: what the previous block fixed (hash, time, randomness, per-source last seq, the
  app hash after it, the validator-set hashes for this height and the next).
- ``VerifiedPool``: the node's view of verified entropy. The block builder service feeds it from
  qs.entropy.raw: a chunk is *verified* once a signed checkpoint of a registered source covers it
  (see services/qrng_ingest); its *age* is the number of heights since the node saw it verified.
  ``StaticPool`` is an in-memory implementation for tests and the simulator.
- ``check_tx`` / ``check_evidence`` / ``check_last_commit``: callables the node binds to its
  application state, evidence verification and commit verification.

Validation rules (``validate_block``), each failure a ``InvalidBlockError`` naming the rule:
``protocol.check.check_header`` (chain id, height, previous hash, strictly later time, app hash,
validator-set hashes, expected proposer, body matches header, randomness re-derived); a time no
later than the validator's clock plus ``EntropyRules``' neighbour ``max_time_drift_ms`` (see
below); every
entropy reference verified in the pool for a registered source; per source the range starts right
after the previous block's last seq and holds one chunk (``Block.structural_problem``); each
reference flagged committed exactly when it keeps its source's precommitment, and the header's
``fresh_sources`` (``protocol.check``, ``docs/precommitment.md``); no verified chunk older than
``max_entropy_age`` heights left out, except behind the one chunk the block takes of its source
(a source publishes faster than blocks take one chunk each; an honest, paced one does not); at
least two
devices when two or more healthy devices have verified chunks available (lanes of one device,
``protocol.entropy.registry``, are one device); every transaction passes
``check_tx``; every evidence item passes ``check_evidence``; the last commit verifies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from protocol.block import Block, Body, EntropyRef, Header, fresh_sources_of, ranges_of
from protocol.chain import ChainTip
from protocol.check import check_header, first_problem
from protocol.commit import CommitCertificate
from protocol.entropy.registry import count_devices
from protocol.errors import InputError
from protocol.evidence import DuplicateVoteEvidence
from protocol.randomness import block_randomness


class InvalidBlockError(InputError):
    """A proposed block breaks a validation rule; the message names the rule and the input."""


class VerifiedPool(Protocol):
    """A node's view of verified entropy (chunks covered by a verified checkpoint)."""

    def registered_sources(self) -> tuple[str, ...]:
        """Source ids registered on chain, sorted."""
        ...

    def healthy_sources(self) -> tuple[str, ...]:
        """Registered sources whose latest status is healthy, sorted."""
        ...

    def verified_after(self, source_id: str, seq: int) -> tuple[EntropyRef, ...]:
        """Verified chunks of ``source_id`` with seq > ``seq``, contiguous, in seq order."""
        ...

    def age_in_heights(self, ref: EntropyRef) -> int | None:
        """Heights since ``ref`` was seen verified; None if unknown or digest differs."""
        ...


@dataclass(frozen=True, slots=True)
class StaticPool:
    """An immutable pool: per source, (ref, height it became verified) in seq order."""

    current_height: int
    chunks: Mapping[str, tuple[tuple[EntropyRef, int], ...]] = field(default_factory=dict)
    healthy: frozenset[str] = frozenset()

    def registered_sources(self) -> tuple[str, ...]:
        return tuple(sorted(self.chunks))

    def healthy_sources(self) -> tuple[str, ...]:
        return tuple(sorted(self.healthy & set(self.chunks)))

    def verified_after(self, source_id: str, seq: int) -> tuple[EntropyRef, ...]:
        return tuple(ref for ref, _ in self.chunks.get(source_id, ()) if ref.seq > seq)

    def age_in_heights(self, ref: EntropyRef) -> int | None:
        for known, verified_at in self.chunks.get(ref.source_id, ()):
            if known.seq == ref.seq:
                return self.current_height - verified_at if known == ref else None
        return None


# Block time: bounded drift, not BFT time or PBTS. Each validator refuses a proposal stamped more
# than ``MAX_TIME_DRIFT_MS`` after its own clock; together with "strictly after the previous
# block" that keeps a block's time between the previous one and (honest clock + drift). Without
# the upper bound one Byzantine proposer could stamp 2^64-1 and no later block could ever be
# encoded. BFT time (the median of the precommit times, CometBFT's old scheme) would put vote
# times into the certificate and the block of the *next* height; PBTS needs synchronised clocks
# with a known precision and message delay. The bounded drift asks only that honest clocks are
# within the drift of each other, costs nothing on the wire, and keeps the header as it is: a
# faulty proposer can move one block's time by at most the drift (and must then wait for real
# time to catch up, since later blocks must be later still).
MAX_TIME_DRIFT_MS = 10_000


@dataclass(frozen=True, slots=True)
class EntropyRules:
    max_entropy_age: int = 2  # heights a verified chunk may wait before it must be included
    min_sources: int = 2  # required when at least this many healthy sources have chunks


CheckTx = Callable[[bytes], bool]
CheckEvidence = Callable[[DuplicateVoteEvidence], str | None]  # None = valid, else the reason
CheckCommit = Callable[[CommitCertificate], str | None]


def select_entropy(
    tip: ChainTip, pool: VerifiedPool, rules: EntropyRules
) -> tuple[EntropyRef, ...]:
    """Per source the verified chunk right after the previous block's (one chunk per source
    and block: every chunk a block mixes was committed to by an earlier block), flagged
    committed when it keeps its source's precommitment on ``tip``; canonical order."""
    chosen: list[EntropyRef] = []
    for source in pool.registered_sources():
        after = pool.verified_after(source, tip.last_seq_of(source))
        if after:
            chosen.append(replace(after[0], committed=tip.is_committed(after[0])))
    return tuple(sorted(chosen, key=lambda ref: (ref.source_id, ref.seq)))


def build_block(
    tip: ChainTip,
    round: int,
    time_ms: int,
    proposer_address: bytes,
    pool: VerifiedPool,
    mempool: Sequence[bytes],
    evidence: Sequence[DuplicateVoteEvidence],
    last_commit: CommitCertificate | None,
    rules: EntropyRules,
    check_tx: CheckTx,
    check_evidence: CheckEvidence,
    max_txs: int = 1000,
) -> Block:
    """The proposal for (tip.height, round). Deterministic: same inputs, same block bytes.
    ``time_ms`` comes from the caller (event data); it is raised to previous time + 1 if needed
    so the block stays valid under a lagging clock."""
    entropy = select_entropy(tip, pool, rules)
    txs = tuple(tx for tx in mempool if check_tx(tx))[:max_txs]
    unique = {item.hash(): item for item in evidence if check_evidence(item) is None}
    included = tuple(unique[key] for key in sorted(unique))
    body = Body(entropy=entropy, txs=txs, evidence=included, last_commit=last_commit)
    header = Header(
        chain_id=tip.chain_id,
        height=tip.height,
        round=round,
        time_ms=max(time_ms, tip.previous_time_ms + 1),
        previous_block_hash=tip.previous_block_hash,
        last_commit_hash=body.last_commit_hash(),
        entropy_root=body.entropy_root(),
        entropy_ranges=ranges_of(entropy),
        fresh_sources=fresh_sources_of(entropy, tip.previous_sources or ()),
        registered_sources=tip.registered_sources,
        randomness=block_randomness(tip.previous_randomness, tip.height, entropy),
        tx_root=body.tx_root(),
        evidence_root=body.evidence_root(),
        validators_hash=tip.validators_hash,
        next_validators_hash=tip.next_validators_hash,
        app_hash=tip.app_hash,
        proposer_address=proposer_address,
        history_root=tip.history_root_to_build_on(),
    )
    return Block(header, body)


def _check_entropy(block: Block, tip: ChainTip, pool: VerifiedPool, rules: EntropyRules) -> None:
    height = block.header.height
    registered = set(pool.registered_sources())
    for ref in block.body.entropy:
        if ref.source_id not in registered:
            raise InvalidBlockError(f"block {height}: source {ref.source_id!r} is not registered")
        if pool.age_in_heights(ref) is None:
            raise InvalidBlockError(
                f"block {height}: chunk {ref.source_id!r}/{ref.seq} is not verified"
            )
    included = {r.source_id: r for r in block.header.entropy_ranges}
    for seq_range in block.header.entropy_ranges:
        expected_first = tip.last_seq_of(seq_range.source_id) + 1
        if seq_range.first != expected_first:
            raise InvalidBlockError(
                f"block {height}: range of {seq_range.source_id!r} starts at {seq_range.first}, "
                f"expected {expected_first}"
            )
    for source in sorted(registered):
        if source in included:
            continue  # the block takes its one chunk of this source
        for ref in pool.verified_after(source, tip.last_seq_of(source)):
            age = pool.age_in_heights(ref)
            if age is not None and age > rules.max_entropy_age:
                raise InvalidBlockError(
                    f"block {height}: leaves out chunk {source!r}/{ref.seq}, verified {age} "
                    f"heights ago (bound {rules.max_entropy_age})"
                )
    # The two-source rule counts devices: lanes of one device are one source of randomness.
    available = count_devices(
        source
        for source in pool.healthy_sources()
        if pool.verified_after(source, tip.last_seq_of(source))
    )
    mixed = count_devices(included)
    required = min(rules.min_sources, available)
    if available >= rules.min_sources and mixed < required:
        raise InvalidBlockError(
            f"block {height}: includes chunks of {mixed} devices while {available} healthy "
            f"devices have verified entropy (need {required}; lanes of one device count once)"
        )


def validate_block(
    block: Block,
    tip: ChainTip,
    pool: VerifiedPool,
    rules: EntropyRules,
    expected_proposer: bytes | None,
    check_tx: CheckTx,
    check_evidence: CheckEvidence,
    check_last_commit: CheckCommit,
    latest_time_ms: int | None = None,
) -> None:
    """Raise ``InvalidBlockError`` unless ``block`` is a valid proposal on top of ``tip``.
    ``latest_time_ms``: the validator's clock plus the drift it tolerates; a block stamped
    later is refused (see ``time_bound``)."""
    problem = first_problem(check_header(tip, None, block, expected_proposer=expected_proposer),
                            block.height)
    if problem is not None:
        raise InvalidBlockError(problem)
    if latest_time_ms is not None and block.header.time_ms > latest_time_ms:
        raise InvalidBlockError(
            f"block {block.height}: time {block.header.time_ms} is later than this validator's "
            f"clock allows ({latest_time_ms}: its time plus the tolerated drift)")
    _check_entropy(block, tip, pool, rules)
    height = block.header.height
    for position, tx in enumerate(block.body.txs):
        if not check_tx(tx):
            raise InvalidBlockError(f"block {height}: transaction {position} fails check_tx")
    for item in block.body.evidence:
        problem = check_evidence(item)
        if problem:
            raise InvalidBlockError(f"block {height}: evidence {item.hash().hex()[:16]}: {problem}")
    if block.body.last_commit is not None:
        problem = check_last_commit(block.body.last_commit)
        if problem:
            raise InvalidBlockError(f"block {height}: last commit: {problem}")
