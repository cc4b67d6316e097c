"""What a node derives from the genesis file: the chain's starting point under the ledger.

``ChainSpec.load(path)`` reads the genesis file and builds the ledger state, the genesis hash
block 1 links to, and the ``ChainState`` before height 1; ``spec.follower()`` starts a
``protocol.follow.BlockFollower`` from it. ``source_registry`` turns the ledger's registered QRNG
sources into what the entropy verifier wants.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from protocol.canonical import HASH_SIZE, CanonicalWriter
from protocol.chain import ChainState, genesis_chain
from protocol.entropy.registry import SourceRegistryEntry
from protocol.follow import BlockFollower
from protocol.light import TrustedCheckpoint
from services.ledger.core.app import LedgerApp
from services.ledger.core.genesis import Genesis, genesis_state
from services.ledger.core.genesis_file import load_genesis
from services.ledger.core.params import Params
from services.ledger.core.state import LedgerState

MAX_EVIDENCE_WINDOW = 10_000  # heights of history a node keeps for evidence checks


def genesis_hash(genesis: Genesis) -> bytes:
    """What block 1 links to: chain id, time, randomness and the genesis ledger state hash."""
    state = genesis_state(genesis)
    return (
        CanonicalWriter("GenesisHash")
        .text(genesis.chain_id)
        .u64(genesis.genesis_time_ms)
        .bytes(genesis.genesis_randomness)
        .raw(LedgerApp().state_hash(state), HASH_SIZE)
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
        return cls.of(load_genesis(path))

    @classmethod
    def of(cls, genesis: Genesis) -> ChainSpec:
        app = LedgerApp()
        chain = genesis_chain(
            app, genesis_state(genesis), genesis.chain_id, genesis_hash(genesis),
            genesis.genesis_time_ms, genesis.genesis_randomness,
            max(2, min(genesis.params.max_evidence_age_blocks, MAX_EVIDENCE_WINDOW)),
        )
        return cls(genesis, app, chain)

    def follower(self) -> BlockFollower[LedgerState]:
        """A follower at genesis, ready to fold ``chain.blocks`` from height 1."""
        return BlockFollower.start(self.app, self.initial)

    def checkpoint(self) -> TrustedCheckpoint:
        """The genesis as a light client's checkpoint: height 0, the hash and randomness block
        1 links to, and the validator set of height 1."""
        tip = self.initial.tip
        return TrustedCheckpoint(self.chain_id, 0, tip.previous_block_hash,
                                 tip.previous_randomness, tip.previous_time_ms,
                                 self.initial.validators, tip.accumulator)

    def trusting_period_ms(self) -> int:
        """How long a light client may trust a validator set: two thirds of the unbonding
        period of the genesis parameters (a day is ``blocks_per_day`` blocks)."""
        return trusting_period_for(self.genesis.params)


DAY_MS = 86_400_000


def trusting_period_for(params: Params) -> int:
    """Two thirds of the unbonding period of ``params``, in ms (a day is ``blocks_per_day``)."""
    unbonding_ms = params.unbonding_period_blocks * DAY_MS // max(1, params.blocks_per_day)
    return unbonding_ms * 2 // 3


def source_registry(state: LedgerState) -> dict[str, SourceRegistryEntry]:
    """The QRNG sources registered in the ledger state, as the entropy verifier wants them."""
    return {
        source.source_id: SourceRegistryEntry(source.source_id, source.public_key,
                                              source.simulated)
        for source in (state.qrng_sources[key] for key in sorted(state.qrng_sources))
    }
