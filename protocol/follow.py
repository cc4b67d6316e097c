"""Following the public chain: fold finalized blocks into a ``ChainState``, verifying each.

``BlockFollower`` is what every full reader of ``chain.blocks`` runs (validators, the tally, the
gateway, the CLI, the SDK's full mode): nothing on the topic is trusted. A record of the next
height must pass ``protocol.check.check_block`` against the follower's own state (hash links,
state and validator-set hashes, time, body, randomness, proposer, evidence, last commit, commit
certificate +2/3 by power), and re-executing the application on it must give the record's state
hash. A record of an already applied height with the same block hash is a harmless duplicate
(two tally instances, or a tally retrying): ``BlockOutcome.DUPLICATE``. A different block at an
applied height is a fork alarm (``ForkError``) *only when its certificate verifies* against the
validator set of that height: anyone who can write the topic can append a block with no
signatures, and that must neither alarm nor stop a reader. Anything else at an applied height
is ``UnverifiedConflictError``, which readers dead-letter and skip (start-up never aborts on
it). A height beyond the next one is a gap (``GapError``). The Kafka side (reading the topic,
catching up) is ``streams.chain_reader``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

from protocol.app import Application
from protocol.block import Block
from protocol.chain import ChainState, apply_block
from protocol.check import check_block, check_commit, first_problem
from protocol.commit import CommitCertificate
from protocol.errors import InputError
from protocol.finalized import FinalizedRecord
from protocol.proposer import ProposerPriorities, initial_priorities, next_height
from protocol.validators import ValidatorSet

S = TypeVar("S")
MAX_KNOWN_HASHES = 10_000  # heights remembered for duplicate and fork detection


class FollowError(InputError):
    """A finalized block does not verify against the chain; the message says why."""


class ForkError(FollowError):
    """Two different blocks finalized at one height: a safety alarm."""


class GapError(FollowError):
    """A block arrived for a height beyond the next one."""


class UnverifiedConflictError(FollowError):
    """A different block at an applied height whose certificate does not verify: not a fork,
    just input nobody signed (dead-letter it and go on)."""

    code = "unverified_conflict"


def conflict_error(record: FinalizedRecord, known: bytes,
                   validators: ValidatorSet | None) -> FollowError:
    """What a record at an applied height with block hash other than ``known`` is: a
    ``ForkError`` when its certificate verifies against ``validators`` (the set of that
    height: more than 2/3 of it signed a second block), else an ``UnverifiedConflictError``."""
    height = record.height
    what = (f"height {height}: block {record.block.hash.hex()[:16]} differs from the finalized "
            f"{known.hex()[:16]}")
    if validators is None:
        return UnverifiedConflictError(f"{what}; the validator set of that height is no longer "
                                       "known here, so its certificate cannot be checked")
    finding = check_commit(record.chain_id, validators, record.block, record.commit)
    if finding is not None:
        return UnverifiedConflictError(f"{what}, but its certificate does not verify: "
                                       f"{finding.reason}")
    return ForkError(f"{what}, and more than 2/3 of the validators of that height signed it")


class BlockOutcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"


@dataclass(slots=True)
class BlockFollower(Generic[S]):
    """Folds verified ``FinalizedRecord`` values into a chain (mutable shell around the core)."""

    app: Application[S]
    chain: ChainState[S]
    priorities: ProposerPriorities
    hashes: dict[int, bytes] = field(default_factory=dict)
    sets: dict[int, ValidatorSet] = field(default_factory=dict)  # the set that signed a height
    last: FinalizedRecord | None = None
    last_offset: int = -1  # offset on chain.blocks of the last record read

    @classmethod
    def start(cls, app: Application[S], chain: ChainState[S]) -> BlockFollower[S]:
        return cls(app, chain, initial_priorities(chain.validators))

    @property
    def chain_id(self) -> str:
        return self.chain.chain_id

    @property
    def next_height(self) -> int:
        return self.chain.tip.height

    def verify(self, record: FinalizedRecord) -> None:
        """Raise ``FollowError`` unless ``record`` is a valid next block (see module doc)."""
        chain = self.chain
        # the previous certificate was verified when its block was applied (or decided here):
        # its precommits need no second check as this block's last_commit
        findings = check_block(chain, record.block, record.commit,
                               verified_last_commit=chain.last_commit)
        problem = first_problem(findings, record.height)
        if problem is not None:
            raise FollowError(problem)

    def accept(self, record: FinalizedRecord) -> BlockOutcome:
        """Verify and apply one record; duplicates are recognised; verified forks, unverified
        conflicts (module doc) and gaps raise."""
        height = record.height
        if height < self.next_height:
            known = self.hashes.get(height)
            if known is not None and known != record.block.hash:
                raise conflict_error(record, known, self.sets.get(height))
            return BlockOutcome.DUPLICATE
        if height > self.next_height:
            raise GapError(f"block of height {height} while expecting {self.next_height}")
        self.verify(record)
        self.apply(record.block, record.commit, record)
        return BlockOutcome.APPLIED

    def apply(self, block: Block, commit: CommitCertificate,
              record: FinalizedRecord | None = None) -> None:
        """Apply a block already verified (by ``verify`` or by this node's own consensus)."""
        chain, response = apply_block(self.chain, self.app, block, commit)
        if record is not None and response.app_hash != record.state_hash:
            raise FollowError(
                f"block {block.height}: re-executed state hash {response.app_hash.hex()[:16]} "
                f"differs from the record's {record.state_hash.hex()[:16]}"
            )
        self.priorities = next_height(self.priorities, self.chain.validators, chain.validators)
        self.sets[block.height] = self.chain.validators
        self.chain = chain
        self.hashes[block.height] = block.hash
        if len(self.hashes) > MAX_KNOWN_HASHES:
            del self.hashes[next(iter(self.hashes))]  # heights only grow: the first is oldest
            del self.sets[next(iter(self.sets))]
        if record is not None:
            self.last = record
