"""Following ``chain.blocks``: rebuild the chain from genesis, verifying every block.

Every node (validator, tally) starts by folding ``chain.blocks`` into a ``ChainState`` with
``BlockFollower``; ``read_blocks`` offers the same to the CLI, the demo and tests. Nothing on the
topic is trusted. For each ``BlockFinalized`` the follower checks, against its own state:

- the record decodes and is internally consistent (``wire.decode_finalized``);
- the block is the next height, links to the previous block hash, carries the expected app hash
  and validator-set hashes, has a later time, a proposer from the set, a body matching its
  header, and the randomness re-derived from the previous randomness and its entropy refs;
- its last commit verifies against the previous height's set, each evidence item verifies;
- the commit certificate verifies against the validator set of the height (+2/3 by power);
- re-executing the ledger on the block gives the record's state hash.

A record of an already applied height with the same block hash is a harmless duplicate (two
tally instances, or a tally retrying): ``BlockOutcome.DUPLICATE``. A different block at an applied
height is a fork alarm (``ForkError``); a height beyond the next one is a gap (``GapError``).
Entropy is checked here by the randomness derivation only; the chunks behind the refs are
checked by the verifier of the end-to-end tests and by the audit (they need ``entropy.raw``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from services.block_builder.core.block import Block
from services.block_builder.core.proposal import InvalidBlockError, check_header
from services.consensus.core.chain import (
    ChainState,
    check_evidence,
    check_last_commit,
    genesis_chain,
)
from services.consensus.core.chain import (
    apply_block as apply_decided,
)
from services.consensus.core.commit import verify_commit
from services.consensus.core.ledger import LedgerApp, LedgerState
from services.consensus.core.ledger.queries import next_nonce
from services.consensus.core.proposer import ProposerPriorities, initial_priorities, next_height
from services.consensus.genesis import Genesis, genesis_state, load_genesis
from services.consensus.wire import FinalizedRecord, WireError, decode_finalized
from services.qrng_ingest.core.registry import SourceRegistryEntry
from streams.canonical import CanonicalWriter
from streams.kafka import make_consumer
from streams.settings import Settings


class FollowError(ValueError):
    """A finalized block does not verify against the chain; the message says why."""


class ForkError(FollowError):
    """Two different blocks finalized at one height: a safety alarm."""


class GapError(FollowError):
    """A block arrived for a height beyond the next one."""


class BlockOutcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"


def genesis_hash(genesis: Genesis) -> bytes:
    """What block 1 links to: chain id, time, randomness and the genesis ledger state hash."""
    state = genesis_state(genesis)
    return (
        CanonicalWriter("GenesisHash")
        .text(genesis.chain_id)
        .u64(genesis.genesis_time_ms)
        .bytes(genesis.genesis_randomness)
        .raw(LedgerApp().state_hash(state), 32)
        .digest()
    )


@dataclass(frozen=True, slots=True)
class ChainSpec:
    """Everything a node derives from the genesis file."""

    genesis: Genesis
    app: LedgerApp
    initial: ChainState[LedgerState]

    @property
    def chain_id(self) -> str:
        return self.genesis.chain_id

    @classmethod
    def load(cls, path: Path | str) -> ChainSpec:
        genesis = load_genesis(path)
        app = LedgerApp()
        state = genesis_state(genesis)
        chain = genesis_chain(
            app, state, genesis.chain_id, genesis_hash(genesis), genesis.genesis_time_ms,
            genesis.genesis_randomness, max(2, min(genesis.params.max_evidence_age_blocks, 10_000)),
        )
        return cls(genesis, app, chain)


def source_registry(state: LedgerState) -> dict[str, SourceRegistryEntry]:
    """The QRNG sources registered in the ledger state, as the entropy verifier wants them."""
    return {
        source.source_id: SourceRegistryEntry(source.source_id, source.public_key,
                                              source.simulated)
        for source in (state.qrng_sources[key] for key in sorted(state.qrng_sources))
    }


@dataclass(slots=True)
class BlockFollower:
    """Folds verified ``BlockFinalized`` records into a chain (mutable shell around the core)."""

    spec: ChainSpec
    chain: ChainState[LedgerState]
    priorities: ProposerPriorities
    hashes: dict[int, bytes] = field(default_factory=dict)
    last: FinalizedRecord | None = None
    last_offset: int = -1  # offset on chain.blocks of the last record read

    @classmethod
    def start(cls, spec: ChainSpec) -> BlockFollower:
        return cls(spec, spec.initial, initial_priorities(spec.initial.validators))

    @property
    def next_height(self) -> int:
        return self.chain.tip.height

    def verify(self, record: FinalizedRecord) -> None:
        """Raise ``FollowError`` unless ``record`` is a valid next block (see module doc)."""
        chain, block = self.chain, record.block
        tip, header = chain.tip, block.header
        try:
            check_header(block, tip)
        except InvalidBlockError as exc:
            raise FollowError(str(exc)) from exc
        if header.proposer_address not in chain.validators:
            raise FollowError(f"block {block.height}: proposer is not a validator")
        if block.body.last_commit is not None:
            reason = check_last_commit(chain, block.body.last_commit)
            if reason:
                raise FollowError(f"block {block.height}: last commit: {reason}")
        for item in block.body.evidence:
            reason = check_evidence(chain, item)
            if reason:
                raise FollowError(f"block {block.height}: evidence: {reason}")
        result = verify_commit(
            chain.chain_id, block.hash, block.height, record.commit, chain.validators
        )
        if not result.ok:
            raise FollowError(f"block {block.height}: commit does not verify: {result.reason}")

    def accept(self, record: FinalizedRecord) -> BlockOutcome:
        """Verify and apply one record; duplicates are recognised, forks and gaps raise."""
        height = record.height
        if height < self.next_height:
            known = self.hashes.get(height)
            if known is not None and known != record.block.hash:
                raise ForkError(
                    f"height {height}: block {record.block.hash.hex()[:16]} differs from the "
                    f"finalized {known.hex()[:16]}"
                )
            return BlockOutcome.DUPLICATE
        if height > self.next_height:
            raise GapError(f"block of height {height} while expecting {self.next_height}")
        self.verify(record)
        self.apply(record.block, record)
        return BlockOutcome.APPLIED

    def apply(self, block: Block, record: FinalizedRecord | None,
              commit: Any = None) -> None:
        """Apply a block already verified (by ``verify`` or by this node's own consensus)."""
        certificate = record.commit if record is not None else commit
        chain, response = apply_decided(self.chain, self.spec.app, block, certificate)
        if record is not None and response.app_hash != record.state_hash:
            raise FollowError(
                f"block {block.height}: re-executed state hash {response.app_hash.hex()[:16]} "
                f"differs from the record's {record.state_hash.hex()[:16]}"
            )
        self.priorities = next_height(self.priorities, self.chain.validators, chain.validators)
        self.chain = chain
        self.hashes[block.height] = block.hash
        if len(self.hashes) > 10_000:
            del self.hashes[min(self.hashes)]
        if record is not None:
            self.last = record

    def next_nonce(self, address: bytes) -> int:
        return next_nonce(self.chain.app_state, address)


def watermarks(consumer: Consumer, topic: str, partition: int = 0,
               timeout_s: float = 60.0) -> tuple[int, int]:
    """(low, high) of a partition, waiting out leader elections (fresh topics, broker
    restarts) that make the broker answer NOT_LEADER for a moment."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                       timeout=10)
            return int(low), int(high)
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _end_offset(consumer: Consumer, topic: str) -> int:
    return watermarks(consumer, topic)[1]


def catch_up(
    settings: Settings, follower: BlockFollower, *, timeout_s: float = 60.0,
    on_skip: Any = None,
) -> BlockFollower:
    """Read ``chain.blocks`` from after ``follower.last_offset`` to its current end.

    Undecodable or unverifiable records are passed to ``on_skip(message, error)`` (the caller
    dead-letters them) and skipped; a fork raises."""
    topic = settings.topic("chain.blocks")
    consumer = make_consumer(settings, f"catch-up-{time.time_ns()}", **{"fetch.wait.max.ms": 5})
    try:
        end = _end_offset(consumer, topic)
        position = follower.last_offset + 1
        if position >= end:
            return follower
        consumer.assign([TopicPartition(topic, 0, position)])
        deadline = time.monotonic() + timeout_s
        while position < end and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                # transaction markers occupy offsets; the consumer's position passes them
                current = consumer.position([TopicPartition(topic, 0)])[0].offset
                if current >= end:
                    break
                continue
            if message.error():
                continue
            offset = int(message.offset() or 0)
            position = offset + 1
            follower.last_offset = offset
            try:
                follower.accept(decode_finalized(message.value()))
            except ForkError:
                raise
            except (WireError, FollowError) as exc:
                if on_skip is not None:
                    on_skip(message, exc)
        return follower
    finally:
        consumer.close()


@dataclass(frozen=True, slots=True)
class VerifiedBlock:
    """One block of ``read_blocks``: the record and the chain state right after it."""

    record: FinalizedRecord
    offset: int
    chain: ChainState[LedgerState]
    written_at_ms: int  # Kafka timestamp of the BlockFinalized record


def read_blocks(
    settings: Settings,
    genesis_path: Path | str,
    from_height: int = 1,
    *,
    follow: bool = False,
    idle_timeout_s: float = 5.0,
) -> Iterator[VerifiedBlock]:
    """Verified blocks of ``chain.blocks`` from ``from_height`` (every earlier block is read and
    verified too: verification needs the state). Stops at the end of the topic unless
    ``follow``; raises ``FollowError`` on a block that does not verify. Duplicates are skipped.
    """
    follower = BlockFollower.start(ChainSpec.load(genesis_path))
    topic = settings.topic("chain.blocks")
    consumer = make_consumer(settings, f"reader-{time.time_ns()}", **{"fetch.wait.max.ms": 20})
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        end = _end_offset(consumer, topic)
        idle_since = time.monotonic()
        while True:
            message = consumer.poll(0.2)
            if message is None:
                current = consumer.position([TopicPartition(topic, 0)])[0].offset
                caught_up = current >= end or end == 0
                if not follow and (caught_up or time.monotonic() - idle_since > idle_timeout_s):
                    end = _end_offset(consumer, topic)
                    if current >= end or time.monotonic() - idle_since > idle_timeout_s:
                        return
                continue
            if message.error():
                continue
            idle_since = time.monotonic()
            try:
                record = decode_finalized(message.value())
            except WireError as exc:
                raise FollowError(f"offset {message.offset()}: {exc}") from exc
            if follower.accept(record) is BlockOutcome.DUPLICATE:
                continue
            if record.height >= from_height:
                yield VerifiedBlock(record, int(message.offset() or 0), follower.chain,
                                    message.timestamp()[1])
    finally:
        consumer.close()
