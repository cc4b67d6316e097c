"""Byzantine validator behaviour for fault tests: test support, never a production option.

``python -m tests.support.byzantine double-sign --key K --genesis G [--block-interval-ms N]``
runs a validator node that, after every vote it sends, sends a second, conflicting vote for
the same (height, round, type), signed with its key but bypassing the double-sign guard. The
honest nodes and the tally must turn the pair into ``DuplicateVoteEvidence`` and the ledger must
slash and tombstone the validator.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import signal
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from protocol.keys import SigningKey
from protocol.messages import Vote
from services.consensus.core.state_machine import Broadcast, Output
from services.consensus.validator import NodeOptions, ValidatorNode
from services.ledger.core.chain_spec import ChainSpec
from streams.chain_wire import encode_consensus
from streams.settings import load_settings


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


BEHAVIOURS: dict[str, type[ValidatorNode]] = {"double-sign": DoubleSigningValidator}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("behaviour", choices=sorted(BEHAVIOURS))
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--genesis", type=Path, required=True)
    parser.add_argument("--block-interval-ms", type=int, default=1000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = load_settings()
    key = SigningKey.load(args.key)
    node = BEHAVIOURS[args.behaviour](
        settings, ChainSpec.load(args.genesis), key,
        settings.state_dir / "validators" / f"signer-{key.address.hex()}.json",
        NodeOptions(block_interval_ms=args.block_interval_ms))
    signal.signal(signal.SIGTERM, lambda *_: node.stop())
    signal.signal(signal.SIGINT, lambda *_: node.stop())
    node.run()


if __name__ == "__main__":
    main()
