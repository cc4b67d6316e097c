"""How long a validator's run loop may wait for input while its commit window is open (the
window itself: ``services/consensus/node.py``). ``tests.support.peers`` plays the others; no
Kafka."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from protocol.keys import Algorithm
from streams.kafka import Record
from tests.support.peers import Peers, network_spec, node_under_test, validator_keys


def _logged_ago(record: Record, ms: int) -> Record:
    return dataclasses.replace(record, timestamp_ms=record.timestamp_ms - ms)


def test_a_passed_absent_window_does_not_spin_the_loop(tmp_path: Path) -> None:
    """Decided on a precommit logged 500 ms ago, with one precommit still missing: the short
    window (300 ms) is over, the full one (1 s) is not, so nothing but that precommit or the
    full window's end can start the next height; the loop waits for input meanwhile instead of
    polling with no wait."""
    keys = validator_keys(4, Algorithm.ED25519)
    spec = network_spec(keys)
    node, recorder = node_under_test(spec, keys[0], tmp_path / "guard")
    peers = Peers(spec, keys, keys[0], node.settings)
    try:
        node.tick()
        peers.read(recorder)
        height = peers.prepare()
        node.handle_batch([_logged_ago(r, 500) for r in height.first])
        node.handle_batch([_logged_ago(r, 500) for r in height.second[:-1]])
        assert node.follower.next_height == 2 and node.height == 1  # decided, window open
        assert node.tick() > 0.01
        assert node.height == 1
        node.handle_batch(height.second[-1:])  # the last precommit closes the window
        node.tick()
        assert node.height == 2
    finally:
        node.close()
