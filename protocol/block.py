"""The block format: header, body, block hash, canonical encoding.

The block hash is the SHA-256 of the header's canonical encoding; the header commits to the body
through Merkle roots (``merkle.py``) of the entropy references, the transactions and the
evidence, and through the hash of the previous height's commit certificate. So a block is
identified, signed and linked by its header alone, and a light client can check any single body
item with an inclusion proof.

Entropy enters a block as references, not payloads: ``EntropyRef(source_id, seq, digest,
health, next_digest, committed)`` names a chunk of a registered QRNG source's hash chain by its
payload digest, carries the chunk's SP 800-90B health summary
(``protocol.entropy.chain.HealthSummary``, covered by the chunk digest the source signed) and its
precommitment (``docs/precommitment.md``). The block builder service fills them from its verified
pool (chunks covered by a verified checkpoint on qs.entropy.raw), so a validator refuses a ref
whose health is not the verified chunk's; this module fixes their encoding and order: sorted by
(source id, seq), unique, one per source, the ``SeqRange`` recorded in the header, and,
checkable from the block alone, every summary passing (``HealthSummary.failing``: no failing
window, the longest run and the highest APT count below their cutoffs, ``samples`` = ``windows``
x ``apt_window`` > 0), else the ``entropy_health`` refusal.

Field order in the canonical encoding is the order of the dataclass fields below, and the golden
vectors under tests/vectors/blocks/ pin it.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from protocol.canonical import HASH_SIZE, CanonicalEncodingError, CanonicalWriter
from protocol.commit import CommitCertificate
from protocol.entropy.chain import HealthSummary
from protocol.entropy.registry import count_devices
from protocol.errors import InputError
from protocol.evidence import DuplicateVoteEvidence
from protocol.keys import ADDRESS_SIZE
from protocol.merkle import merkle_root

RANDOMNESS_SIZE = 64
ZERO_HASH = bytes(HASH_SIZE)
# ``EntropyRef``'s encoding after its source id, as one fixed-width run: seq, digest, next
# digest, committed (0/1), then the health summary in ``HEALTH_FIELDS`` order (samples is the
# u64). The encoder packs it and ``protocol.codec`` unpacks it in one call each.
ENTROPY_REF_FIELDS = struct.Struct(">Q32s32sBIIIQIIII")
_ENTROPY_REF_TAG = CanonicalWriter("EntropyRef").finish()  # the length-prefixed domain tag
_U32 = struct.Struct(">I")


class BlockFormatError(InputError):
    """A block, header or body violates the format (sizes, order, roots)."""


@dataclass(frozen=True, slots=True, order=True)
class EntropyRef:
    """One verified entropy chunk: ``source_id``'s chunk ``seq`` with payload ``digest``, and
    the health summary of the windows its bytes came from (last in the encoding).

    ``next_digest`` is the chunk's precommitment to its source's next payload
    (``protocol.entropy.chain``), so the block that includes a chunk also fixes what the next
    one must be. ``committed``: the chunk's ``digest`` equals the ``next_digest`` of its
    source's previously included chunk, i.e. its payload was fixed, and hidden, before the
    block that commits to it was decided; only committed refs are mixed into the randomness
    (``protocol.randomness``). The flag is the proposer's claim, checked against the chain
    (``ChainTip.commitments``) by every full verifier; it is left out of comparisons so a
    node's verified pool (which knows no chain position) recognises the chunk.

    Encoding: ``source_id``, ``seq``, ``digest``, ``next_digest``, ``committed``, ``health``."""

    source_id: str
    seq: int
    digest: bytes
    health: HealthSummary
    next_digest: bytes = ZERO_HASH
    committed: bool = field(default=False, compare=False)
    # Immutable, so encoded once (the entropy root hashes it; a decoded reference keeps the
    # bytes it was read from, ``protocol.codec``).
    _canonical: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if type(self.seq) is not int or type(self.committed) is not bool:
            raise BlockFormatError(f"entropy ref {self.source_id!r}/{self.seq} needs an integer "
                                   "seq and a boolean committed flag")
        if (not self.source_id or self.seq < 0 or len(self.digest) != HASH_SIZE
                or len(self.next_digest) != HASH_SIZE):
            raise BlockFormatError(
                f"entropy ref {self.source_id!r}/{self.seq} needs a source id, seq >= 0, a "
                f"{HASH_SIZE}-byte digest and a {HASH_SIZE}-byte next digest"
            )
        if not isinstance(self.health, HealthSummary):
            raise BlockFormatError(f"entropy ref {self.source_id!r}/{self.seq} needs a health "
                                   "summary")
        impossible = self.health.impossible()
        if impossible is not None:
            raise BlockFormatError(f"entropy ref {self.source_id!r}/{self.seq}: {impossible}")

    def canonical(self) -> bytes:
        # What ``CanonicalWriter("EntropyRef").text(source_id).u64(seq).raw(digest, 32)
        # .raw(next_digest, 32).boolean(committed)`` and ``health.write`` append (the golden
        # vector in tests/unit/test_block.py holds them equal), in one pack: every block and
        # every verified pulse hashes each of its references. ``__post_init__`` has checked
        # the lengths and the health ranges the writer would; ``struct`` refuses the rest.
        if self._canonical is not None:
            return self._canonical
        h = self.health
        source = self.source_id.encode("utf-8")
        try:
            fields = ENTROPY_REF_FIELDS.pack(
                self.seq, self.digest, self.next_digest, self.committed, h.rct_max_run,
                h.apt_max_count, h.windows, h.samples, h.rct_cutoff, h.apt_cutoff, h.apt_window,
                h.failures)
            encoded = b"".join((_ENTROPY_REF_TAG, _U32.pack(len(source)), source, fields))
        except struct.error as exc:
            raise CanonicalEncodingError(f"entropy ref {self.source_id!r}/{self.seq}: "
                                         f"{exc}") from exc
        object.__setattr__(self, "_canonical", encoded)
        return encoded


@dataclass(frozen=True, slots=True, order=True)
class SeqRange:
    """The chunks ``first..last`` (inclusive) of ``source_id`` that a block includes."""

    source_id: str
    first: int
    last: int

    def __post_init__(self) -> None:
        if not self.source_id or not 0 <= self.first <= self.last:
            raise BlockFormatError(
                f"seq range {self.source_id!r} {self.first}..{self.last} is empty or negative"
            )

    def canonical(self) -> bytes:
        return (
            CanonicalWriter("SeqRange")
            .text(self.source_id)
            .u64(self.first)
            .u64(self.last)
            .finish()
        )


def ranges_of(entropy: Sequence[EntropyRef]) -> tuple[SeqRange, ...]:
    """Per-source ranges of canonically ordered, per-source contiguous ``entropy``."""
    ranges: list[SeqRange] = []
    for ref in entropy:
        if ranges and ranges[-1].source_id == ref.source_id:
            if ref.seq != ranges[-1].last + 1:
                raise BlockFormatError(
                    f"entropy of {ref.source_id!r} is not contiguous at seq {ref.seq}"
                )
            ranges[-1] = SeqRange(ref.source_id, ranges[-1].first, ref.seq)
        else:
            ranges.append(SeqRange(ref.source_id, ref.seq, ref.seq))
    return tuple(ranges)


def fresh_sources_of(entropy: Sequence[EntropyRef], previous_sources: Iterable[str]) -> int:
    """The header's ``fresh_sources``: the devices with a committed chunk in this block whose
    source also had a chunk in the previous block (``previous_sources``), so the chunk's
    payload was committed to by the block just before and (by an honest, paced source) kept
    secret until that block was final (``docs/precommitment.md``). Lanes of one device
    (``protocol.entropy.registry``) count once, so they never pass for two independent
    sources."""
    previous = set(previous_sources)
    return count_devices(ref.source_id for ref in entropy
                         if ref.committed and ref.source_id in previous)


def keeps_commitment(commitment: bytes, ref: EntropyRef) -> bool:
    """Whether ``ref`` is what its source committed to: ``commitment`` is the ``next_digest``
    of the source's previously included chunk (zero: it committed to nothing)."""
    return commitment != ZERO_HASH and commitment == ref.digest


