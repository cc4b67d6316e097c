"""The operator's commands against a running network: `qustream tx` signs and submits, the
next blocks include the transaction, and `qustream chain` shows the verified chain."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable

import pytest

from protocol.keys import SigningKey
from services.ledger.core.queries import balance
from tests.integration.test_chain_e2e import CLI, Network, env_of, network_factory  # noqa: F401

pytestmark = pytest.mark.integration


def _cli(network: Network, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env_of(network.settings)})


def test_tx_transfer_is_included_and_chain_commands_show_it(
    network_factory: Callable[..., Network],  # noqa: F811
) -> None:
    network = network_factory(validators=4, interval_ms=300, sources=1)
    assert network.wait_height(2, 180) >= 2, network.log("tally")
    keys = network.genesis.parent / "keys"
    sender = keys / "account-0.json"
    recipient = SigningKey.load(keys / "account-1.json").address

    done = _cli(network, "tx", "transfer", "--key", str(sender), "--to", recipient.hex(),
                "--amount", "12.5", "--genesis", str(network.genesis))
    assert done.returncode == 0, done.stdout + done.stderr
    submitted = json.loads(done.stdout.strip().splitlines()[-1])
    assert submitted["type"] == "Transfer" and submitted["nonce"] == 0

    deadline = time.monotonic() + 120
    included_at = None
    while included_at is None and time.monotonic() < deadline:
        network.supervisor.tick()
        for block in network.blocks():
            if block.record.block.body.txs:
                included_at = block.record.height
                after_inclusion = balance(block.chain.app_state, recipient)
                break
        time.sleep(1)
    assert included_at is not None, network.log("validator-0")
    genesis_balance = balance(network.blocks()[0].chain.app_state, recipient)
    assert after_inclusion == genesis_balance + 12_500_000

    shown = _cli(network, "chain", "block", str(included_at), "--json", "--genesis",
                 str(network.genesis))
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(shown.stdout)
    assert summary["height"] == included_at and summary["txs"] == 1
    assert summary["signers"] >= 3

    head = _cli(network, "chain", "head", "--json", "--genesis", str(network.genesis))
    assert head.returncode == 0, head.stderr
    assert json.loads(head.stdout)["height"] >= included_at

    # The nonce is read from the chain: a second transfer gets the next one.
    again = _cli(network, "tx", "transfer", "--key", str(sender), "--to", recipient.hex(),
                 "--amount", "1", "--genesis", str(network.genesis))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["nonce"] == 1
