"""Light reads of the chain (``services.consensus.light_reads``): the head and any height,
verified from a checkpoint, with a cost that does not grow with the chain; and nothing that does
not verify is ever accepted: a forged head, a forged random pulse below it, a record of another
chain. Over a topic held in memory (the Kafka shell, ``ChainTopic``, is tested on the broker)."""

from __future__ import annotations

import dataclasses
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.light import TrustedCheckpoint
from sdk.testing import LocalChain, make_local_chain
from services.consensus.light_reads import (
    WINDOW,
    LightChain,
    LightUnavailableError,
    checkpoint_path,
    load_checkpoint,
    save_checkpoint,
)
from services.ledger.core import Delegate, encode_signed_tx, sign_tx
from services.ledger.core.chain_spec import ChainSpec
from services.ledger.core.queries import next_nonce
from streams.chain_wire import decode_finalized
from streams.kafka import Record


class Topic:
    """``chain.blocks`` in memory; counts the records read."""

    def __init__(self, values: list[bytes], low: int = 0) -> None:
        self.values = values
        self.low = low
        self.read_records = 0

    def bounds(self) -> tuple[int, int]:
        return self.low, len(self.values)

    def read(self, first: int, count: int) -> list[Record]:
        start, stop = max(first, self.low), min(first + count, len(self.values))
        self.read_records += max(0, stop - start)
        return [Record("chain.blocks", 0, o, None, self.values[o], 0)
                for o in range(start, stop)]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> LocalChain:
    # Pulses 31.. carry no fresh entropy: the head is not random, the latest random one is 30.
    return make_local_chain(tmp_path_factory.mktemp("light"), 40,
                            sources_at=lambda h: 0 if h > 30 else 2)


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> LocalChain:
    """Same chain id, other validators: what a forger without the keys can write."""
    return make_local_chain(tmp_path_factory.mktemp("other"), 48)


def light(chain: LocalChain, topic: Topic, trusted: TrustedCheckpoint | None = None,
          **kw: object) -> LightChain:
    spec = ChainSpec.load(chain.genesis)
    return LightChain(topic, spec.checkpoint(), trusted or spec.checkpoint(),
                      spec.trusting_period_ms(), **kw)  # type: ignore[arg-type]


def test_the_head_is_verified_by_skipping_and_the_latest_random_pulse_over_hash_links(
        chain: LocalChain, other: LocalChain) -> None:
    forged_random = other.records[34]  # height 35, random, not signed by this chain's set
    values = [*chain.records[:36], forged_random, b"garbage", *chain.records[36:],
              chain.records[39], other.records[47]]  # a duplicate; a forged higher head
    reader = light(chain, Topic(values))
    head = reader.head()
    assert head.record.height == 40 and head.how == "skipping from the checkpoint"
    assert head.record.block.hash == decode_finalized(chain.records[39]).block.hash
    assert head.signed_by is not None and reader.trusted.height == 40
    latest = reader.latest_random(head)
    assert latest is not None and latest.record.height == 30
    assert latest.signed_by is not None  # the set its header names is known: power is shown
    assert latest.record.block.hash == decode_finalized(chain.records[29]).block.hash


def test_the_cost_of_the_head_does_not_grow_with_the_chain(tmp_path: Path) -> None:
    short = make_local_chain(tmp_path / "short", 100)
    long = make_local_chain(tmp_path / "long", 1000)
    reads = []
    for built in (short, long):
        topic = Topic(list(built.records))
        assert light(built, topic).head().record.height == len(built.records)
        reads.append(topic.read_records)
    assert reads[0] == reads[1] == WINDOW


def test_blocks_above_and_below_the_checkpoint(chain: LocalChain) -> None:
    topic = Topic([b"junk", *chain.records[:20], chain.records[19], b"x", *chain.records[20:]])
    reader = light(chain, topic)
    assert reader.block(25).how == "skipping from the checkpoint"
    assert reader.trusted.height == 25
    below = reader.block(7)
    assert below.record.height == 7 and below.how == "skipping from the genesis"
    assert reader.trusted.height == 25  # a lower block never moves the checkpoint back
    assert reader.block(25).how == "the trusted checkpoint"
    assert reader.block(25).signed_by is not None
    with pytest.raises(LookupError):
        reader.block(41)

    # Once the genesis is older than the trusting period, a block below the checkpoint is
    # verified over hash links down from the checkpoint instead.
    spec = ChainSpec.load(chain.genesis)
    checkpoint_time = decode_finalized(chain.records[24]).block.header.time_ms
    late = light(chain, topic, reader.trusted,
                 clock_ms=lambda: checkpoint_time + spec.trusting_period_ms() - 1)
    assert late.block(3).how == "hash links down from the checkpoint at height 25"
    assert late.block(3).record.block.hash == decode_finalized(chain.records[2]).block.hash
    assert late.block(3).signed_by is not None


