"""Golden vectors for blocks and randomness (tests/vectors/blocks, tests/vectors/randomness).

Other implementations (and the audit) check against these files. They are produced from a
deterministic simulated chain (Ed25519 keys, whose signatures are deterministic) with one
equivocating validator, so they contain entropy, transactions, evidence and last commits.
Regenerate after an intentional format change with::

    QUSTREAM_REGENERATE_VECTORS=1 .venv/bin/pytest tests/unit/test_block_vectors.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from protocol.block import Block, Body, EntropyRef, Header, SeqRange
from protocol.commit import CommitCertificate, CommitFlag, CommitSig
from protocol.entropy.chain import HealthSummary
from protocol.evidence import DuplicateVoteEvidence
from protocol.messages import Vote, VoteType
from protocol.mmr import EMPTY_HISTORY, append, root
from protocol.randomness import block_randomness, genesis_randomness
from sdk.testing import passing_health
from tests.support.sim import Behavior, SimConfig, simulate

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
REGENERATE = os.environ.get("QUSTREAM_REGENERATE_VECTORS") == "1"


def _vote_json(vote: Vote) -> dict[str, Any]:
    return {
        "type": vote.vote_type.name.lower(),
        "height": vote.height,
        "round": vote.round,
        "block_hash": None if vote.block_hash is None else vote.block_hash.hex(),
        "validator_address": vote.validator_address.hex(),
        "signature": vote.signature.hex(),
    }


def _vote_from(data: dict[str, Any]) -> Vote:
    return Vote(
        VoteType[data["type"].upper()],
        data["height"],
        data["round"],
        None if data["block_hash"] is None else bytes.fromhex(data["block_hash"]),
        bytes.fromhex(data["validator_address"]),
        bytes.fromhex(data["signature"]),
    )


def commit_json(commit: CommitCertificate) -> dict[str, Any]:
    return {
        "height": commit.height,
        "round": commit.round,
        "block_hash": commit.block_hash.hex(),
        "signatures": [
            {"flag": s.flag.name.lower(), "validator_address": s.validator_address.hex(),
             "signature": s.signature.hex()}
            for s in commit.signatures
        ],
    }


def commit_from(data: dict[str, Any]) -> CommitCertificate:
    return CommitCertificate(
        data["height"],
        data["round"],
        bytes.fromhex(data["block_hash"]),
        tuple(
            CommitSig(CommitFlag[s["flag"].upper()], bytes.fromhex(s["validator_address"]),
                      bytes.fromhex(s["signature"]))
            for s in data["signatures"]
        ),
    )


_HEX_FIELDS = ("previous_block_hash", "last_commit_hash", "entropy_root", "randomness", "tx_root",
               "evidence_root", "validators_hash", "next_validators_hash", "app_hash",
               "proposer_address", "history_root")


def _ref_json(ref: EntropyRef) -> list[Any]:
    """``[source_id, seq, digest, next_digest, committed, health]``, health as
    ``HealthSummary.to_json``."""
    return [ref.source_id, ref.seq, ref.digest.hex(), ref.next_digest.hex(), ref.committed,
            ref.health.to_json()]


def _ref_from(item: list[Any]) -> EntropyRef:
    source, seq, digest, next_digest, committed, health = item
    return EntropyRef(source, seq, bytes.fromhex(digest), HealthSummary.from_json(health),
                      bytes.fromhex(next_digest), committed)


def _block_json(block: Block) -> dict[str, Any]:
    header = block.header
    fields: dict[str, Any] = {
        "chain_id": header.chain_id, "height": header.height, "round": header.round,
        "time_ms": header.time_ms,
        "entropy_ranges": [[r.source_id, r.first, r.last] for r in header.entropy_ranges],
        "fresh_sources": header.fresh_sources, "registered_sources": header.registered_sources,
    }
    fields.update({name: getattr(header, name).hex() for name in _HEX_FIELDS})
    body = block.body
    return {
        "header": fields,
        "body": {
            "entropy": [_ref_json(r) for r in body.entropy],
            "txs": [tx.hex() for tx in body.txs],
            "evidence": [
                {"vote_a": _vote_json(e.vote_a), "vote_b": _vote_json(e.vote_b)}
                for e in body.evidence
            ],
            "last_commit": None if body.last_commit is None else commit_json(body.last_commit),
        },
        "expected": {
            "header_canonical": header.canonical().hex(),
            "block_hash": block.hash.hex(),
            "body_canonical": body.canonical().hex(),
        },
    }


def _block_from(data: dict[str, Any]) -> Block:
    fields = dict(data["header"])
    fields["entropy_ranges"] = tuple(SeqRange(*r) for r in fields["entropy_ranges"])
    for name in _HEX_FIELDS:
        fields[name] = bytes.fromhex(fields[name])
    body = data["body"]
    return Block(
        Header(**fields),
        Body(
            entropy=tuple(_ref_from(item) for item in body["entropy"]),
            txs=tuple(bytes.fromhex(tx) for tx in body["txs"]),
            evidence=tuple(
                DuplicateVoteEvidence(_vote_from(e["vote_a"]), _vote_from(e["vote_b"]))
                for e in body["evidence"]
            ),
            last_commit=None if body["last_commit"] is None else commit_from(body["last_commit"]),
        ),
    )


def _generate_blocks() -> dict[str, Any]:
    config = SimConfig(seed=42, validators=4, heights=5, gst_ms=0, loss_per_mille=0,
                       duplicate_per_mille=0, byzantine=((0, Behavior.EQUIVOCATE),))
    result = simulate(config)
    blocks = [result.blocks[h] for h in sorted(result.blocks)]
    assert any(b.body.evidence for b in blocks), "the vector chain should carry evidence"
    return {
        "description": "A simulated chain (seed 42, 4 Ed25519 validators, validator 0 "
                       "equivocating). For each block: header fields, body, and the expected "
                       "canonical encodings and block hash (SHA-256 of the BlockHash message "
                       "wrapping the header). Entropy refs are [source_id, seq, digest, health "
                       "summary]; the summary is the end of the ref's canonical encoding.",
        "blocks": [_block_json(b) for b in blocks],
    }


def _generate_randomness() -> dict[str, Any]:
    previous = genesis_randomness(b"qustream genesis randomness vector")
    steps = []
    for height in range(1, 5):
        # k = 0 committed (mixed), k = 1 not (listed, never mixed)
        entropy = [
            EntropyRef(source, height * 2 + k, bytes([height, k]) * 16,
                       passing_health(height + k, rct_max_run=20 + k, apt_max_count=540 + height),
                       bytes([k]) * 32, k == 0)
            for source in ("qrng-b", "qrng-a") for k in range(height % 3)
        ]
        output = block_randomness(previous, height, entropy)
        steps.append({
            "height": height,
            "previous": previous.hex(),
            "entropy": [_ref_json(r) for r in entropy],
            "randomness": output.hex(),
        })
        previous = output
    return {
        "description": "R_0 = HMAC-SHA-512(key='QuStream/v1/GenesisRandomness', genesis value); "
                       "R_h = HMAC-SHA-512(key=R_(h-1), canonical BlockRandomness(height, "
                       "MixedChunk(source, seq, digest) of the committed entropy refs sorted by "
                       "(source, seq))). Entropy is listed unsorted on purpose; each ref is "
                       "[source_id, seq, digest, next_digest, committed, health summary], and "
                       "uncommitted ones are not mixed.",
        "genesis_value": b"qustream genesis randomness vector".hex(),
        "genesis_randomness": genesis_randomness(b"qustream genesis randomness vector").hex(),
        "steps": steps,
    }


def _load_or_write(path: Path, generate: Any) -> dict[str, Any]:
    if REGENERATE or not path.exists():
        if not REGENERATE:
            pytest.fail(f"{path} is missing; regenerate with QUSTREAM_REGENERATE_VECTORS=1")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(generate(), indent=1) + "\n")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_block_vectors() -> None:
    data = _load_or_write(VECTORS / "blocks" / "chain.json", _generate_blocks)
    previous_hash = None
    history = EMPTY_HISTORY
    for entry in data["blocks"]:
        block = _block_from(entry)
        expected = entry["expected"]
        assert block.header.canonical().hex() == expected["header_canonical"]
        assert block.body.canonical().hex() == expected["body_canonical"]
        assert block.hash.hex() == expected["block_hash"]
        assert block.structural_problem() is None
        if previous_hash is not None:
            assert block.header.previous_block_hash == previous_hash
        assert block.header.history_root == root(history)
        history = append(history, block.hash)
        previous_hash = block.hash


def test_randomness_vectors() -> None:
    data = _load_or_write(VECTORS / "randomness" / "chain.json", _generate_randomness)
    assert genesis_randomness(bytes.fromhex(data["genesis_value"])).hex() == (
        data["genesis_randomness"]
    )
    previous = bytes.fromhex(data["genesis_randomness"])
    for step in data["steps"]:
        assert step["previous"] == previous.hex()
        entropy = [_ref_from(item) for item in step["entropy"]]
        previous = block_randomness(previous, step["height"], entropy)
        assert previous.hex() == step["randomness"]
