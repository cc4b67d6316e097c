"""The other validators of a network, played around ONE real validator node, with no Kafka.

The node is the production ``ValidatorNode`` with a recording producer and a follower at genesis;
``Peers`` keeps its own copy of the chain (a follower applying the same blocks) and, for each
height, builds the peer proposer's block (or takes the node's own proposal when the node is the
proposer), signs the proposal and every peer's prevote and precommit for it, and encodes them as
``chain.consensus`` records, all before the node sees any of them. The node gets them through
its batch handler, as the run loop would hand over polls: the proposal and the prevotes, then the
precommits. ``bench.validator_scale`` times exactly that part; the tests check what the node
decides.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.commit import CommitCertificate, CommitFlag, CommitSig
from protocol.keys import Algorithm, SigningKey
from protocol.messages import Vote, VoteType
from protocol.proposal import Proposal
from protocol.proposer import proposer
from services.block_builder.core.logic import NodeBlockLogic
from services.block_builder.core.proposal import EntropyRules
from services.block_builder.pool import EntropyPool
from services.consensus.validator import NodeOptions, ValidatorNode
from services.ledger.core import MICRO, Genesis, GenesisAccount, GenesisValidator
from services.ledger.core.chain_spec import ChainSpec
from services.ledger.core.genesis import GENESIS_RANDOMNESS_SIZE
from services.ledger.core.params import Params
from streams.chain_wire import decode_consensus, encode_consensus
from streams.codec import default_codec
from streams.kafka import KafkaProducer, Record
from streams.settings import Settings

CHAIN_ID = "qustream-peers"


def validator_keys(n: int, algorithm: Algorithm = Algorithm.ML_DSA_65
                   ) -> tuple[SigningKey, ...]:
    """``n`` deterministic validator keys."""
    return tuple(SigningKey.from_seed(hashlib.sha256(f"peers/{i}".encode()).digest(), algorithm)
                 for i in range(n))


def network_spec(keys: Sequence[SigningKey]) -> ChainSpec:
    """A genesis with ``keys`` as equal validators (and ``max_validators`` raised to fit)."""
    genesis = Genesis(
        chain_id=CHAIN_ID, genesis_time_ms=int(time.time() * 1000) - 60_000,
        genesis_randomness=bytes(GENESIS_RANDOMNESS_SIZE),
        validators=tuple(GenesisValidator(key.public_key, 10_000 * MICRO, 100_000_000,
                                          200_000_000, 10_000_000) for key in keys),
        accounts=tuple(GenesisAccount(key.address, 1_000 * MICRO) for key in keys),
        qrng_sources=(),
        params=Params(max_validators=max(len(keys), Params().max_validators)),
    )
    return ChainSpec.of(genesis.validate())


class RecordingProducer:
    """Stands in for confluent-kafka's producer under the edge kit's wrapper and keeps what the
    node produces."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def produce(self, topic: str, **kwargs: Any) -> None:
        self.sent.append((topic, kwargs["value"]))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0


@dataclass(frozen=True, slots=True)
class Height:
    """One height's peer messages, signed and encoded (the module doc)."""

    proposal: Proposal
    first: list[Record]  # the peer's proposal (unless the node proposes) and the prevotes
    second: list[Record]  # the precommits
    precommits: list[Vote]


