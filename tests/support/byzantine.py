"""Byzantine validator behaviour for fault tests: test support, never a production option.

``python -m tests.support.byzantine BEHAVIOUR --key K --genesis G [--block-interval-ms N]``
runs a validator node that misbehaves:

- ``double-sign``: after every vote it sends, it sends a second, conflicting vote for the same
  (height, round, type), signed with its key but bypassing the double-sign guard. The honest
  nodes and the tally must turn the pair into ``DuplicateVoteEvidence`` and the ledger must
  slash and tombstone the validator.
- ``attack`` (issue 16): from ``--attack-height`` on, each time it proposes it stamps an absurd
  time, and once it publishes, as a validator with a real key and as anyone who can write the
  topics: proposals with absurd rounds (signed and forged), prevotes for thousands of future
  rounds, unsigned ``BlockFinalized`` records conflicting with applied heights, evidence spam
  (garbage, forged signatures, strangers, far future), forged chunks on ``entropy.raw`` linked
  to the sources' public heads, and ``--junk-txs`` transactions from fresh keys. It never
  signs two values for one (height, round, type), so it is not slashed: every one of these
  must simply be refused (and dead-lettered with its reason) while the chain goes on.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from protocol.block import Block
from protocol.commit import CommitCertificate, CommitFlag, CommitSig
from protocol.entropy.chain import ChainHead, Chunk, extend
from protocol.evidence import DuplicateVoteEvidence
from protocol.finalized import FinalizedRecord
from protocol.keys import Algorithm, SigningKey
from protocol.messages import Vote, VoteType
from protocol.proposal import Proposal
from services.consensus.core.state_machine import BlockLogic, Broadcast, Decided, Output
from services.consensus.validator import NodeOptions, ValidatorNode
from services.ledger.core import Transfer, encode_signed_tx, sign_tx
from services.ledger.core.chain_spec import ChainSpec
from services.ledger.submit import submitted_record
from streams.chain_wire import (
    encode_consensus,
    encode_evidence,
    encode_finalized,
    height_key,
)
from streams.cli import dump_stacks_on_sigusr1
from streams.kafka import Record
from streams.settings import Settings, load_settings

log = logging.getLogger(__name__)


class DoubleSigningValidator(ValidatorNode):
    """Sends a conflicting vote after each of its votes (module doc)."""

    def on_outputs(self, outputs: Sequence[Output], source: Any) -> None:
        super().on_outputs(outputs, source)
        topic = self.settings.topic("chain.consensus")
        for output in outputs:
            if isinstance(output, Broadcast) and isinstance(output.message, Vote):
                conflicting = self._conflicting(output.message)
                self.producer.produce(topic, encode_consensus(self.config.chain_id,
                                                              conflicting, self.codec))
        self.producer.poll(0)

    def _conflicting(self, vote: Vote) -> Vote:
        other = (hashlib.sha256(b"conflict" + vote.signature).digest()
                 if vote.block_hash is None else None)
        unsigned = replace(vote, block_hash=other, signature=b"")
        return replace(unsigned, signature=self.key.sign(unsigned.sign_bytes(
            self.config.chain_id)))


ABSURD_TIMES = (2**64 - 1, 2**63, None)  # None: an hour ahead of the clock


class _AbsurdTimeLogic:
    """Proposes what the honest builder would, stamped with an absurd time."""

    def __init__(self, inner: BlockLogic, times: list[int | None]) -> None:
        self.inner = inner
        self.times = times

    def propose(self, height: int, round: int) -> Block:
        block = self.inner.propose(height, round)
        stamp = self.times[(height + round) % len(self.times)]
        stamp = stamp if stamp is not None else int(time.time() * 1000) + 3_600_000
        return Block(replace(block.header, time_ms=stamp), block.body)

    def validate(self, block: Block) -> str | None:
        return self.inner.validate(block)


class AttackingValidator(ValidatorNode):
    """A validator that attacks from ``attack_height`` on (module doc)."""

    def __init__(self, settings: Settings, spec: ChainSpec, key: SigningKey, guard_path: Path,
                 options: NodeOptions = NodeOptions(), *, attack_height: int = 4,
                 junk_txs: int = 10_000, future_rounds: int = 3_000) -> None:
        super().__init__(settings, spec, key, guard_path, options)
        self.attack_height = attack_height
        self.junk_txs = junk_txs
        self.future_rounds = future_rounds
        self.attacked = False
        self.forged_chunks = 0
        self.last_decision: Decided | None = None

    @property
    def attacking(self) -> bool:
        return self.follower.next_height >= self.attack_height

    def logic(self) -> BlockLogic:
        inner = super().logic()
        return _AbsurdTimeLogic(inner, list(ABSURD_TIMES)) if self.attacking else inner

    def on_decided(self, decision: Decided, source: Record | None) -> None:
        super().on_decided(decision, source)
        self.last_decision = decision

    def _tick(self) -> float:
        wait = super()._tick()
        if self.attacking and not self.attacked and self.last_decision is not None:
            self.attacked = True
            self._attack()
        return wait

    def _entropy(self, message: Record) -> None:
        super()._entropy(message)
        if not self.attacking or self.forged_chunks >= 6:
            return
        try:
            schema, record = self.codec.decode(message.value)
        except ValueError:
            return
        if schema != "EntropyChunkPublished":
            return
        genuine = Chunk.from_record(record)
        if message.timestamp_ms < int(time.time() * 1000) - 100:
            return  # read late (the node was busy): its successor is likely verified already
        # (the record's log time, not produced_at_ms: a source holds each payload one chunk
        # before publishing it, the precommitment of docs/precommitment.md)
        forged, _ = extend(ChainHead(genuine.seq + 1, genuine.chunk_digest),
                           source_id=genuine.source_id, private=False,
                           payload=os.urandom(len(genuine.payload)),
                           produced_at_ms=genuine.produced_at_ms + 1,
                           simulated=genuine.simulated, health=genuine.health)
        self.producer.produce(self.settings.topic("entropy.raw"),
                              self.codec.encode("EntropyChunkPublished", forged.to_record()),
                              genuine.source_id.encode())
        self.forged_chunks += 1

    # -- the burst

    def _send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        for _ in range(100):
            try:
                self.producer.produce(self.settings.topic(topic), value, key)
                return
            except BufferError:  # the local queue is full: let it drain
                self.producer.poll(0.05)
        self.producer.produce(self.settings.topic(topic), value, key)

    def _attack(self) -> None:
        started = time.monotonic()
        height = self.follower.next_height
        chain_id = self.config.chain_id
        self._absurd_rounds(height, chain_id)
        self._future_round_votes(height, chain_id)
        self._unsigned_finalized()
        self._evidence_spam(height, chain_id)
        self._junk_transactions(chain_id)
        self.producer.flush(30)
        log.warning("%s: attack burst at height %d sent in %.1f s", self.name, height,
                    time.monotonic() - started)

    def _absurd_rounds(self, height: int, chain_id: str) -> None:
        block = super().logic().propose(height, 0)
        honest = next(v.address for v in self.follower.chain.validators.validators
                      if v.address != self.key.address)
        for round_ in (2**31 - 1, 1_000_000, 5_000, 101):
            unsigned = Proposal(height, round_, -1, block, self.key.address, b"")
            signed = replace(unsigned, signature=self.key.sign(unsigned.sign_bytes(chain_id)))
            forged = replace(unsigned, proposer_address=honest, signature=bytes(3309))
            for proposal in (signed, forged):
                self._send("chain.consensus", encode_consensus(chain_id, proposal, self.codec))

    def _future_round_votes(self, height: int, chain_id: str) -> None:
        # rounds from 20 on: a height decides in a few rounds, so the node's own honest votes
        # never meet these (it must not double-sign: that is another test)
        for round_ in range(20, 20 + self.future_rounds):
            unsigned = Vote(VoteType.PREVOTE, height, round_, None, self.key.address, b"")
            vote = replace(unsigned, signature=self.key.sign(unsigned.sign_bytes(chain_id)))
            self._send("chain.consensus", encode_consensus(chain_id, vote, self.codec))

    def _unsigned_finalized(self) -> None:
        decision = self.last_decision
        assert decision is not None
        block = Block(replace(decision.block.header, time_ms=decision.block.header.time_ms + 1),
                      decision.block.body)
        moved = replace(decision.commit, block_hash=block.hash)  # signatures of another block
        empty = CommitCertificate(decision.height, decision.round, block.hash, tuple(
            CommitSig(CommitFlag.ABSENT, s.validator_address, b"")
            for s in decision.commit.signatures))
        for commit in (moved, empty):
            record = FinalizedRecord(self.config.chain_id, block, commit, bytes(32), 0,
                                     int(time.time() * 1000), int(time.time() * 1000))
            self._send("chain.blocks", encode_finalized(record, self.codec),
                       height_key(decision.height))

    def _evidence_spam(self, height: int, chain_id: str) -> None:
        def pair(signer: SigningKey, at: int, forge: bool = False) -> DuplicateVoteEvidence:
            votes = []
            for value in (None, hashlib.sha256(b"spam").digest()):
                unsigned = Vote(VoteType.PREVOTE, at, 0, value, signer.address, b"")
                signature = bytes(64) if forge else signer.sign(unsigned.sign_bytes(chain_id))
                votes.append(replace(unsigned, signature=signature))
            return DuplicateVoteEvidence.from_votes(*votes)

        stranger = SigningKey.generate(Algorithm.ED25519)
        honest = self.follower.chain.validators.validators[0].address
        forged = pair(stranger, height - 1, forge=True)
        forged = DuplicateVoteEvidence(replace(forged.vote_a, validator_address=honest),
                                       replace(forged.vote_b, validator_address=honest))
        items = [pair(stranger, height - 1), forged, pair(self.key, height + 1_000)]
        for _ in range(20):
            for item in items:
                self._send("chain.evidence", encode_evidence(chain_id, item, self.codec),
                           item.validator_address)
            self._send("chain.evidence", os.urandom(200), b"garbage")

    def _junk_transactions(self, chain_id: str) -> None:
        target = self.key.address
        for _ in range(self.junk_txs):
            junk = SigningKey.generate(Algorithm.ED25519)
            raw = encode_signed_tx(sign_tx(junk, chain_id, 0, 1_000_000, Transfer(target, 1)))
            key, value = submitted_record(raw)
            self._send("ledger.tx", value, key)
            self.producer.poll(0)


BEHAVIOURS: dict[str, type[ValidatorNode]] = {"double-sign": DoubleSigningValidator,
                                              "attack": AttackingValidator}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("behaviour", choices=sorted(BEHAVIOURS))
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--genesis", type=Path, required=True)
    parser.add_argument("--block-interval-ms", type=int, default=1000)
    parser.add_argument("--attack-height", type=int, default=4)
    parser.add_argument("--junk-txs", type=int, default=10_000)
    args = parser.parse_args(argv)
    dump_stacks_on_sigusr1()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = load_settings()
    key = SigningKey.load(args.key)
    extra: dict[str, Any] = ({"attack_height": args.attack_height, "junk_txs": args.junk_txs}
                             if args.behaviour == "attack" else {})
    node = BEHAVIOURS[args.behaviour](
        settings, ChainSpec.load(args.genesis), key,
        settings.state_dir / "validators" / f"signer-{key.address.hex()}.json",
        NodeOptions(block_interval_ms=args.block_interval_ms), **extra)
    signal.signal(signal.SIGTERM, lambda *_: node.stop())
    signal.signal(signal.SIGINT, lambda *_: node.stop())
    node.run()


if __name__ == "__main__":
    main()
