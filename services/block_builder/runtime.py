"""The block builder a validator node runs: its verified entropy pool, and the ``BlockLogic`` the
consensus core asks to propose and validate blocks.

The validator node (``services.consensus.validator``) owns the process, the double-sign guard,
the mempool and the evidence pool; it hands entropy records to ``BlockBuilder.accept_entropy``,
advances the builder after each decided block, and gives the consensus core
``builder.logic(inputs)``. ``inputs`` is called whenever the core asks the builder something, so
proposals and validations always see the node's current chain, mempool and clock.

Two pool views (see ``pool.py``): a proposal includes the chunks the proposer saw verified at least
``proposer_settle_ms`` ago; validation requires only chunks verified ``validator_settle_ms`` ago
here. A proposal naming chunks this node has not verified yet is held back up to
``entropy_wait_ms`` (``missing``) before the core validates it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol.app import Application
from protocol.block import Block, EntropyRef
from protocol.chain import ChainState
from protocol.entropy.chain import Checkpoint, Chunk
from protocol.entropy.verifier import EntropyRejectedError
from protocol.errors import InputError
from protocol.evidence import DuplicateVoteEvidence
from protocol.keys import SignatureCheck, default_signature_check
from services.block_builder.core.logic import NodeBlockLogic
from services.block_builder.core.proposal import EntropyRules
from services.block_builder.pool import CheckpointOutcome, EntropyPool

ENTROPY_SCHEMAS = ("EntropyChunkPublished", "EntropyCheckpointSigned")


class MisplacedRecordError(InputError):
    """A record of a schema that does not belong on ``entropy.raw``."""

    code = "wrong_schema"


@dataclass(frozen=True, slots=True)
class BuilderOptions:
    rules: EntropyRules = field(default_factory=EntropyRules)
    proposer_settle_ms: int = 50
    validator_settle_ms: int = 600
    entropy_wait_ms: int = 1500  # how long a proposal waits for its entropy to arrive here


@dataclass(frozen=True, slots=True)
class BuildInputs:
    """What the node knows at the moment the core asks: its chain, pending transactions and
    evidence (in proposal order), its clock, its address, and how it checks signatures (the
    node's own check, which remembers the votes it verified: a proposal's last commit is made of
    precommits the node has usually seen already)."""

    chain: ChainState[Any]
    app: Application[Any]
    mempool: Sequence[bytes]
    evidence: Sequence[DuplicateVoteEvidence]
    now_ms: int
    proposer_address: bytes
    check: SignatureCheck = default_signature_check


@dataclass(frozen=True, slots=True)
class _BuilderLogic:
    """``BlockLogic`` with the proposer's and the validator's pool views (see pool.py)."""

    builder: BlockBuilder
    inputs: Callable[[], BuildInputs]

    def _bind(self, settle_ms: int) -> NodeBlockLogic[Any]:
        now = self.inputs()
        return NodeBlockLogic(now.chain, now.app, self.builder.pool.proposer_view(settle_ms),
                              now.mempool, now.evidence, self.builder.options.rules, now.now_ms,
                              now.proposer_address, now.check)

    def propose(self, height: int, round: int) -> Block:
        return self._bind(self.builder.options.proposer_settle_ms).propose(height, round)

    def validate(self, block: Block) -> str | None:
        return self._bind(self.builder.options.validator_settle_ms).validate(block)


class BlockBuilder:
    """A node's block builder (module doc)."""

    def __init__(self, pool: EntropyPool, options: BuilderOptions | None = None) -> None:
        self.pool = pool
        self.options = options or BuilderOptions()

    @classmethod
    def for_registry(cls, registry: Mapping[str, Any], chain: ChainState[Any],
                     options: BuilderOptions | None = None) -> BlockBuilder:
        builder = cls(EntropyPool(registry), options)
        builder.advance(chain)
        return builder

    def accept_entropy(self, schema: str, record: Mapping[str, Any]) -> Chunk | CheckpointOutcome:
        """Feed one decoded ``entropy.raw`` record: the chunk now held, or what the checkpoint
        verified. Raises ``EntropyRejectedError`` (with its ``code``) for a chunk or checkpoint
        the verifier refuses (``UnjoinableChainError`` for a source that cannot continue the
        chain), ``MisplacedRecordError`` for another schema, and the entropy chain's format
        errors for malformed fields; the pool counts every rejection. Chunks dropped on the way
        (forged branches) wait in ``pool.take_discarded()``."""
        try:
            if schema == "EntropyChunkPublished":
                chunk = Chunk.from_record(record)
                self.pool.accept_chunk(chunk)
                return chunk
            if schema == "EntropyCheckpointSigned":
                return self.pool.accept_checkpoint(Checkpoint.from_record(record))
            raise MisplacedRecordError(f"{schema} does not belong on entropy.raw")
        except EntropyRejectedError as exc:
            self.pool.count_rejection(exc.code)
            raise
        except ValueError:
            self.pool.count_rejection("malformed")
            raise

    def advance(self, chain: ChainState[Any],
                registry: Mapping[str, Any] | None = None) -> None:
        """The chain moved on: drop entropy it included, age what is left, and follow the
        registry of the new state when it is given (it changes by governance)."""
        if registry is not None:
            self.pool.set_registry(registry)
        self.pool.advance(chain.tip)

    def missing(self, entropy: tuple[EntropyRef, ...]) -> bool:
        """True while some of ``entropy`` is not verified here yet."""
        return bool(self.pool.missing(entropy))

    def logic(self, inputs: Callable[[], BuildInputs]) -> _BuilderLogic:
        return _BuilderLogic(self, inputs)
