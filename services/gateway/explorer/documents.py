"""The explorer API's documents, rendered from the gateway's verified chain view and ledger
state. Blocks travel as their canonical bytes (base64) so the page decodes and verifies what it
shows itself; the few fields beside them (times the tally observed, the Kafka offset, the state
hash) are marked in the API reference as reported by the gateway, not verified by the page.
"""

from __future__ import annotations

import base64
import bisect
from dataclasses import dataclass
from typing import Any

from protocol.commit import CommitFlag
from services.gateway.chain import ChainView, StoredBlock

UPTIME_BLOCKS = 100  # blocks of the uptime chart


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True, slots=True)
class GenesisAnchor:
    """What block 1 is checked against: the genesis hash, R_0, time and the first set's hash."""

    chain_id: str
    hash: bytes
    randomness: bytes
    time_ms: int
    validators_hash: bytes

    @classmethod
    def of_spec(cls, spec: Any) -> GenesisAnchor:
        """From a ``ChainSpec`` (its initial chain state's tip)."""
        tip = spec.initial.tip
        return cls(spec.chain_id, tip.previous_block_hash, tip.previous_randomness,
                   tip.previous_time_ms, tip.validators_hash)

    def document(self) -> dict[str, Any]:
        return {"chain_id": self.chain_id, "hash": self.hash.hex(),
                "randomness": self.randomness.hex(), "time_ms": self.time_ms,
                "validators_hash": self.validators_hash.hex()}


def block_document(stored: StoredBlock) -> dict[str, Any]:
    """A block as the page verifies it: canonical block and certificate bytes, and what the
    gateway reports beside them."""
    record = stored.record
    return {"height": record.height, "block": _b64(record.block.canonical()),
            "commit": _b64(record.commit.canonical()), "state_hash": record.state_hash.hex(),
            "proposed_at_ms": record.proposed_at_ms, "finalized_at_ms": record.finalized_at_ms,
            "kafka_offset": stored.offset}


def header_document(stored: StoredBlock) -> dict[str, Any]:
    return {"height": stored.record.height,
            "header": _b64(stored.record.block.header.canonical())}


def chain_document(view: ChainView, genesis: GenesisAnchor | None) -> dict[str, Any]:
    head = view.get(view.head_height)
    return {
        "chain_id": view.chain_id,
        "genesis": genesis.document() if genesis is not None else None,
        "head": None if head is None else {
            "height": head.record.height, "hash": head.record.block.hash.hex(),
            "time_ms": head.record.block.header.time_ms,
            "randomness": head.record.block.header.randomness.hex()},
        # A hint only: the page verifies that block and computes its pulse status itself.
        "latest_random_height": view.latest_random_height,
        "first_retained_height": view.first_height, "caught_up": view.caught_up,
        "error": view.error,
    }


def timeline_document(view: ChainView, count: int) -> list[dict[str, Any]]:
    """Times of the last ``count`` blocks: block time, proposal and finality as the tally saw
    them (for the charts)."""
    out = []
    for height in view.heights(max(1, view.head_height - count + 1), view.head_height):
        stored = view.get(height)
        if stored is None:
            continue
        record = stored.record
        out.append({"height": height, "time_ms": record.block.header.time_ms,
                    "proposed_at_ms": record.proposed_at_ms,
                    "finalized_at_ms": record.finalized_at_ms,
                    "signers": len(record.commit.signed_addresses()),
                    "entropy": len(record.block.body.entropy),
                    "txs": len(record.block.body.txs)})
    return out


def height_at_time(view: ChainView, time_ms: int) -> int | None:
    """The last retained height whose block time is at or before ``time_ms`` (block times
    strictly increase along the chain, so this is a binary search)."""
    heights = list(view.heights(view.first_height, view.head_height))
    times = []
    for height in heights:
        stored = view.get(height)
        times.append(stored.record.block.header.time_ms if stored is not None else 0)
    index = bisect.bisect_right(times, time_ms)
    return heights[index - 1] if index else None


def uptime(view: ChainView, blocks: int = UPTIME_BLOCKS) -> dict[str, Any]:
    """Per validator address, its certificate record over the last ``blocks`` blocks: "1"
    signed, "0" absent or nil, "-" not in that height's set."""
    heights = list(view.heights(max(1, view.head_height - blocks + 1), view.head_height))
    marks: dict[str, list[str]] = {}
    for index, height in enumerate(heights):
        stored = view.get(height)
        if stored is None:
            continue
        for signature in stored.record.commit.signatures:
            row = marks.setdefault(signature.validator_address.hex(), ["-"] * len(heights))
            row[index] = "1" if signature.flag is CommitFlag.COMMIT else "0"
    return {"first_height": heights[0] if heights else None,
            "last_height": heights[-1] if heights else None,
            "marks": {address: "".join(row) for address, row in marks.items()}}


def staking_document(state: Any, view: ChainView) -> dict[str, Any]:
    """Every validator the ledger knows, with its stake, commission, liveness and jail state,
    and its signing record over the recent blocks (``state``: the ``LedgerState`` at the
    head)."""
    from services.ledger.core.params import RATE_ONE
    from services.ledger.core.staking import delegation_value, voting_power

    record_of = uptime(view)
    active = {v.address for v in state.validator_sets[0].validators}
    rows = []
    for record in state.validators.values():
        self_stake = delegation_value(state, record.address, record.address)
        info = state.signing_infos.get(record.address)
        marks = record_of["marks"].get(record.address.hex(), "")
        counted = marks.replace("-", "")
        rows.append({
            "address": record.address.hex(), "algorithm": record.public_key.algorithm.value,
            "power": voting_power(state, record), "active": record.address in active,
            "tokens": record.tokens, "self_stake": self_stake,
            "delegated_stake": record.tokens - self_stake,
            "commission_rate": record.commission_rate / RATE_ONE,
            "max_commission_rate": record.max_commission_rate / RATE_ONE,
            "missed_blocks": info.missed_count if info is not None else 0,
            "signed_blocks_window": state.params.signed_blocks_window,
            "jailed": record.jailed, "jailed_until": record.jailed_until,
            "tombstoned": record.tombstoned,
            "uptime": marks,
            "uptime_ratio": counted.count("1") / len(counted) if counted else None,
        })
    rows.sort(key=lambda row: (-row["power"], row["address"]))
    return {"height": state.height, "total_power": state.validator_sets[0].total_power,
            "uptime_first_height": record_of["first_height"],
            "uptime_last_height": record_of["last_height"], "validators": rows}
