"""``qustream chain head|block`` on a real Kafka topic: verified light from the kept checkpoint
(or the genesis), never fooled by what anyone can append, and agreeing with ``--full``.

1,600 correctly signed blocks are made locally (``sdk.testing.make_local_chain``), the last 10
without fresh entropy, and written to a fresh ``chain.blocks`` with garbage and a forged,
higher block of another chain (same chain id, other validators) after them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from confluent_kafka import Producer

from sdk.testing import LocalChain, make_local_chain
from services.consensus.light_reads import checkpoint_path
from services.ledger.core.chain_spec import ChainSpec
from streams.admin import ensure_topics
from streams.chain_wire import decode_finalized
from streams.settings import Settings
from tests.integration.test_chain_e2e import CLI

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BLOCKS = 1600


def _write(settings: Settings, records: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                         "enable.idempotence": True})
    for raw in records:
        producer.produce(settings.topic("chain.blocks"), raw, partition=0)
    assert producer.flush(30) == 0


def _chain(settings: Settings, state: Path, *args: str) -> dict[str, object]:
    done = subprocess.run([*CLI, "chain", *args, "--json"], capture_output=True, text=True,
                          timeout=300, cwd=ROOT,
                          env={**os.environ, **settings.to_env(),
                               "QUSTREAM_STATE_DIR": str(state)})
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def _hash(chain: LocalChain, height: int) -> str:
    return decode_finalized(chain.records[height - 1]).block.hash.hex()


def test_chain_head_and_block_verify_light_from_the_kept_checkpoint(
        settings: Settings, tmp_path: Path) -> None:
    ensure_topics(settings)
    chain = make_local_chain(tmp_path / "chain", BLOCKS,
                             sources_at=lambda h: 0 if h > BLOCKS - 10 else 2)
    forger = make_local_chain(tmp_path / "forger", BLOCKS + 5)
    genesis, state = str(chain.genesis), tmp_path / "state"
    _write(settings, [*chain.records[:BLOCKS - 5], b"garbage"])

    first = _chain(settings, state, "head", "--genesis", genesis)
    assert first["height"] == BLOCKS - 5 and first["hash"] == _hash(chain, BLOCKS - 5)
    assert first["verified"] == "light: skipping from the checkpoint"
    assert first["random"] is False and first["latest_random_height"] == BLOCKS - 10
    assert first["signed_power"] == 40_000
    kept = checkpoint_path(state, ChainSpec.load(chain.genesis).checkpoint())
    assert json.loads(kept.read_text())["height"] == BLOCKS - 5

    _write(settings, [*chain.records[BLOCKS - 5:], forger.records[-1], b"\x00" * 40])
    second = _chain(settings, state, "head", "--genesis", genesis)
    assert second["height"] == BLOCKS and second["hash"] == _hash(chain, BLOCKS)
    assert json.loads(kept.read_text())["height"] == BLOCKS

    old = _chain(settings, state, "block", "7", "--genesis", genesis)
    assert old["hash"] == _hash(chain, 7) and old["verified"] == "light: skipping from the genesis"
    at_checkpoint = _chain(settings, state, "block", str(BLOCKS), "--genesis", genesis)
    assert at_checkpoint["verified"] == "light: the trusted checkpoint"
    assert at_checkpoint["signed_power"] == 40_000

    full = _chain(settings, state, "head", "--genesis", genesis, "--full")
    assert full["hash"] == second["hash"] and full["verified"] == "fully, from genesis"
    assert full["latest_random_height"] == second["latest_random_height"] == BLOCKS - 10
    assert _chain(settings, state, "block", "7", "--genesis", genesis, "--full")["hash"] == \
        old["hash"]

    # A checkpoint of another chain under the same name is not trusted: the genesis is.
    kept.write_text(json.dumps({**json.loads(kept.read_text()), "chain_id": "elsewhere"}))
    assert _chain(settings, state, "head", "--genesis", genesis)["hash"] == second["hash"]
