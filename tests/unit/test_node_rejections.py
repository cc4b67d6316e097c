"""The consensus driver decides on a rejection's kind, never its text.

A message refused because the core's future-message buffer is full (``RejectionKind.
FUTURE_BUFFER_FULL``) may be valid: it is neither counted nor dead-lettered. A message refused
as invalid is handed to ``on_rejected`` (the shells dead-letter it with the kind as its type).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from protocol.block import Block
from protocol.follow import BlockFollower
from protocol.keys import SigningKey
from protocol.messages import Vote, VoteType
from services.consensus.core.state_machine import (
    ConsensusConfig,
    MessageRejected,
    Output,
    RejectionKind,
    Step,
    VoteReceived,
)
from services.consensus.node import ConsensusDriver
from streams.dlq import error_type
from streams.kafka import Record
from tests.support.sim import CHAIN_ID, SimConfig, Simulation

SIMULATION = Simulation(SimConfig(validators=4))


class _Observer(ConsensusDriver):
    use_timeouts = False

    def __init__(self, max_future: int) -> None:
        node = SIMULATION.nodes[0]
        super().__init__(ConsensusConfig(CHAIN_ID, None, max_future_messages=max_future),
                         BlockFollower.start(SIMULATION.app, node.chain))
        self.refused: list[MessageRejected] = []
        self.outputs: list[Output] = []

    def on_outputs(self, outputs: Sequence[Output], source: Record | None) -> None:
        self.outputs.extend(outputs)

    def logic(self) -> _NoBlocks:
        return _NoBlocks()

    def on_rejected(self, rejection: MessageRejected, source: Record | None) -> None:
        self.refused.append(rejection)


class _NoBlocks:
    def propose(self, height: int, round: int) -> Block:
        raise AssertionError("an observer never proposes")

    def validate(self, block: Block) -> str | None:
        return None


def _vote(key: SigningKey, height: int) -> VoteReceived:
    unsigned = Vote(VoteType.PREVOTE, height, 0, None, key.address, b"")
    return VoteReceived(dataclasses.replace(
        unsigned, signature=key.sign(unsigned.sign_bytes(CHAIN_ID))))


def _record(offset: int) -> Record:
    return Record("chain.consensus", 0, offset, None, b"", 0)


def test_a_full_future_buffer_is_neither_counted_nor_dead_lettered() -> None:
    driver = _Observer(max_future=2)
    assert driver.state.step is Step.NEW  # the height has not started: inputs are buffered
    for offset, key in enumerate(SIMULATION.keys[:3]):
        driver.feed(_vote(key, 1), _record(offset))
    core_rejections = [o for o in driver.outputs if isinstance(o, MessageRejected)]
    assert [r.kind for r in core_rejections] == [RejectionKind.FUTURE_BUFFER_FULL]
    assert driver.refused == [] and driver.rejected == {}


def test_an_invalid_message_is_handed_over_with_its_kind() -> None:
    driver = _Observer(max_future=2)
    driver.tick()  # starts height 1
    assert driver.state.step is not Step.NEW
    outsider = SigningKey.generate()
    driver.feed(_vote(outsider, 1), _record(7))
    (rejection,) = driver.refused
    assert rejection.kind is RejectionKind.INVALID
    assert error_type(rejection.kind) == "rejected_by_core"
    assert driver.rejected == {"message": 1}


def test_every_core_rejection_kind_is_a_stable_dead_letter_type() -> None:
    kinds: Sequence[RejectionKind] = list(RejectionKind)
    assert len({error_type(kind) for kind in kinds}) == len(kinds)
    assert error_type(RejectionKind.FUTURE_BUFFER_FULL) == "future_buffer_full"
