"""A validator node hands a poll's consecutive votes to its core as runs
(``ConsensusDriver.feed_votes``, ``state_machine.handle_votes``). Fed polls that mix every kind
of record a run must stop at or pass over - a malformed record, a forged vote, a re-delivered
vote, a vote of a decided height, a vote of the next height, the proposal - the node decides
every height as its peers do, sends what a node fed one record per poll sends, and dead-letters
exactly the same records, each as the record it was (``tests.support.peers`` plays the other
validators; no Kafka)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from protocol.keys import Algorithm, SigningKey
from protocol.messages import Vote, VoteType
from protocol.proposal import Proposal
from streams.chain_wire import decode_consensus
from streams.codec import default_codec
from streams.kafka import Record
from tests.support.peers import (
    CHAIN_ID,
    Height,
    Peers,
    network_spec,
    node_under_test,
    validator_keys,
)

SIZE = 7
HEIGHTS = 9  # the node (keys[0]) proposes some of them


def _mixed(peers: Peers, height: Height, keys: list[SigningKey]) -> Height:
    """The height's two polls with odd records among the votes."""
    h = height.proposal.height
    garbage = dataclasses.replace(peers.record(height.precommits[0]), value=b"\x00 not avro")
    forged = dataclasses.replace(peers.vote(keys[1], VoteType.PREVOTE, h, None),
                                 signature=peers.vote(keys[2], VoteType.PREVOTE, h,
                                                      None).signature)
    stale = peers.vote(keys[3], VoteType.PRECOMMIT, max(h - 1, 1), None)  # height 1: a second
    # precommit of keys[3] at the height being decided (nil beside the block): equivocation
    early = peers.vote(keys[4], VoteType.PREVOTE, h + 1, None)
    votes = [r for r in height.first if isinstance(decode_consensus(r.value, CHAIN_ID), Vote)]
    head = height.first[:len(height.first) - len(votes)]  # the proposal, unless the node's
    first = [*head, votes[0], garbage, *votes[1:3], peers.record(forged), votes[0],
             peers.record(stale), *votes[3:5], peers.record(early), *votes[5:]]
    second = [height.second[0], dataclasses.replace(garbage, offset=garbage.offset + 1000),
              *height.second[1:], height.second[-1]]
    return dataclasses.replace(height, first=first, second=second)


def _run(tmp_path: Path, name: str, polls: Callable[[list[Record]], list[list[Record]]]
         ) -> tuple[list[tuple[object, ...]], list[tuple[int, str, str]]]:
    """What the node sent (its messages, by kind, height, round and nil-or-not) and its dead
    letters (offset, error type, reason), deciding every height as its peers do."""
    keys = validator_keys(SIZE, Algorithm.ED25519)
    spec = network_spec(keys)
    node, recorder = node_under_test(spec, keys[0], tmp_path / name)
    peers = Peers(spec, keys, keys[0], node.settings)
    dlq = node.settings.topic("dlq.chain")
    sent: list[tuple[object, ...]] = []
    letters: list[tuple[int, str, str]] = []

    def read() -> None:
        """The node's messages and dead letters for the lists; then the peers read."""
        for topic, value in recorder.sent:
            if topic == dlq:
                letter = default_codec().decode(value)[1]
                letters.append((letter["offset"], letter["error_type"], letter["reason"]))
            elif topic == peers.topic:
                message = decode_consensus(value, CHAIN_ID)
                if isinstance(message, Proposal):
                    sent.append(("proposal", message.height, message.round))
                else:
                    sent.append((message.vote_type.name, message.height, message.round,
                                 message.block_hash is None))
        peers.read(recorder)

    try:
        node.tick()
        read()
        for _ in range(HEIGHTS):
            height = _mixed(peers, peers.prepare(), keys)
            for records in (height.first, height.second):
                for poll in polls(records):
                    node.handle_batch(poll)
                node.tick()
            read()
            peers.decided(height)
        decided = [node.follower.hashes[h] for h in range(1, HEIGHTS + 1)]
        assert decided == [peers.follower.hashes[h] for h in range(1, HEIGHTS + 1)]
        assert any(kind == "proposal" for kind, *_ in sent)  # a height the node proposed
    finally:
        node.close()
    return sent, letters


def test_runs_of_votes_send_and_dead_letter_what_one_record_per_poll_does(
        tmp_path: Path) -> None:
    whole, letters_whole = _run(tmp_path, "whole", lambda records: [records])
    single, letters_single = _run(tmp_path, "single", lambda records: [[r] for r in records])
    assert whole == single
    assert sorted(letters_whole) == sorted(letters_single)  # decoding a poll first dead-letters
    # its malformed records first: the same letters, maybe in another order
    malformed = [r for _, kind, r in letters_whole if kind == "WireError"]
    forged = [r for _, _, r in letters_whole if r.startswith("bad vote signature")]
    refused = [r for _, kind, r in letters_whole if kind == "rejected_by_core"]
    assert (len(malformed), len(forged)) == (2 * HEIGHTS, HEIGHTS)
    # The rest: the equivocator (a nil precommit beside its block precommit at height 1, the
    # "stale" vote while height 1 is being decided), slashed and jailed, is no validator now.
    jailed = validator_keys(SIZE, Algorithm.ED25519)[3].address.hex()
    assert set(refused) - set(forged) == {f"{jailed} is not a validator"}