def test_another_chains_records_never_verify(chain: LocalChain, other: LocalChain) -> None:
    reader = light(chain, Topic(list(other.records)))
    with pytest.raises(LightUnavailableError, match="no record verifies"):
        reader.head()
    with pytest.raises(LightUnavailableError):
        reader.block(5)
    assert reader.trusted.height == 0


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_bisection_finds_every_height_among_junk_and_duplicates(
        chain: LocalChain, data: st.DataObject) -> None:
    values: list[bytes] = []
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    for raw in chain.records:
        values.append(raw)
        if rng.random() < 0.2:
            values.append(raw)  # a duplicate (a second tally)
        if rng.random() < 0.2:
            values.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))))
    height = data.draw(st.integers(1, len(chain.records)))
    topic = Topic(values)
    found = light(chain, topic).block(height)
    assert found.record.block.hash == decode_finalized(chain.records[height - 1]).block.hash
    assert topic.read_records <= 2 * WINDOW * (len(values).bit_length() + 2)


def test_a_validator_set_change_since_the_checkpoint_is_left_to_full_verification(
        tmp_path: Path) -> None:
    def delegate(height: int, state: object, accounts: tuple) -> tuple[bytes, ...]:  # type: ignore[type-arg]
        if height != 3:
            return ()
        app = state.app_state  # type: ignore[attr-defined]
        validator = next(iter(sorted(app.validators)))
        return (encode_signed_tx(sign_tx(accounts[0], app.chain_id,
                                         next_nonce(app, accounts[0].address), 10_000,
                                         Delegate(validator, 5_000 * 1_000_000))),)

    changed = make_local_chain(tmp_path / "changed", 12, txs=delegate)
    headers = [decode_finalized(r).block.header for r in changed.records]
    assert headers[0].validators_hash != headers[-1].validators_hash
    with pytest.raises(LightUnavailableError, match="validator set"):
        light(changed, Topic(list(changed.records))).head()
    # From a checkpoint taken after the change (a previous full run's), light works again.
    spec = ChainSpec.load(changed.genesis)
    follower = spec.follower()
    for raw in changed.records[:8]:
        follower.accept(decode_finalized(raw))
    tip = follower.chain.tip
    after = TrustedCheckpoint(spec.chain_id, 8, tip.previous_block_hash,
                              tip.previous_randomness, tip.previous_time_ms,
                              follower.chain.validators)
    assert light(changed, Topic(list(changed.records)), after).head().record.height == 12


def test_the_kept_checkpoint_is_per_genesis_and_survives_a_torn_write(
        chain: LocalChain, other: LocalChain, tmp_path: Path) -> None:
    mine, theirs = (ChainSpec.load(c.genesis).checkpoint() for c in (chain, other))
    assert checkpoint_path(tmp_path, mine) != checkpoint_path(tmp_path, theirs)
    path = checkpoint_path(tmp_path, mine)
    assert load_checkpoint(path, mine) == mine  # none kept: the genesis
    reader = light(chain, Topic(list(chain.records)))
    reader.head()
    save_checkpoint(path, reader.trusted)
    assert load_checkpoint(path, mine).height == 40
    path.write_text("{torn")
    assert load_checkpoint(path, mine) == mine
    save_checkpoint(path, dataclasses.replace(reader.trusted, chain_id="elsewhere"))
    assert load_checkpoint(path, mine) == mine


def test_nodes_sharing_a_state_dir_keep_the_checkpoint_together(
        chain: LocalChain, tmp_path: Path) -> None:
    # Validators run with one ``--state-dir`` share the kept checkpoint file, and a network
    # started at once saves it at once: no save may fail on another's partial file, and what
    # is kept is always one whole checkpoint.
    genesis = ChainSpec.load(chain.genesis).checkpoint()
    path = checkpoint_path(tmp_path, genesis)
    reader = light(chain, Topic(list(chain.records)))
    reader.head()
    kept = [dataclasses.replace(reader.trusted, height=height) for height in range(1, 41)]
    start = threading.Barrier(4)

    def node(index: int) -> None:
        start.wait()
        for checkpoint in kept[index::4] * 10:
            save_checkpoint(path, checkpoint)
            assert load_checkpoint(path, genesis) in kept

    with ThreadPoolExecutor(4) as nodes:
        for done in [nodes.submit(node, index) for index in range(4)]:
            done.result()
    assert load_checkpoint(path, genesis) in kept
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial file left
