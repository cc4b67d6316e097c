"""``GuardOutbox``: a signed message leaves only after the guard state that signed it is on
disk (the sync runs on the guard's thread), messages leave in the order they were signed, and a
state that cannot be made durable lets none of its messages out."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from protocol.keys import SigningKey
from protocol.messages import Vote, VoteType
from services.consensus.core.signer import SignerState, SignStep
from services.consensus.guard import GuardError, GuardOutbox, SignGuard
from streams.chain_wire import decode_consensus
from tests.support.peers import CHAIN_ID, node_at_height_1

KEY = SigningKey.from_seed(bytes(32))


def _signed(height: int) -> SignerState:
    return SignerState().sign(KEY, height, 0, SignStep.PREVOTE, f"{height}".encode())[0]


class _Gated(SignGuard):
    """A guard whose persist waits for the test to open the gate, then really persists."""

    def __init__(self, path: Path, address: bytes = KEY.address) -> None:
        super().__init__(path, address)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def persist(self, state: SignerState) -> None:
        self.entered.set()
        assert self.gate.wait(10)
        super().persist(state)


def test_nothing_leaves_before_its_state_is_durable(tmp_path: Path) -> None:
    guard = _Gated(tmp_path / "guard")
    guard.load()
    outbox: GuardOutbox[str] = GuardOutbox(guard)
    state = _signed(1)
    outbox.hold(state, ["prevote 1"])
    assert guard.entered.wait(10)
    assert outbox.ready() == [] and len(outbox) == 1  # the sync is under way
    assert SignGuard(tmp_path / "guard", KEY.address).load() == SignerState()
    guard.gate.set()
    assert outbox.ready(wait=True) == ["prevote 1"]
    assert SignGuard(tmp_path / "guard", KEY.address).load() == state
    assert len(outbox) == 0 and outbox.ready(wait=True) == []
    outbox.close()
    guard.close()


def test_messages_leave_in_the_order_they_were_signed(tmp_path: Path) -> None:
    guard = SignGuard(tmp_path / "guard", KEY.address)
    guard.load()
    outbox: GuardOutbox[int] = GuardOutbox(guard)
    state = SignerState()
    for height in range(1, 30):
        state = state.sign(KEY, height, 0, SignStep.PREVOTE, f"{height}".encode())[0]
        outbox.hold(state, [height, -height])
    released = outbox.ready() + outbox.ready(wait=True)
    assert released == [x for h in range(1, 30) for x in (h, -h)]
    assert SignGuard(tmp_path / "guard", KEY.address).load() == state
    outbox.close()
    guard.close()


def test_a_state_that_cannot_be_made_durable_keeps_its_messages(tmp_path: Path) -> None:
    class Failing(SignGuard):
        def persist(self, state: SignerState) -> None:
            raise GuardError("disk full")

    outbox: GuardOutbox[str] = GuardOutbox(Failing(tmp_path / "guard", KEY.address))
    outbox.hold(_signed(1), ["prevote 1"])
    with pytest.raises(GuardError, match="disk full"):
        outbox.ready(wait=True)
    assert outbox.ready(wait=True) == []  # dropped, never handed out
    outbox.close()


def test_a_validator_sends_its_votes_only_once_the_guard_holds_them(tmp_path: Path) -> None:
    """The node's shell: what it signs for a height reaches the producer only after the
    guard's persist returned; meanwhile the node goes on with the batch."""
    with node_at_height_1(tmp_path, me=1) as (node, recorder, height):
        gated = _Gated(tmp_path / "gated", node.key.address)
        gated.load()
        node.guard = gated
        node.outbox = GuardOutbox(gated)
        worker = threading.Thread(target=node.handle_batch, args=(height.first,))
        worker.start()
        assert gated.entered.wait(10)
        worker.join(0.3)
        assert worker.is_alive()  # the batch is over; its end waits for the disk
        assert recorder.sent == []
        gated.gate.set()
        worker.join(10)
        assert not worker.is_alive()
        sent = [decode_consensus(value, CHAIN_ID) for _, value in recorder.sent]
        assert sent and all(isinstance(m, Vote) and m.height == 1
                            and m.validator_address == node.key.address for m in sent)
        assert VoteType.PRECOMMIT in {m.vote_type for m in sent}
        assert SignGuard(tmp_path / "gated", node.key.address).load() == node.state.signer
