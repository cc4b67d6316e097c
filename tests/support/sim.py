"""Deterministic simulation of a QuStream validator network under faults.

N validators run the pure consensus state machine (``core.state_machine``) over a simulated
network driven by one seeded scheduler (``random.Random(seed)``; this harness, not consensus,
owns the randomness). A run is a pure function of its ``SimConfig``: a failing seed is printed
with the command that replays it::

    python -m tests.support.sim --seed 17 --validators 4 --heights 20

The network model follows the trust model of DESIGN.md section 2 (Kafka may delay, drop and
reorder, and nothing is trusted):

- before GST (``gst_ms``): random delay up to ``max_delay_ms``, reordering, duplication and loss
  per recipient, partitions (groups that cannot reach each other, healing at a set time) and
  validator crashes with recovery;
- after GST: delays up to ``stable_delay_ms``, no loss, partitions healed;
- gossip: every ``gossip_interval_ms`` each validator re-sends its own messages of its current
  height (what CometBFT's gossip routines do, and what re-reading the consensus log gives a
  Kafka consumer), and a validator that is behind reads the next decided block with its
  commit certificate from the blocks log (qs.chain.blocks) and checks it (``CommitReceived``);
- a tally observer reads every published message, keeps the first vote per (validator, height,
  round, type) and turns conflicting ones into evidence on the evidence channel
  (qs.chain.evidence), from which proposers include it.

Crash and recovery: a crashed validator loses its in-memory state and timers. It restarts
from what it persisted: its block store (the chain it applied), its double-sign protection
state (``SignerState``, persisted before every signature) and its write-ahead log of the inputs
of the current height, each with the block-builder snapshot it was handled with; replaying them
rebuilds the exact state.

Byzantine validators: ``equivocate`` (sign a conflicting vote for every vote, and a second
proposal when proposing), ``invalid`` (propose blocks that break the validation rules) and
``silent`` (never send). Safety needs their power below 1/3.

Signature checks go through one shared cache: each distinct signed message is verified once for
the whole simulated network, which is the work one real validator does (validators run in
parallel). Heights per second are therefore per-validator cost, plus the harness.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import heapq
import itertools
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from protocol.app import Application, FinalizeBlockRequest, FinalizeBlockResponse, TxResult
from protocol.block import Block, EntropyRef
from protocol.canonical import CanonicalWriter
from protocol.chain import ChainState, apply_block, genesis_chain
from protocol.commit import CommitCertificate, verify_commit
from protocol.evidence import DuplicateVoteEvidence
from protocol.keys import Algorithm, PublicKey, SigningKey
from protocol.messages import Vote, VoteType
from protocol.proposal import Message, Proposal
from protocol.proposer import ProposerPriorities, initial_priorities
from protocol.validators import Validator, ValidatorSet
from sdk.testing import passing_health
from services.block_builder.core.logic import NodeBlockLogic
from services.block_builder.core.proposal import EntropyRules, StaticPool
from services.consensus.core import state_machine as sm
from services.consensus.core.signer import SignerState

CHAIN_ID = "qustream-sim"
SOURCES = ("qrng-a", "qrng-b")
SIM_TIMEOUTS = sm.TimeoutParams(
    propose_ms=400,
    propose_delta_ms=100,
    prevote_ms=150,
    prevote_delta_ms=50,
    precommit_ms=150,
    precommit_delta_ms=50,
)
SIM_RULES = EntropyRules()


def sim_keys(count: int, algorithm: Algorithm = Algorithm.ED25519) -> list[SigningKey]:
    """The deterministic validator keys of a simulation (also used by tests and vectors)."""
    return [
        SigningKey.from_seed(hashlib.sha256(f"sim-validator-{i}".encode()).digest(), algorithm)
        for i in range(count)
    ]


def validator_set_of(keys: Sequence[SigningKey], powers: Sequence[int]) -> ValidatorSet:
    return ValidatorSet.of(
        Validator(k.address, k.public_key, p) for k, p in zip(keys, powers, strict=True)
    )


class Behavior(StrEnum):
    HONEST = "honest"
    EQUIVOCATE = "equivocate"
    INVALID = "invalid"
    SILENT = "silent"


class SimulationError(AssertionError):
    """A safety or liveness property failed; the message carries the replay command."""


# ---------------------------------------------------------------- signature cache


class SharedVerifier:
    """Verifies each distinct (key, message, signature) once; counts the work done."""

    def __init__(self) -> None:
        self._results: dict[bytes, bool] = {}
        self.verifications = 0

    def __call__(self, key: PublicKey, message: bytes, signature: bytes) -> bool:
        digest = hashlib.sha256(
            len(key.raw).to_bytes(4, "big") + key.raw + len(message).to_bytes(4, "big")
            + message + signature
        ).digest()
        known = self._results.get(digest)
        if known is None:
            self.verifications += 1
            known = key.verify(message, signature)
            self._results[digest] = known
        return known


# ---------------------------------------------------------------- the stand-in application


@dataclass(frozen=True, slots=True)
class CounterState:
    chain_id: str
    height: int
    count: int  # transactions applied so far
    validator_sets: tuple[ValidatorSet, ValidatorSet]  # governing height + 1 and height + 2
    punished: tuple[bytes, ...]  # validators removed for proven misbehaviour, sorted


class CounterApp:
    """The simulation's minimal ``Application``: counts transactions of the form ``tx:...``,
    and removes a validator proven to double-sign from the set two heights later (as the
    ledger's jail does), unless that would empty the set. The real ledger plugs in instead
    through ``SimConfig.app_factory``."""

    def genesis(self, chain_id: str, validators: ValidatorSet) -> CounterState:
        return CounterState(chain_id, 0, 0, (validators, validators), ())

    def check_tx(self, state: CounterState, tx: bytes) -> TxResult:
        if tx.startswith(b"tx:") and len(tx) <= 64:
            return TxResult(0, "ok")
        return TxResult(1, "a counter transaction reads tx:<anything up to 61 bytes>")

    def finalize_block(
        self, state: CounterState, request: FinalizeBlockRequest
    ) -> tuple[CounterState, FinalizeBlockResponse]:
        if request.height != state.height + 1 or request.chain_id != state.chain_id:
            raise ValueError(f"block {request.height} does not follow state {state.height}")
        results = tuple(self.check_tx(state, tx) for tx in request.txs)
        applied = sum(1 for result in results if result.code == 0)
        punished = tuple(
            sorted(set(state.punished) | {m.validator_address for m in request.misbehavior})
        )
        current = state.validator_sets[1]
        remaining = [v for v in current.validators if v.address not in punished]
        next_set = ValidatorSet.of(remaining) if remaining else current
        new_state = CounterState(
            state.chain_id,
            request.height,
            state.count + applied,
            (current, next_set),
            punished,
        )
        return new_state, FinalizeBlockResponse(results, self.state_hash(new_state))

    def validator_set(self, state: CounterState, height: int) -> ValidatorSet:
        offset = height - state.height
        if offset not in (1, 2):
            raise ValueError(f"state at {state.height} does not know the set of {height}")
        return state.validator_sets[offset - 1]

    def state_hash(self, state: CounterState) -> bytes:
        return (
            CanonicalWriter("SimCounterState")
            .text(state.chain_id)
            .u64(state.height)
            .u64(state.count)
            .raw(state.validator_sets[0].hash(), 32)
            .raw(state.validator_sets[1].hash(), 32)
            .sequence(state.punished, lambda w, a: w.raw(a, 20))
            .digest()
        )

    def registered_sources(self, state: CounterState) -> int:
        return len(SOURCES)


AppFactory = Callable[[Sequence[SigningKey], Sequence[int]], tuple[Application[Any], Any]]


def counter_app_factory(
    keys: Sequence[SigningKey], powers: Sequence[int]
) -> tuple[Application[Any], Any]:
    validators = validator_set_of(keys, powers)
    app = CounterApp()
    return app, app.genesis(CHAIN_ID, validators)


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class Partition:
    start_ms: int
    heal_ms: int
    group: frozenset[int]  # validators on one side; the rest on the other


@dataclass(frozen=True, slots=True)
class Crash:
    node: int
    at_ms: int
    recover_ms: int


@dataclass(frozen=True)
class SimConfig:
    seed: int = 0
    validators: int = 4
    heights: int = 10
    algorithm: Algorithm = Algorithm.ED25519
    powers: tuple[int, ...] | None = None  # default: 10 each
    byzantine: tuple[tuple[int, Behavior], ...] = ()  # (validator index, behaviour)
    gst_ms: int = 3_000
    max_delay_ms: int = 300
    stable_delay_ms: int = 20
    loss_per_mille: int = 100
    duplicate_per_mille: int = 50
    partitions: tuple[Partition, ...] = ()
    crashes: tuple[Crash, ...] = ()
    gossip_interval_ms: int = 500
    timeouts: sm.TimeoutParams = SIM_TIMEOUTS
    rules: EntropyRules = SIM_RULES
    evidence_max_age: int = 50
    tx_interval_ms: int = 250
    max_time_ms: int = 600_000
    app_factory: AppFactory = counter_app_factory

    def behavior(self, index: int) -> Behavior:
        for node, behavior in self.byzantine:
            if node == index:
                return behavior
        return Behavior.HONEST

    def replay_command(self) -> str:
        parts = [
            f"python -m tests.support.sim --seed {self.seed}",
            f"--validators {self.validators} --heights {self.heights}",
        ]
        if self.byzantine:
            parts.append(
                "--byzantine " + ",".join(f"{i}:{b.value}" for i, b in self.byzantine)
            )
        if self.algorithm is not Algorithm.ED25519:
            parts.append(f"--algorithm {self.algorithm.value}")
        return " ".join(parts)


def faulty_config(
    seed: int,
    validators: int = 4,
    heights: int = 8,
    byzantine: tuple[tuple[int, Behavior], ...] = (),
    algorithm: Algorithm = Algorithm.ED25519,
    app_factory: AppFactory = counter_app_factory,
) -> SimConfig:
    """A config with a seed-chosen partition and crash before GST (what the CLI runs)."""
    chooser = random.Random(seed ^ 0x5EED)
    honest = [i for i in range(validators) if i not in dict(byzantine)]
    group = frozenset(chooser.sample(range(validators), max(1, validators // 2)))
    start = chooser.randrange(0, 1_500)
    partitions = (Partition(start, start + chooser.randrange(200, 1_500), group),)
    crashes: tuple[Crash, ...] = ()
    if honest:
        at = chooser.randrange(0, 2_500)
        crashes = (Crash(chooser.choice(honest), at, at + chooser.randrange(100, 2_000)),)
    return SimConfig(
        seed=seed,
        validators=validators,
        heights=heights,
        byzantine=byzantine,
        algorithm=algorithm,
        partitions=partitions,
        crashes=crashes,
        app_factory=app_factory,
    )


# ---------------------------------------------------------------- nodes and results


@dataclass
class Node:
    """Harness-side record of one validator (mutable: this is the simulated machine)."""

    index: int
    key: SigningKey
    behavior: Behavior
    config: sm.ConsensusConfig
    chain: ChainState[Any]
    state: sm.ConsensusState
    priorities: ProposerPriorities  # persisted at each height start
    signer: SignerState  # persisted before each signature
    wal: list[tuple[sm.Event, NodeBlockLogic[Any] | None]] = field(default_factory=list)
    decisions: dict[int, sm.Decided] = field(default_factory=dict)
    committed_txs: set[bytes] = field(default_factory=set)
    crashed: bool = False
    incarnation: int = 0


@dataclass
class SimResult:
    config: SimConfig
    decided: dict[int, dict[int, bytes]]  # node -> height -> block hash
    commits_verified: int
    max_round: int
    messages_sent: int
    signature_verifications: int
    evidence_detected: tuple[DuplicateVoteEvidence, ...]
    evidence_committed: tuple[bytes, ...]  # evidence hashes included in decided blocks
    equivocations: int  # conflicting votes the Byzantine validators published
    time_ms: int
    final_app_states: dict[int, Any]
    blocks: dict[int, Block]

    @property
    def heights_decided(self) -> int:
        honest = [h for n, h in self.decided.items() if self.config.behavior(n) is Behavior.HONEST]
        return min((len(h) for h in honest), default=0)


# ---------------------------------------------------------------- the simulator


class Simulation:
    """One run. ``run()`` returns a ``SimResult`` or raises ``SimulationError``."""

    def __init__(self, config: SimConfig) -> None:
        self.cfg = config
        self.rng = random.Random(config.seed)
        self.verifier = SharedVerifier()
        self.now = 0
        self._queue: list[tuple[int, int, Callable[[], None]]] = []
        self._sequence = itertools.count()
        self.messages_sent = 0
        self.keys = sim_keys(config.validators, config.algorithm)
        powers = config.powers or tuple(10 for _ in range(config.validators))
        self.app, genesis_state = config.app_factory(self.keys, powers)
        chain = genesis_chain(
            self.app,
            genesis_state,
            CHAIN_ID,
            hashlib.sha256(b"qustream-sim-genesis").digest(),
            1_000_000,
            b"sim-genesis-randomness",
            config.evidence_max_age,
        )
        self.sets_by_height: dict[int, ValidatorSet] = {1: chain.validators}
        priorities = initial_priorities(chain.validators)
        self.nodes: list[Node] = []
        for index, key in enumerate(self.keys):
            consensus = sm.ConsensusConfig(CHAIN_ID, key, config.timeouts, self.verifier)
            self.nodes.append(
                Node(
                    index,
                    key,
                    config.behavior(index),
                    consensus,
                    chain,
                    sm.initial_state(1, chain.validators, priorities),
                    priorities,
                    SignerState(),
                )
            )
        self.blocks_log: dict[int, tuple[Block, CommitCertificate]] = {}
        self.tally_votes: dict[tuple[bytes, int, int, VoteType], Vote] = {}
        self.evidence_channel: dict[bytes, DuplicateVoteEvidence] = {}
        self.tally_evidence: list[DuplicateVoteEvidence] = []
        self.equivocations = 0
        self.txs: list[bytes] = []
        self.commits_verified = 0

    # -- scheduling

    def _at(self, time_ms: int, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (time_ms, next(self._sequence), action))

    def _stable(self) -> bool:
        return self.now >= self.cfg.gst_ms

    def _connected(self, a: int, b: int) -> bool:
        for partition in self.cfg.partitions:
            if partition.start_ms <= self.now < partition.heal_ms and (
                (a in partition.group) != (b in partition.group)
            ):
                return False
        return True

    def _delay(self) -> int:
        bound = self.cfg.stable_delay_ms if self._stable() else self.cfg.max_delay_ms
        return 1 + self.rng.randrange(bound)

    # -- network

    def _send(self, sender: int, recipient: int, event: sm.Event) -> None:
        if not self._connected(sender, recipient):
            return
        copies = 1
        if not self._stable():
            if self.rng.randrange(1000) < self.cfg.loss_per_mille:
                return
            if self.rng.randrange(1000) < self.cfg.duplicate_per_mille:
                copies = 2
        for _ in range(copies):
            self.messages_sent += 1
            self._at(self.now + self._delay(), functools.partial(self._deliver, recipient, event))

    def _publish(self, sender: int, message: Message, recipients: Sequence[int] | None = None
                 ) -> None:
        """Publish to the consensus log: the tally sees it, validators receive it."""
        self._tally(message)
        event: sm.Event = (sm.ProposalReceived(message) if isinstance(message, Proposal)
                           else sm.VoteReceived(message))
        for recipient in recipients if recipients is not None else range(len(self.nodes)):
            if recipient != sender:
                self._send(sender, recipient, event)

    def _tally(self, message: Message) -> None:
        if not isinstance(message, Vote):
            return
        validators = self.sets_by_height.get(message.height)
        if validators is None or message.validator_address not in validators:
            return
        validator = validators.get(message.validator_address)
        assert validator is not None
        if not self.verifier(validator.public_key, message.sign_bytes(CHAIN_ID),
                             message.signature):
            return
        slot = (message.validator_address, message.height, message.round, message.vote_type)
        first = self.tally_votes.setdefault(slot, message)
        if first.block_key != message.block_key:
            evidence = DuplicateVoteEvidence.from_votes(first, message)
            if evidence.hash() not in self.evidence_channel:
                self.evidence_channel[evidence.hash()] = evidence
                self.tally_evidence.append(evidence)

    # -- node driving

    def _logic(self, node: Node) -> NodeBlockLogic[Any]:
        height = node.chain.tip.height
        mempool = tuple(tx for tx in self.txs if tx not in node.committed_txs)[:20]
        evidence = tuple(self.evidence_channel[k] for k in sorted(self.evidence_channel))
        return NodeBlockLogic(
            node.chain,
            self.app,
            entropy_pool(height, self.cfg.rules),
            mempool,
            evidence,
            self.cfg.rules,
            self.now + 1_000_000,
            node.key.address,
            self.verifier,
        )

    def _deliver(self, index: int, event: sm.Event) -> None:
        node = self.nodes[index]
        if node.crashed or node.behavior is Behavior.SILENT:
            return
        self._input(node, event)

    def _input(self, node: Node, event: sm.Event) -> None:
        logic = self._logic(node)
        node.wal.append((event, logic))
        state, outputs = sm.handle(node.config, logic, node.state, event)
        node.state = state
        node.signer = state.signer  # persisted before the outputs leave the node
        self._outputs(node, outputs)

    def _outputs(self, node: Node, outputs: Sequence[Any]) -> None:
        for output in outputs:
            if isinstance(output, sm.Broadcast):
                self._broadcast(node, output.message)
            elif isinstance(output, sm.ScheduleTimeout):
                incarnation = node.incarnation
                self._at(
                    self.now + output.duration_ms,
                    functools.partial(self._timeout, node, output, incarnation),
                )
            elif isinstance(output, sm.Decided):
                self._decided(node, output)
            elif isinstance(output, sm.EvidenceDetected):
                self.evidence_channel.setdefault(output.evidence.hash(), output.evidence)

    def _timeout(self, node: Node, output: sm.ScheduleTimeout, incarnation: int) -> None:
        if node.crashed or node.incarnation != incarnation or node.behavior is Behavior.SILENT:
            return
        self._input(node, sm.TimeoutFired(output.height, output.round, output.step))

    def _broadcast(self, node: Node, message: Message) -> None:
        if node.behavior is Behavior.EQUIVOCATE:
            self._equivocate(node, message)
            return
        if node.behavior is Behavior.INVALID and isinstance(message, Proposal):
            message = self._invalid_proposal(node, message)
        self._publish(node.index, message)

    def _equivocate(self, node: Node, message: Message) -> None:
        if isinstance(message, Vote):
            other = (
                hashlib.sha256(b"conflict" + message.signature).digest()
                if message.block_hash is None
                else None
            )
            conflicting = dataclasses.replace(message, block_hash=other, signature=b"")
            conflicting = dataclasses.replace(
                conflicting, signature=node.key.sign(conflicting.sign_bytes(CHAIN_ID))
            )
            self.equivocations += 1
            self._publish(node.index, message)
            self._publish(node.index, conflicting)
            return
        block = message.block
        header = dataclasses.replace(block.header, time_ms=block.header.time_ms + 1)
        second_block = Block(header, block.body)
        second = dataclasses.replace(message, block=second_block, signature=b"")
        second = dataclasses.replace(second, signature=node.key.sign(second.sign_bytes(CHAIN_ID)))
        others = [i for i in range(len(self.nodes)) if i != node.index]
        self.rng.shuffle(others)
        half = len(others) // 2
        self._publish(node.index, message, others[:half])
        self._publish(node.index, second, others[half:])

    def _invalid_proposal(self, node: Node, proposal: Proposal) -> Proposal:
        header = dataclasses.replace(proposal.block.header, randomness=bytes(64))
        bad = dataclasses.replace(proposal, block=Block(header, proposal.block.body), signature=b"")
        return dataclasses.replace(bad, signature=node.key.sign(bad.sign_bytes(CHAIN_ID)))

    def _decided(self, node: Node, decision: sm.Decided) -> None:
        previous = node.decisions.get(decision.height)
        if previous is not None:
            return
        node.decisions[decision.height] = decision
        node.committed_txs.update(decision.block.body.txs)
        if node.behavior is Behavior.HONEST:
            self.blocks_log.setdefault(decision.height, (decision.block, decision.commit))
        chain, _ = apply_block(node.chain, self.app, decision.block, decision.commit)
        node.chain = chain
        height = chain.tip.height
        self.sets_by_height.setdefault(height, chain.validators)
        # The new height's log starts with the messages buffered for it (the state machine
        # replays them when the height starts), so a restart rebuilds them too.
        logic = self._logic(node)
        node.wal = [(event, logic) for event in node.state.future]
        self._input(node, sm.StartHeight(height, chain.validators))
        node.priorities = node.state.priorities

    # -- periodic activity

    def _gossip(self) -> None:
        for node in self.nodes:
            if node.crashed or node.behavior is Behavior.SILENT:
                continue
            logged = self.blocks_log.get(node.chain.tip.height)
            if logged is not None and node.chain.tip.height not in node.decisions:
                self._send_commit(node, logged)
                continue
            me = node.key.address
            state = node.state
            for round in sorted(state.proposals):
                if state.proposals[round].proposer_address == me:
                    self._publish(node.index, state.proposals[round])
            for key in sorted(state.votes.sets):
                vote = state.votes.sets[key].vote_of(me)
                if vote is not None:
                    self._publish(node.index, vote)
        if not self._done():
            self._at(self.now + self.cfg.gossip_interval_ms, self._gossip)

    def _send_commit(self, node: Node, logged: tuple[Block, CommitCertificate]) -> None:
        block, commit = logged
        self._at(
            self.now + self._delay(),
            lambda: self._deliver(node.index, sm.CommitReceived(block, commit)),
        )

    def _submit_tx(self) -> None:
        self.txs.append(f"tx:{len(self.txs)}".encode())
        if not self._done():
            self._at(self.now + self.cfg.tx_interval_ms, self._submit_tx)

    def _crash(self, crash: Crash) -> None:
        node = self.nodes[crash.node]
        node.crashed = True
        node.incarnation += 1

    def _recover(self, crash: Crash) -> None:
        node = self.nodes[crash.node]
        node.crashed = False
        wal, node.wal = node.wal, []
        node.state = sm.initial_state(
            node.chain.tip.height, node.chain.validators, node.priorities, node.signer
        )
        for event, logic in wal:
            node.wal.append((event, logic))
            assert logic is not None
            state, outputs = sm.handle(node.config, logic, node.state, event)
            node.state = state
            node.signer = state.signer
            self._outputs(node, outputs)

    def _done(self) -> bool:
        if self.now > self.cfg.max_time_ms:
            return True
        return all(
            len(node.decisions) >= self.cfg.heights
            for node in self.nodes
            if node.behavior is Behavior.HONEST
        )

    # -- the run

    def run(self) -> SimResult:
        for node in self.nodes:
            if node.behavior is not Behavior.SILENT:
                start = sm.StartHeight(1, node.chain.validators)
                self._at(0, functools.partial(self._input, node, start))
        for crash in self.cfg.crashes:
            self._at(crash.at_ms, functools.partial(self._crash, crash))
            self._at(crash.recover_ms, functools.partial(self._recover, crash))
        self._at(self.cfg.gossip_interval_ms, self._gossip)
        self._at(0, self._submit_tx)
        while self._queue and not self._done():
            time_ms, _, action = heapq.heappop(self._queue)
            self.now = time_ms
            action()
        return self._check()

    def _check(self) -> SimResult:
        cfg = self.cfg
        replay = cfg.replay_command()
        decided: dict[int, dict[int, bytes]] = {
            node.index: {h: d.block.hash for h, d in node.decisions.items()}
            for node in self.nodes
        }
        honest = [node for node in self.nodes if node.behavior is Behavior.HONEST]
        by_height: dict[int, set[bytes]] = {}
        for node in honest:
            for height, decision in node.decisions.items():
                by_height.setdefault(height, set()).add(decision.block.hash)
        for height in sorted(by_height):
            if len(by_height[height]) > 1:
                raise SimulationError(f"safety: two blocks decided at height {height}; {replay}")
        verified = 0
        for node in honest:
            for height in sorted(node.decisions):
                decision = node.decisions[height]
                result = verify_commit(
                    CHAIN_ID,
                    decision.block.hash,
                    height,
                    decision.commit,
                    self.sets_by_height[height],
                    self.verifier,
                )
                if not result.ok:
                    raise SimulationError(
                        f"commit of height {height} at node {node.index} does not verify: "
                        f"{result.reason}; {replay}"
                    )
                verified += 1
        for node in honest:
            if len(node.decisions) < cfg.heights:
                raise SimulationError(
                    f"liveness: node {node.index} decided {len(node.decisions)} of "
                    f"{cfg.heights} heights by {self.now} ms; {replay}"
                )
        if self.equivocations and not self.tally_evidence:
            raise SimulationError(f"equivocation produced no evidence; {replay}")
        committed: list[bytes] = []
        blocks: dict[int, Block] = {}
        max_round = 0
        reference = max(honest, key=lambda n: len(n.decisions))
        for height in sorted(reference.decisions):
            decision = reference.decisions[height]
            blocks[height] = decision.block
            max_round = max(max_round, decision.round)
            committed.extend(item.hash() for item in decision.block.body.evidence)
        return SimResult(
            config=cfg,
            decided=decided,
            commits_verified=verified,
            max_round=max_round,
            messages_sent=self.messages_sent,
            signature_verifications=self.verifier.verifications,
            evidence_detected=tuple(self.tally_evidence),
            evidence_committed=tuple(committed),
            equivocations=self.equivocations,
            time_ms=self.now,
            final_app_states={n.index: n.chain.app_state for n in honest},
            blocks=blocks,
        )


@functools.lru_cache(maxsize=64)
def entropy_pool(height: int, rules: EntropyRules, window: int = 8) -> StaticPool:
    """Two simulated QRNG sources; chunk ``seq`` of each becomes verified at height seq + 1,
    each committing to the next one's digest."""
    def digest(source: str, seq: int) -> bytes:
        return hashlib.sha256(f"{source}:{seq}".encode()).digest()

    chunks = {
        source: tuple(
            (EntropyRef(source, seq, digest(source, seq),
                        passing_health(rct_max_run=16 + seq % 8), digest(source, seq + 1)),
             seq + 1)
            for seq in range(max(0, height - window), height)
        )
        for source in SOURCES
    }
    return StaticPool(height, chunks, frozenset(SOURCES))


def simulate(config: SimConfig) -> SimResult:
    return Simulation(config).run()


def run_seeds(configs: Sequence[SimConfig]) -> list[SimResult]:
    """Run every config; on the first failure print its replay command and re-raise."""
    results = []
    for config in configs:
        try:
            results.append(simulate(config))
        except Exception:
            print(f"simulation failed; replay with: {config.replay_command()}", file=sys.stderr)
            raise
    return results


def _parse_byzantine(text: str) -> tuple[tuple[int, Behavior], ...]:
    if not text:
        return ()
    entries = []
    for item in text.split(","):
        index, _, behavior = item.partition(":")
        entries.append((int(index), Behavior(behavior)))
    return tuple(entries)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validators", type=int, default=4)
    parser.add_argument("--heights", type=int, default=10)
    parser.add_argument("--byzantine", default="", help="e.g. 0:equivocate,3:silent")
    parser.add_argument("--algorithm", default=Algorithm.ED25519.value)
    args = parser.parse_args(argv)
    config = faulty_config(
        args.seed,
        args.validators,
        args.heights,
        _parse_byzantine(args.byzantine),
        Algorithm.from_option(args.algorithm),
    )
    try:
        result = simulate(config)
    except SimulationError as exc:
        print(f"FAILED: {exc}")
        return 1
    print(
        f"ok: {result.heights_decided} heights, max round {result.max_round}, "
        f"{result.messages_sent} messages, {result.signature_verifications} verifications, "
        f"{len(result.evidence_detected)} evidence ({len(result.evidence_committed)} committed), "
        f"{result.time_ms} simulated ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