class Peers:
    """The n - 1 other validators of a network around ``node_key`` (module doc)."""

    def __init__(self, spec: ChainSpec, keys: Sequence[SigningKey], node_key: SigningKey,
                 settings: Settings) -> None:
        self.spec = spec
        self.keys = {key.address: key for key in keys}
        self.node_key = node_key
        self.follower = spec.follower()
        self.codec = default_codec()
        self.topic = settings.topic("chain.consensus")
        self.offset = 0
        self.own_proposals: dict[int, Proposal] = {}  # the node's, by height
        self.own_precommits: dict[int, Vote] = {}

    def record(self, message: Proposal | Vote) -> Record:
        self.offset += 1
        return Record(self.topic, 0, self.offset, None,
                      encode_consensus(CHAIN_ID, message, self.codec), int(time.time() * 1000))

    def vote(self, key: SigningKey, vote_type: VoteType, height: int, block_hash: bytes | None
             ) -> Vote:
        unsigned = Vote(vote_type, height, 0, block_hash, key.address, b"")
        return dataclasses.replace(unsigned, signature=key.sign(unsigned.sign_bytes(CHAIN_ID)))

    def proposer(self) -> bytes:
        return proposer(self.follower.priorities, self.follower.chain.validators, 0)

    def _peer_proposal(self) -> Proposal:
        chain = self.follower.chain
        key = self.keys[self.proposer()]
        logic = NodeBlockLogic(chain, self.spec.app, EntropyPool({}).proposer_view(0), (), (),
                               EntropyRules(), int(time.time() * 1000), key.address)
        block = logic.propose(chain.tip.height, 0)
        unsigned = Proposal(chain.tip.height, 0, -1, block, key.address, b"")
        return dataclasses.replace(unsigned, signature=key.sign(unsigned.sign_bytes(CHAIN_ID)))

    def prepare(self) -> Height:
        """Every peer message of the next height, signed and encoded."""
        height = self.follower.next_height
        from_peer = self.proposer() != self.node_key.address
        proposal = self._peer_proposal() if from_peer else self.own_proposals.pop(height)
        peers = [key for address, key in sorted(self.keys.items())
                 if address != self.node_key.address]
        prevotes = [self.vote(k, VoteType.PREVOTE, height, proposal.block_hash) for k in peers]
        precommits = [self.vote(k, VoteType.PRECOMMIT, height, proposal.block_hash)
                      for k in peers]
        first = ([self.record(proposal)] if from_peer else []) + [
            self.record(v) for v in prevotes]
        return Height(proposal, first, [self.record(v) for v in precommits], precommits)

    def read(self, producer: RecordingProducer) -> None:
        """Take what the node sent since the last call: its proposals and precommits."""
        sent, producer.sent = producer.sent, []
        for topic, value in sent:
            if topic != self.topic:
                continue
            message = decode_consensus(value, CHAIN_ID)
            if isinstance(message, Proposal):
                self.own_proposals[message.height] = message
            elif message.vote_type is VoteType.PRECOMMIT:
                self.own_precommits[message.height] = message

    def decided(self, height: Height) -> None:
        """Apply the height's block to the peers' chain, with every precommit they know (the
        node's own included, so its liveness record stays clean)."""
        block = height.proposal.block
        votes = {vote.validator_address: vote for vote in height.precommits}
        own = self.own_precommits.pop(block.height, None)
        if own is not None and own.block_hash == block.hash:
            votes[own.validator_address] = own
        signatures = tuple(
            CommitSig(CommitFlag.COMMIT, v.address, votes[v.address].signature)
            if v.address in votes else CommitSig(CommitFlag.ABSENT, v.address, b"")
            for v in self.follower.chain.validators.validators)
        self.follower.apply(block, CommitCertificate(block.height, 0, block.hash, signatures))


def node_under_test(spec: ChainSpec, key: SigningKey, guard_path: Path, *,
                    verify_workers: int = 0, settings: Settings | None = None
                    ) -> tuple[ValidatorNode, RecordingProducer]:
    """A production validator node on a recording producer, at genesis, no block interval."""
    recorder = RecordingProducer()
    node = ValidatorNode(settings or Settings(), spec, key, guard_path,
                         NodeOptions(block_interval_ms=0),
                         producer=KafkaProducer(recorder),  # type: ignore[arg-type]
                         follower=spec.follower(), verify_workers=verify_workers)
    return node, recorder


def deliver(node: ValidatorNode, height: Height) -> None:
    """Hand one height's records to the node as two polls, as its run loop would."""
    node.handle_batch(height.first)
    node.tick()
    node.handle_batch(height.second)
    node.tick()


@contextlib.contextmanager
def node_at_height_1(tmp_path: Path, me: int = 0
                     ) -> Iterator[tuple[ValidatorNode, RecordingProducer, Height]]:
    """Validator ``me`` of four (Ed25519 keys: quick) at height 1, what it produces, and every
    peer message of that height (the others are played by ``Peers``)."""
    keys = validator_keys(4, Algorithm.ED25519)
    spec = network_spec(keys)
    node, recorder = node_under_test(spec, keys[me], tmp_path / "guard")
    peers = Peers(spec, keys, keys[me], node.settings)
    try:
        node.tick()
        peers.read(recorder)
        yield node, recorder, peers.prepare()
    finally:
        node._consumer = None
        node.close()

