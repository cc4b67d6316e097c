"""Benchmark: what ONE validator pays per height in a network of n validators.

``python -m bench.validator_scale [--sizes 4,16,64,128] [--seconds 6] [--workers N]``

The node under test is the production ``services.consensus.validator.ValidatorNode``: its
consensus core (state machine, vote sets), its signature checks, its signing behind the
double-sign guard (synced to a file before anything leaves), its block builder (proposing when it
is the round's proposer, validating the others' proposals), the ledger applying every decided
block, and the wire codec both ways (it decodes the Avro ``chain.consensus`` records it is handed
and encodes what it sends). Only Kafka is replaced: records reach the node's batch handler as
the run loop would hand over polls, and what it produces is recorded.

The other n - 1 validators are played by ``tests.support.peers``: for every height it builds
the peer proposer's block (or takes the node's own proposal when the node is the proposer) and
signs every peer message of the height - the proposal, n - 1 prevotes and n - 1 precommits,
ML-DSA-65 - and encodes them as records, all BEFORE the clock starts. The clock then runs while
the node handles them: the proposal and the prevotes as one poll, the precommits as another (the
node drops the precommits that arrive after it decided, as on the network; they come back in the
next proposal's last commit). It stops when the node has decided and started the next height
(with verification workers: when they are idle again). heights/s = heights / clock time.

Signature floor, measured in the same run, height by height right after the node's turn (so a
shared machine's load hits both alike), on the same messages: verifying the 2(n-1) + 1 peer
signatures of the height and making 2, one core, nothing else. ratio = ours / floor.

Headline keys (``heights_per_s_N``, ``ratio_N``): the node as ``qustream validator run`` runs it
by default, on one core (its start-up heap frozen first, ``freeze_startup_heap``, as ``run``
does; the harness's own objects with it, which a validator process does not have).
``pool_*``: the same with ``--workers`` verifying processes beside it (``--verify-workers``;
default cores - 1), which pays only with a core to spare.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import emit
from protocol.keys import PublicKey, SigningKey
from protocol.messages import Vote, VoteType
from protocol.proposal import Proposal
from services.consensus.validator import freeze_startup_heap
from streams.chain_wire import decode_consensus
from streams.kafka import Record
from streams.settings import Settings
from tests.support.peers import (
    CHAIN_ID,
    Peers,
    deliver,
    network_spec,
    node_under_test,
    validator_keys,
)

SIZES = (4, 16, 64, 128)


def run_node(n: int, seconds: float, workers: int, *, max_heights: int = 10_000
             ) -> dict[str, float]:
    """Drive one node of an ``n``-validator network for about ``seconds`` of clock time."""
    keys = validator_keys(n)
    me = keys[0]
    spec = network_spec(keys)
    publics = {key.address: key.public_key for key in keys}
    settings = Settings()
    with tempfile.TemporaryDirectory() as tmp:
        node, recorder = node_under_test(spec, me, Path(tmp) / "guard", verify_workers=workers,
                                         settings=settings)
        peers = Peers(spec, keys, me, settings)
        freeze_startup_heap()  # as ``ValidatorNode.run`` does before its loop
        clock = floor_clock = 0.0
        heights = 0
        try:
            node.tick()  # starts height 1 (the node proposes now if it is the proposer)
            peers.read(recorder)
            while clock < seconds and heights < max_heights:
                height = peers.prepare()  # every peer signature of the height, before the clock
                started = time.perf_counter()
                deliver(node, height)
                node.settle()
                clock += time.perf_counter() - started
                if node.follower.next_height != height.proposal.height + 1:
                    raise RuntimeError(f"{n} validators: the node did not decide height "
                                       f"{height.proposal.height}")
                floor_clock += _floor_height(me, publics, height.proposal, height.first,
                                             height.second)
                peers.read(recorder)
                peers.decided(height)
                heights += 1
        finally:
            node.close()
            gc.unfreeze()  # the next size starts as a new process would
    return {"heights": heights, "seconds": clock, "heights_per_s": heights / clock,
            "floor_heights_per_s": heights / floor_clock}


def _floor_height(me: SigningKey, keys: dict[bytes, PublicKey], proposal: Proposal,
                  first: Sequence[Record], second: Sequence[Record]) -> float:
    """Seconds the signature work of one height takes alone (the floor, module doc): verify
    the proposal and the peers' 2(n-1) votes of this very height, make two signatures. Run
    right after the node's height, so both see the same load on a shared machine."""
    messages = [decode_consensus(r.value, CHAIN_ID) for r in [*first, *second]]
    votes = [m for m in messages if isinstance(m, Vote)]
    triples = [(keys[proposal.proposer_address], proposal.sign_bytes(CHAIN_ID),
                proposal.signature)]
    triples += [(keys[v.validator_address], v.sign_bytes(CHAIN_ID), v.signature) for v in votes]
    assert len(triples) == 2 * (len(keys) - 1) + 1
    own = [dataclasses.replace(votes[0], vote_type=t, validator_address=me.address).sign_bytes(
        CHAIN_ID) for t in (VoteType.PREVOTE, VoteType.PRECOMMIT)]
    started = time.perf_counter()
    for key, message, signature in triples:
        if not key.verify(message, signature):
            raise RuntimeError("floor: a peer signature does not verify")
    for message in own:
        me.sign(message)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="clock time per network size and configuration")
    parser.add_argument("--workers", type=int, default=None,
                        help="verification processes of the pooled run (default: cores - 1; "
                             "0 skips it)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    workers = max(1, (os.cpu_count() or 2) - 1) if args.workers is None else args.workers
    result: dict[str, Any] = {"bench": "validator_scale", "algorithm": "ml-dsa-65"}
    extra: dict[str, Any] = {"pool_workers": workers, "cpus": os.cpu_count()}
    for n in sizes:
        one_core = run_node(n, args.seconds, 0)
        ours, floor = one_core["heights_per_s"], one_core["floor_heights_per_s"]
        result[f"heights_per_s_{n}"] = round(ours, 2)
        extra[f"floor_heights_per_s_{n}"] = round(floor, 2)
        extra[f"ratio_{n}"] = round(ours / floor, 3)
        line = (f"{n:4d} validators: {ours:7.2f} heights/s on one core, signature floor "
                f"{floor:7.2f} ({one_core['heights']} heights)")
        if workers:
            pooled = run_node(n, args.seconds, workers)
            extra[f"pool_heights_per_s_{n}"] = round(pooled["heights_per_s"], 2)
            extra[f"pool_ratio_{n}"] = round(
                pooled["heights_per_s"] / pooled["floor_heights_per_s"], 3)
            line += (f"; with {workers} verifying processes {pooled['heights_per_s']:7.2f} "
                     f"(floor {pooled['floor_heights_per_s']:7.2f}, {pooled['heights']} heights)")
        print(f"{line}; load {os.getloadavg()[0]:.1f}", flush=True)
    for n in (64, 128):
        if f"ratio_{n}" in extra:
            result[f"floor_heights_per_s_{n}"] = extra.pop(f"floor_heights_per_s_{n}")
            result[f"ratio_{n}"] = extra.pop(f"ratio_{n}")
    result.update(extra)
    result["load"] = round(os.getloadavg()[0], 1)
    emit(result)


if __name__ == "__main__":
    main()