def precommitment_problems(
    header: Header, entropy: Sequence[EntropyRef],
    commitment_of: Callable[[str], bytes | None], previous_sources: Iterable[str] | None,
) -> list[str]:
    """What is wrong with ``entropy``'s committed flags and ``header.fresh_sources``
    (``docs/precommitment.md``), given each source's commitment (``commitment_of``: None when
    the reader does not know it, so that flag is not judged) and the previous block's sources
    (None: unknown, the count is not judged). ``protocol.check`` asks with the chain tip's
    commitments, the SDK with the previous pulse's references."""
    problems: list[str] = []
    for ref in entropy:
        commitment = commitment_of(ref.source_id)
        if commitment is None:
            continue
        kept = keeps_commitment(commitment, ref)
        if ref.committed != kept:
            problems.append(
                f"chunk {ref.source_id!r}/{ref.seq} is flagged "
                f"{'committed' if ref.committed else 'uncommitted'}, but its digest "
                f"{'is' if kept else 'is not'} the one its source's previously included chunk "
                "committed to")
    if previous_sources is not None and not problems:
        fresh = fresh_sources_of(entropy, previous_sources)
        if header.fresh_sources != fresh:
            problems.append(f"header says {header.fresh_sources} sources contributed fresh "
                            f"entropy; {fresh} devices have a committed chunk following one of "
                            "the previous block")
    return problems


