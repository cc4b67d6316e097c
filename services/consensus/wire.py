"""Chain messages on the wire: canonical decoding and the Avro records of the chain topics.

What is hashed or signed travels in its canonical encoding (``streams.canonical``) inside the
Avro records, so a consumer re-derives every hash from the bytes it received; the Avro fields
beside it (height, hashes) are only for routing and display and are checked against the
decoded value. The decoders mirror the writers of the core field by field and reject anything
the writers could not have produced (``CanonicalReader`` is strict), so one value has one
encoding. Every failure is a ``WireError`` naming the record; consumers dead-letter it.

Topics and records:
- ``chain.consensus``: ``ProposalMade`` / ``VoteCast`` (one partition, no key);
- ``chain.blocks``: ``BlockFinalized`` keyed by the height (8-byte big-endian);
- ``chain.evidence``: ``DuplicateVoteEvidenceFound`` keyed by the validator address;
- ``ledger.tx``: ``TransactionSubmitted`` keyed by the sender address.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, TypeVar

from services.block_builder.core.block import (
    Block,
    BlockFormatError,
    Body,
    EntropyRef,
    Header,
    SeqRange,
)
from services.consensus.core.commit import CommitCertificate, CommitFlag, CommitSig
from services.consensus.core.evidence import DuplicateVoteEvidence
from services.consensus.core.ledger.codec import CanonicalDecodeError, CanonicalReader
from services.consensus.core.messages import MessageError, Proposal, Vote, VoteType
from streams.codec import Codec, CodecError, default_codec

_T = TypeVar("_T")
MAX_ITEMS = 100_000  # per sequence inside one block; a Kafka message is <= 8 MiB anyway
VOTE_TYPES = {VoteType.PREVOTE: "PREVOTE", VoteType.PRECOMMIT: "PRECOMMIT"}
VOTE_TYPES_BY_NAME = {name: kind for kind, name in VOTE_TYPES.items()}


class WireError(ValueError):
    """A chain record is malformed, of an unexpected schema, or inconsistent with its body."""


# ---------------------------------------------------------------- canonical decoders


def _vote(data: bytes) -> Vote:
    r = CanonicalReader(data, "SignedVote")
    vote_type = VoteType(r.u8())
    height, round = r.u64(), r.u32()
    block_hash = r.optional(lambda x: x.raw(32))
    address = r.raw(20)
    signature = r.bytes()
    r.done()
    return Vote(vote_type, height, round, block_hash, address, signature)


def decode_vote(data: bytes) -> Vote:
    return _guard("vote", lambda: _vote(data))


def _evidence(data: bytes) -> DuplicateVoteEvidence:
    r = CanonicalReader(data, "DuplicateVoteEvidence")
    a, b = _vote(r.nested()), _vote(r.nested())
    r.done()
    evidence = DuplicateVoteEvidence(a, b)
    problem = evidence.structural_problem()
    if problem:
        raise WireError(f"evidence: {problem}")
    return evidence


def decode_evidence(data: bytes) -> DuplicateVoteEvidence:
    return _guard("evidence", lambda: _evidence(data))


def _commit_sig(data: bytes) -> CommitSig:
    r = CanonicalReader(data, "CommitSig")
    flag = CommitFlag(r.u8())
    address = r.raw(20)
    signature = r.bytes()
    r.done()
    return CommitSig(flag, address, signature)


@functools.lru_cache(maxsize=8)
def _commit(data: bytes) -> CommitCertificate:
    # Memoized by bytes: a certificate arrives twice, in its BlockFinalized record and again as
    # the next block's ``last_commit``. The certificate is immutable, so sharing it is safe.
    r = CanonicalReader(data, "CommitCertificate")
    height, round, block_hash = r.u64(), r.u32(), r.raw(32)
    signatures = r.sequence(lambda x: _commit_sig(x.nested()), MAX_ITEMS)
    r.done()
    return _remember(CommitCertificate(height, round, block_hash, signatures), data)


def _remember(value: _T, data: bytes) -> _T:
    """Keep ``data`` as ``value``'s canonical encoding, so it is not encoded again for hashing.
    Sound because the reader is strict (module doc): the only bytes that decode to ``value``
    are its canonical encoding."""
    object.__setattr__(value, "_canonical", bytes(data))
    return value


def decode_commit(data: bytes) -> CommitCertificate:
    return _guard("commit certificate", lambda: _commit(data))


def _entropy_ref(data: bytes) -> EntropyRef:
    r = CanonicalReader(data, "EntropyRef")
    ref = EntropyRef(r.text(), r.u64(), r.raw(32))
    r.done()
    return ref


def _seq_range(data: bytes) -> SeqRange:
    r = CanonicalReader(data, "SeqRange")
    seq_range = SeqRange(r.text(), r.u64(), r.u64())
    r.done()
    return seq_range


def _header(data: bytes) -> Header:
    r = CanonicalReader(data, "BlockHeader")
    header = Header(
        chain_id=r.text(),
        height=r.u64(),
        round=r.u32(),
        time_ms=r.u64(),
        previous_block_hash=r.raw(32),
        last_commit_hash=r.raw(32),
        entropy_root=r.raw(32),
        entropy_ranges=r.sequence(lambda x: _seq_range(x.nested()), MAX_ITEMS),
        randomness=r.raw(64),
        tx_root=r.raw(32),
        evidence_root=r.raw(32),
        validators_hash=r.raw(32),
        next_validators_hash=r.raw(32),
        app_hash=r.bytes(),
        proposer_address=r.raw(20),
    )
    r.done()
    return _remember(header, data)


def _body(data: bytes) -> Body:
    r = CanonicalReader(data, "BlockBody")
    body = Body(
        entropy=r.sequence(lambda x: _entropy_ref(x.nested()), MAX_ITEMS),
        txs=r.sequence(lambda x: x.bytes(), MAX_ITEMS),
        evidence=r.sequence(lambda x: _evidence(x.nested()), MAX_ITEMS),
        last_commit=r.optional(lambda x: _commit(x.nested())),
    )
    r.done()
    return body


def _block(data: bytes) -> Block:
    r = CanonicalReader(data, "Block")
    header, body = _header(r.nested()), _body(r.nested())
    r.done()
    block = Block(header, body)
    if block.canonical() != data:  # belt and braces: one block, one encoding
        raise WireError("block bytes are not the canonical encoding of their content")
    return block


def decode_block(data: bytes) -> Block:
    """The block of ``Block.canonical()`` bytes; ``WireError`` on anything else."""
    return _guard("block", lambda: _block(data))


def _guard(what: str, decode: Any) -> Any:
    try:
        return decode()
    except WireError:
        raise
    except (CanonicalDecodeError, BlockFormatError, MessageError, ValueError) as exc:
        raise WireError(f"malformed {what}: {exc}") from exc


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
    try:
        schema, record = codec.decode(data)
    except CodecError as exc:
        raise WireError(str(exc)) from exc
    if schema not in ("ProposalMade", "VoteCast"):
        raise WireError(f"{schema} does not belong on the consensus topic")
    if record["chain_id"] != chain_id:
        raise WireError(f"{schema} of chain {record['chain_id']!r}, expected {chain_id!r}")
    if schema == "VoteCast":
        return _guard(
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
    proposal: Proposal = _guard(
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


@dataclass(frozen=True, slots=True)
class FinalizedRecord:
    """A decoded ``BlockFinalized``: the block, its certificate and what the tally observed.

    ``consensus_offset`` is the offset on ``chain.consensus`` of the precommit that completed
    the quorum; ``proposed_at_ms`` / ``finalized_at_ms`` are the log timestamps of the
    proposal and of that precommit (so two tallies write byte-identical records)."""

    chain_id: str
    block: Block
    commit: CommitCertificate
    state_hash: bytes
    consensus_offset: int
    proposed_at_ms: int
    finalized_at_ms: int

    @property
    def height(self) -> int:
        return self.block.height


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
