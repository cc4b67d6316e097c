"""Chain messages on the wire: the Avro records of the chain topics.

What is hashed or signed travels in its canonical encoding (decoded by ``protocol.codec``) inside
the Avro records, so a consumer re-derives every hash from the bytes it received; the Avro fields
beside it (height, hashes) are only for routing and display and are checked against the decoded
value. Every failure is a ``WireError`` naming the record; consumers dead-letter it.

Topics and records:
- ``chain.consensus``: ``ProposalMade`` / ``VoteCast`` (one partition, no key);
- ``chain.blocks``: ``BlockFinalized`` keyed by the height (8-byte big-endian);
- ``chain.evidence``: ``DuplicateVoteEvidenceFound`` keyed by the validator address;
- ``ledger.tx``: ``TransactionSubmitted`` keyed by the sender address;
- ``chain.snapshots``: ``StateSnapshotChunk`` keyed by height and chunk index (compacted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.codec import WireError, decode_block, decode_commit, decode_evidence, guard
from protocol.evidence import DuplicateVoteEvidence
from protocol.finalized import FinalizedRecord
from protocol.messages import MessageError, Vote, VoteType
from protocol.proposal import Proposal
from protocol.snapshot import Snapshot
from streams.codec import HEADER_SIZE, MARKER, Codec, CodecError, default_codec

VOTE_TYPES = {VoteType.PREVOTE: "PREVOTE", VoteType.PRECOMMIT: "PRECOMMIT"}
VOTE_TYPES_BY_NAME = {name: kind for kind, name in VOTE_TYPES.items()}


# ---------------------------------------------------------------- Avro records


def height_key(height: int) -> bytes:
    return height.to_bytes(8, "big")


def proposal_record(chain_id: str, proposal: Proposal) -> dict[str, Any]:
    return {
        "chain_id": chain_id,
        "height": proposal.height,
        "round": proposal.round,
        "pol_round": proposal.pol_round,
        "proposer": proposal.proposer_address,
        "block": proposal.block.canonical(),
        "block_hash": proposal.block_hash,
        "signature": proposal.signature,
    }


def vote_record(chain_id: str, vote: Vote) -> dict[str, Any]:
    return {
        "chain_id": chain_id,
        "height": vote.height,
        "round": vote.round,
        "vote_type": VOTE_TYPES[vote.vote_type],
        "block_hash": vote.block_hash,
        "validator": vote.validator_address,
        "signature": vote.signature,
    }


def encode_consensus(chain_id: str, message: Proposal | Vote, codec: Codec | None = None) -> bytes:
    codec = codec or default_codec()
    if isinstance(message, Proposal):
        return codec.encode("ProposalMade", proposal_record(chain_id, message))
    return codec.encode("VoteCast", vote_record(chain_id, message))


def decode_consensus(
    data: bytes | None, chain_id: str, codec: Codec | None = None
) -> Proposal | Vote:
    """A ``ProposalMade`` or ``VoteCast`` of ``chain_id``; signatures are NOT checked here."""
    codec = codec or default_codec()
    if data is not None and data[:HEADER_SIZE] == VOTE_HEADER and codec is default_codec():
        vote = _read_vote(data, chain_id)
        if vote is not None:
            return vote
    try:
        schema, record = codec.decode(data)
    except CodecError as exc:
        raise WireError(str(exc)) from exc
    if schema not in ("ProposalMade", "VoteCast"):
        raise WireError(f"{schema} does not belong on the consensus topic")
    if record["chain_id"] != chain_id:
        raise WireError(f"{schema} of chain {record['chain_id']!r}, expected {chain_id!r}")
    if schema == "VoteCast":
        return guard(
            "vote",
            lambda: Vote(
                VOTE_TYPES_BY_NAME[record["vote_type"]],
                record["height"],
                record["round"],
                record["block_hash"],
                record["validator"],
                record["signature"],
            ),
        )  # type: ignore[no-any-return]
    block = decode_block(record["block"])
    proposal: Proposal = guard(
        "proposal",
        lambda: Proposal(
            record["height"],
            record["round"],
            record["pol_round"],
            block,
            record["proposer"],
            record["signature"],
        ),
    )
    if proposal.block_hash != record["block_hash"]:
        raise WireError("ProposalMade block_hash does not match its block")
    return proposal


# ---------------------------------------------------------------- votes, the hot path

# A validator of n decodes 2(n - 1) votes per height; through fastavro's generic reader each
# costs about 15 us with the Vote built, a fifth of what a 128-validator node spends per vote
# besides verifying it (bench.validator_scale). ``_read_vote`` reads the one layout below
# directly. It is written by hand because no library specializes an Avro reader to one schema
# in Python (fastavro's compiled reader is the generic one). It is a fast path only: it answers
# for a well-formed vote of ``chain_id`` in exactly this layout and otherwise returns None, and
# the generic path decides (and gives the error), so the two cannot disagree on anything it
# accepts (tests/unit/test_chain_wire_votes.py holds it to that on random and mutated votes).
#
# The layout, ``schemas/VoteCast.avsc`` as written: chain_id string, height long, round int,
# vote_type enum {PREVOTE, PRECOMMIT}, block_hash union {null, bytes}, validator bytes,
# signature bytes. Its fingerprint is below; a changed schema has another, so this path then
# stays unused (the test says so) rather than misreads.
VOTE_FINGERPRINT = bytes.fromhex("fb4b2a875b1e1d13")
VOTE_HEADER = MARKER + VOTE_FINGERPRINT
_VOTE_TYPE_AT = (VoteType.PREVOTE, VoteType.PRECOMMIT)
_INT_RANGE = range(-(2**31), 2**31)
_LONG_MAX = 2**63 - 1


def _read_vote(data: bytes, chain_id: str) -> Vote | None:
    """The vote in ``data`` (header checked by the caller), or None to leave it to fastavro."""
    try:
        size, at = _read_long(data, HEADER_SIZE)
        end = at + size
        if size < 0 or data[at:end] != chain_id.encode():
            return None
        height, at = _read_long(data, end)
        round_, at = _read_long(data, at)
        kind, at = _read_long(data, at)
        branch, at = _read_long(data, at)
        if (kind not in (0, 1) or branch not in (0, 1) or round_ not in _INT_RANGE
                or height > _LONG_MAX):
            return None
        block_hash = None
        if branch:
            block_hash, at = _bytes(data, at)
        validator, at = _bytes(data, at)
        signature, at = _bytes(data, at)
        if at != len(data):
            return None
        return Vote(_VOTE_TYPE_AT[kind], height, round_, block_hash, validator, signature)
    except (IndexError, ValueError, MessageError):
        return None


def _read_long(data: bytes, at: int) -> tuple[int, int]:
    """The Avro long (zigzag varint) at ``at`` and the position after it; IndexError past the
    end, ValueError beyond ten bytes. (The inverse of ``qrng_ingest.publisher._zigzag``, the
    writer side of the other hand-framed record.)"""
    byte = data[at]
    if byte < 0x80:  # nearly every field of a vote: one byte
        return (byte >> 1) ^ -(byte & 1), at + 1
    value, shift = byte & 0x7F, 7
    while True:
        at += 1
        byte = data[at]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (value >> 1) ^ -(value & 1), at + 1
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than ten bytes")


def _bytes(data: bytes, at: int) -> tuple[bytes, int]:
    size, at = _read_long(data, at)
    end = at + size
    if size < 0 or end > len(data):
        raise ValueError("bytes field runs past the end")
    return data[at:end], end


def encode_finalized(record: FinalizedRecord, codec: Codec | None = None) -> bytes:
    codec = codec or default_codec()
    return codec.encode(
        "BlockFinalized",
        {
            "chain_id": record.chain_id,
            "height": record.height,
            "round": record.commit.round,
            "block_hash": record.block.hash,
            "block": record.block.canonical(),
            "commit": record.commit.canonical(),
            "state_hash": record.state_hash,
            "randomness": record.block.header.randomness,
            "consensus_offset": record.consensus_offset,
            "proposed_at_ms": record.proposed_at_ms,
            "finalized_at_ms": record.finalized_at_ms,
        },
    )


def decode_finalized(data: bytes | None, codec: Codec | None = None) -> FinalizedRecord:
    """Decode and check internal consistency (hashes, heights); the certificate's signatures
    are checked by the follower against the validator set of the height."""
    codec = codec or default_codec()
    try:
        _, record = codec.decode(data, "BlockFinalized")
    except CodecError as exc:
        raise WireError(str(exc)) from exc
    block = decode_block(record["block"])
    commit = decode_commit(record["commit"])
    checks = (
        ("height", record["height"], block.height),
        ("block_hash", record["block_hash"], block.hash),
        ("randomness", record["randomness"], block.header.randomness),
        ("commit height", commit.height, block.height),
        ("commit block hash", commit.block_hash, block.hash),
        ("round", record["round"], commit.round),
        ("chain id", record["chain_id"], block.header.chain_id),
    )
    for name, got, want in checks:
        if got != want:
            raise WireError(f"BlockFinalized {name} does not match its block")
    return FinalizedRecord(
        record["chain_id"],
        block,
        commit,
        record["state_hash"],
        record["consensus_offset"],
        record["proposed_at_ms"],
        record["finalized_at_ms"],
    )


def encode_evidence(chain_id: str, evidence: DuplicateVoteEvidence, codec: Codec | None = None
                    ) -> bytes:
    codec = codec or default_codec()
    return codec.encode(
        "DuplicateVoteEvidenceFound",
        {
            "chain_id": chain_id,
            "height": evidence.height,
            "validator": evidence.validator_address,
            "evidence": evidence.canonical(),
        },
    )


def decode_evidence_record(
    data: bytes | None, chain_id: str, codec: Codec | None = None
) -> DuplicateVoteEvidence:
    codec = codec or default_codec()
    try:
        _, record = codec.decode(data, "DuplicateVoteEvidenceFound")
    except CodecError as exc:
        raise WireError(str(exc)) from exc
    if record["chain_id"] != chain_id:
        raise WireError(f"evidence of chain {record['chain_id']!r}, expected {chain_id!r}")
    evidence = decode_evidence(record["evidence"])
    if evidence.height != record["height"] or (
        evidence.validator_address != record["validator"]
    ):
        raise WireError("DuplicateVoteEvidenceFound fields do not match its evidence")
    return evidence


# ---------------------------------------------------------------- state snapshots

SNAPSHOT_CHUNK_BYTES = 512 * 1024
MAX_SNAPSHOT_CHUNKS = 4096  # 2 GiB: a snapshot claiming more is not assembled (a reader's bound)


def snapshot_key(height: int, chunk: int) -> bytes:
    """``chain.snapshots`` key: height then chunk index, so compaction keeps every chunk of
    every snapshot until a tombstone removes it."""
    return height.to_bytes(8, "big") + chunk.to_bytes(4, "big")


def encode_snapshot_chunks(snapshot: Snapshot, written_by: str, codec: Codec | None = None
                           ) -> list[tuple[bytes, bytes]]:
    """(key, value) of each ``StateSnapshotChunk`` of ``snapshot``."""
    codec = codec or default_codec()
    data = snapshot.data
    pieces = [data[at:at + SNAPSHOT_CHUNK_BYTES]
              for at in range(0, len(data), SNAPSHOT_CHUNK_BYTES)] or [b""]
    digest = snapshot.hash
    return [(snapshot_key(snapshot.height, index), codec.encode("StateSnapshotChunk", {
        "chain_id": snapshot.chain_id, "height": snapshot.height, "snapshot_hash": digest,
        "chunk": index, "chunks": len(pieces), "data": piece, "written_by": written_by}))
        for index, piece in enumerate(pieces)]


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    chain_id: str
    height: int
    snapshot_hash: bytes
    chunk: int
    chunks: int
    data: bytes


def decode_snapshot_chunk(data: bytes | None, codec: Codec | None = None) -> SnapshotChunk:
    codec = codec or default_codec()
    try:
        _, record = codec.decode(data, "StateSnapshotChunk")
    except CodecError as exc:
        raise WireError(str(exc)) from exc
    chunk = SnapshotChunk(record["chain_id"], record["height"], record["snapshot_hash"],
                          record["chunk"], record["chunks"], record["data"])
    if (not 0 <= chunk.chunk < chunk.chunks <= MAX_SNAPSHOT_CHUNKS or chunk.height < 0
            or len(chunk.snapshot_hash) != 32):
        raise WireError(f"snapshot chunk {chunk.chunk} of {chunk.chunks} at height "
                        f"{chunk.height} is malformed")
    return chunk


def assemble_snapshots(chunks: list[SnapshotChunk], chain_id: str) -> list[Snapshot]:
    """The complete snapshots of ``chain_id`` among ``chunks`` (one per height and hash, whose
    bytes hash to the hash their chunks name), newest first. Incomplete ones are left out."""
    groups: dict[tuple[int, bytes, int], dict[int, bytes]] = {}
    for chunk in chunks:
        if chunk.chain_id == chain_id:
            groups.setdefault((chunk.height, chunk.snapshot_hash, chunk.chunks), {})[
                chunk.chunk] = chunk.data
    found = []
    for (height, digest, count), parts in groups.items():
        if len(parts) != count:
            continue
        snapshot = Snapshot(chain_id, height, b"".join(parts[i] for i in range(count)))
        if snapshot.hash == digest:
            found.append(snapshot)
    return sorted(found, key=lambda s: -s.height)