def entropy_root(entropy: Sequence[EntropyRef]) -> bytes:
    """The Merkle root of the references' canonical encodings (``Header.entropy_root``)."""
    return merkle_root([ref.canonical() for ref in entropy])


def committed_devices(entropy: Sequence[EntropyRef]) -> int:
    """The devices with a committed chunk in ``entropy``: the most ``fresh_sources`` a block
    can claim, whatever the block before it held (the check a reader of one block can make)."""
    return count_devices(ref.source_id for ref in entropy if ref.committed)


@dataclass(frozen=True, slots=True)
class Header:
    chain_id: str
    height: int
    round: int  # the round the proposer built it for (informational; the commit has its own)
    time_ms: int  # proposer's time, strictly increasing along the chain
    previous_block_hash: bytes  # at height 1: the genesis hash
    last_commit_hash: bytes  # hash of the height-1 commit in the body; ZERO_HASH at height 1
    entropy_root: bytes
    entropy_ranges: tuple[SeqRange, ...]
    # How many registered sources contributed fresh entropy to this block: devices with a
    # committed chunk whose source was also in the previous block (``fresh_sources_of``; lanes
    # of one device count once). And how many devices were registered in the state the block
    # builds on.
    # ``protocol.pulse`` reads the pair: a pulse without fresh entropy, or from fewer sources
    # than the two-source rule asks, is marked not random.
    fresh_sources: int
    registered_sources: int
    randomness: bytes  # 64 bytes, see randomness.py
    tx_root: bytes
    evidence_root: bytes
    validators_hash: bytes  # set governing this height
    next_validators_hash: bytes  # set governing height + 1
    app_hash: bytes  # application state hash after height - 1
    proposer_address: bytes
    # ``protocol.mmr``'s root over the block hashes of heights 1..height-1 (height 1: the empty
    # history's root), so this header proves any older block with O(log n) hashes. Last in the
    # encoding, so the offsets of the fields before it did not move when it was added.
    history_root: bytes
    # Immutable, so encoded once (the block hash and the block's own encoding both need it).
    _canonical: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in (
            "previous_block_hash",
            "last_commit_hash",
            "entropy_root",
            "tx_root",
            "evidence_root",
            "validators_hash",
            "next_validators_hash",
            "history_root",
        ):
            if len(getattr(self, name)) != HASH_SIZE:
                raise BlockFormatError(f"header {name} must be {HASH_SIZE} bytes")
        if len(self.randomness) != RANDOMNESS_SIZE:
            raise BlockFormatError(f"header randomness must be {RANDOMNESS_SIZE} bytes")
        if len(self.proposer_address) != ADDRESS_SIZE:
            raise BlockFormatError(f"header proposer address must be {ADDRESS_SIZE} bytes")
        if self.height < 1 or self.round < 0 or self.time_ms < 0:
            raise BlockFormatError(
                f"header height/round/time {self.height}/{self.round}/{self.time_ms} invalid"
            )
        if self.fresh_sources < 0 or self.registered_sources < 0:
            raise BlockFormatError("header source counts cannot be negative")

    def canonical(self) -> bytes:
        if self._canonical is None:
            object.__setattr__(self, "_canonical", self._encode())
        assert self._canonical is not None
        return self._canonical

    def _encode(self) -> bytes:
        return (
            CanonicalWriter("BlockHeader")
            .text(self.chain_id)
            .u64(self.height)
            .u32(self.round)
            .u64(self.time_ms)
            .raw(self.previous_block_hash, HASH_SIZE)
            .raw(self.last_commit_hash, HASH_SIZE)
            .raw(self.entropy_root, HASH_SIZE)
            .sequence(self.entropy_ranges, lambda w, r: w.nested(r.canonical()))
            .u32(self.fresh_sources)
            .u32(self.registered_sources)
            .raw(self.randomness, RANDOMNESS_SIZE)
            .raw(self.tx_root, HASH_SIZE)
            .raw(self.evidence_root, HASH_SIZE)
            .raw(self.validators_hash, HASH_SIZE)
            .raw(self.next_validators_hash, HASH_SIZE)
            .bytes(self.app_hash)
            .raw(self.proposer_address, ADDRESS_SIZE)
            .raw(self.history_root, HASH_SIZE)
            .finish()
        )

    def hash(self) -> bytes:
        return CanonicalWriter("BlockHash").nested(self.canonical()).digest()


@dataclass(frozen=True, slots=True)
class Body:
    entropy: tuple[EntropyRef, ...] = ()  # sorted by (source_id, seq), unique
    txs: tuple[bytes, ...] = ()  # encoded signed transactions, in execution order
    evidence: tuple[DuplicateVoteEvidence, ...] = ()  # sorted by evidence hash, unique
    last_commit: CommitCertificate | None = None  # commit of height - 1; None at height 1

    def entropy_root(self) -> bytes:
        return entropy_root(self.entropy)

    def tx_root(self) -> bytes:
        return merkle_root(self.txs)

    def evidence_root(self) -> bytes:
        return merkle_root([item.canonical() for item in self.evidence])

    def last_commit_hash(self) -> bytes:
        return ZERO_HASH if self.last_commit is None else self.last_commit.hash()

    def canonical(self) -> bytes:
        return (
            CanonicalWriter("BlockBody")
            .sequence(self.entropy, lambda w, r: w.nested(r.canonical()))
            .sequence(self.txs, lambda w, t: w.bytes(t))
            .sequence(self.evidence, lambda w, e: w.nested(e.canonical()))
            .optional(self.last_commit, lambda w, c: w.nested(c.canonical()))
            .finish()
        )


@dataclass(frozen=True, slots=True)
class Block:
    header: Header
    body: Body
    hash: bytes = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hash", self.header.hash())

    @property
    def height(self) -> int:
        return self.header.height

    def canonical(self) -> bytes:
        return (
            CanonicalWriter("Block")
            .nested(self.header.canonical())
            .nested(self.body.canonical())
            .finish()
        )

    def structural_problem(self) -> BodyMismatch | None:
        """Why the body does not match the header or the ordering rules; None when it does.
        Context-free: links to the previous block, randomness and state are checked by
        ``protocol.check.check_block``."""
        header, body = self.header, self.body
        entropy = entropy_problem(header, body.entropy)
        if entropy is not None:
            return BodyMismatch("entropy_root", entropy)
        unhealthy = unhealthy_entropy(body.entropy)
        if unhealthy is not None:
            return BodyMismatch("entropy_health", unhealthy)
        if body.tx_root() != header.tx_root:
            return BodyMismatch("block_body", "tx root does not match the body")
        hashes = [item.hash() for item in body.evidence]
        if hashes != sorted(set(hashes)):
            return BodyMismatch("block_body", "evidence is not sorted by hash and unique")
        if body.evidence_root() != header.evidence_root:
            return BodyMismatch("block_body", "evidence root does not match the body")
        if body.last_commit_hash() != header.last_commit_hash:
            return BodyMismatch("block_body", "last commit hash does not match the body")
        if (body.last_commit is None) != (header.height == 1):
            return BodyMismatch("block_body", "a block carries the previous commit exactly when "
                                              "its height is above 1")
        if body.last_commit is not None and body.last_commit.height != header.height - 1:
            return BodyMismatch("block_body", f"last commit is for height "
                                              f"{body.last_commit.height}, not {header.height - 1}")
        if body.last_commit is not None and (
            body.last_commit.block_hash != header.previous_block_hash
        ):
            return BodyMismatch("block_body", "last commit is not for the previous block")
        return None


def unhealthy_entropy(entropy: Sequence[EntropyRef]) -> str | None:
    """Why one of ``entropy``'s health summaries does not show passing entropy (the first in
    block order, ``HealthSummary.failing``), None when every one passes."""
    for ref in entropy:
        failing = ref.health.failing()
        if failing is not None:
            return f"entropy {ref.source_id!r}/{ref.seq} did not pass its health tests: {failing}"
    return None


@dataclass(frozen=True, slots=True)
class BodyMismatch:
    """A body that does not match its header. ``check`` names the part: ``entropy_root`` (the
    entropy references, their ranges and root), ``entropy_health`` (a reference whose health
    summary does not pass, ``unhealthy_entropy``) or ``block_body`` (everything else)."""

    check: str
    reason: str


def entropy_problem(header: Header, entropy: Sequence[EntropyRef]) -> str | None:
    """Why ``entropy`` does not match ``header`` (order, the one chunk per source, ranges, the
    bound on the fresh count, root); None when it does. Context-free: the ``entropy_root``
    check of ``Block.structural_problem``, and the SDK's for a pulse, which has no body."""
    keys = [(r.source_id, r.seq) for r in entropy]
    if any(a >= b for a, b in itertools.pairwise(keys)):
        return "entropy refs are not sorted by (source, seq) and unique"
    try:
        ranges = ranges_of(entropy)
    except BlockFormatError as exc:
        return str(exc)
    if ranges != header.entropy_ranges:
        return "header entropy ranges do not match the body"
    wide = next((r for r in ranges if r.last != r.first), None)
    if wide is not None:
        return (f"{wide.source_id!r} has chunks {wide.first}..{wide.last}: a block includes at "
                "most one chunk per source, so every chunk it mixes was committed to before")
    devices = committed_devices(entropy)
    if header.fresh_sources > devices:
        return (f"header says {header.fresh_sources} sources contributed fresh entropy, the "
                f"body has committed chunks of {devices} devices")
    if entropy_root(entropy) != header.entropy_root:
        return "entropy root does not match the body"
    return None
