"""A small, correctly signed chain made locally, for testing code that consumes blocks.

``make_local_chain`` writes a genesis file (Ed25519 validators, funded accounts, optional QRNG
sources) and builds ``heights`` blocks with the real block format and ledger: each block is
signed by every validator, applied to the ledger, and encoded as the ``BlockFinalized`` record
the tally would write. Blocks carry one entropy reference per contributing source when
``entropy_per_block`` > 0 (digests of local random bytes, each source's chunk committed to by its
chunk before, so the randomness derivation and the precommitment checks are exercised).
Nothing here touches Kafka; the SDK's tests, the gateway's tests and application developers use
it alike.

``tamper`` rebuilds a record after changing its block or certificate, keeping the record
internally consistent (hashes match), so only the verifier's semantic checks can catch it;
``resign`` then signs its certificate anew with the validators' keys (a block the validators
really signed: with a second block of one height, a genuine fork).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from protocol.block import Block, Body, EntropyRef, Header, fresh_sources_of, ranges_of
from protocol.chain import ChainState, apply_block
from protocol.commit import CommitCertificate, CommitFlag, CommitSig
from protocol.entropy.chain import HealthSummary
from protocol.finalized import FinalizedRecord
from protocol.follow import BlockFollower
from protocol.keys import Algorithm, SigningKey
from protocol.messages import VoteType, vote_sign_bytes
from protocol.proposer import initial_priorities, next_height, proposer
from protocol.randomness import block_randomness
from protocol.snapshot import Snapshot, take_snapshot
from services.ledger.core import MICRO, Genesis, GenesisAccount, GenesisValidator
from services.ledger.core.chain_spec import ChainSpec
from services.ledger.core.genesis import GENESIS_RANDOMNESS_SIZE
from services.ledger.core.genesis_file import save_genesis
from services.ledger.core.params import Params
from services.ledger.core.tx import QrngSource
from streams.chain_wire import decode_finalized, encode_finalized


@dataclass(frozen=True, slots=True)
class LocalChain:
    genesis: Path
    validator_keys: tuple[SigningKey, ...]
    account_keys: tuple[SigningKey, ...]
    records: tuple[bytes, ...]  # encoded BlockFinalized, heights 1..n
    final_state: ChainState  # type: ignore[type-arg]
    snapshots: tuple[Snapshot, ...] = ()  # the state after every ``snapshot_every`` heights


def _commit(chain_id: str, block: Block, keys: dict[bytes, SigningKey],
            order: tuple[bytes, ...]) -> CommitCertificate:
    sigs = tuple(
        CommitSig(CommitFlag.COMMIT, address, keys[address].sign(vote_sign_bytes(
            chain_id, VoteType.PRECOMMIT, block.height, 0, block.hash, address)))
        for address in order)
    return CommitCertificate(block.height, 0, block.hash, sigs)


def passing_health(windows: int = 8, *, rct_max_run: int = 24,
                   apt_max_count: int = 560) -> HealthSummary:
    """The health summary of ``windows`` binary APT windows that passed SP 800-90B's tests at
    H = 1 bit per sample and alpha = 2^-30 (RCT cutoff 31, APT cutoff 609 of 1024): what a
    healthy source's chunk carries, for chains built without an ingest."""
    return HealthSummary(rct_max_run=rct_max_run, apt_max_count=apt_max_count, windows=windows,
                         samples=windows * 1024, rct_cutoff=31, apt_cutoff=609, apt_window=1024,
                         failures=0)


def make_local_chain(directory: Path, heights: int, *, validators: int = 4, accounts: int = 2,
                     sources: int = 2, entropy_per_block: int = 1,
                     chain_id: str = "qustream-test", genesis_time_ms: int | None = None,
                     algorithm: Algorithm = Algorithm.ED25519,
                     txs: Callable[[int, ChainState, tuple[SigningKey, ...]],  # type: ignore[type-arg]
                                   tuple[bytes, ...]] | None = None,
                     sources_at: Callable[[int], int] | None = None,
                     snapshot_every: int = 0,
                     health: Callable[[int, str, int], HealthSummary] | None = None,
                     ) -> LocalChain:
    """Write ``directory/genesis.json`` and build ``heights`` finalized blocks (see module).

    ``algorithm`` signs for the validators and accounts; ``txs(height, chain, account_keys)``
    gives each block's encoded transactions (signed with the account keys, say);
    ``sources_at(height)`` how many sources contribute entropy to that block (default: all),
    to make pulses without fresh entropy; ``snapshot_every`` > 0 also takes the state snapshot
    (``protocol.snapshot``) after every height divisible by it, as the tally would write it
    (the genesis parameter says the same interval). Blocks are one second apart; by default the
    last one is a minute old (so a light client's trusting period holds), ``genesis_time_ms``
    places the chain elsewhere in time. ``health(height, source, seq)`` is the SP 800-90B
    summary an entropy reference carries (default ``passing_health()``; a failing one makes a
    block every reader must refuse, signed all the same)."""
    if genesis_time_ms is None:
        genesis_time_ms = int(time.time() * 1000) - 1000 * heights - 60_000
    validator_keys = tuple(SigningKey.generate(algorithm) for _ in range(validators))
    account_keys = tuple(SigningKey.generate(algorithm) for _ in range(accounts))
    source_keys = [SigningKey.generate(Algorithm.ED25519) for _ in range(sources)]
    genesis = Genesis(
        chain_id=chain_id, genesis_time_ms=genesis_time_ms,
        genesis_randomness=os.urandom(GENESIS_RANDOMNESS_SIZE),
        validators=tuple(GenesisValidator(key.public_key, 10_000 * MICRO, 100_000_000,
                                          200_000_000, 10_000_000) for key in validator_keys),
        accounts=tuple(GenesisAccount(key.address, 1_000_000 * MICRO)
                       for key in validator_keys + account_keys),
        qrng_sources=tuple(QrngSource(f"qrng-{i}", key.public_key, True)
                           for i, key in enumerate(source_keys)),
        params=Params(snapshot_interval_blocks=snapshot_every) if snapshot_every else Params(),
    )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "genesis.json"
    save_genesis(genesis, path)
    spec = ChainSpec.load(path)
    chain = spec.initial
    by_address = {key.address: key for key in validator_keys}
    records: list[bytes] = []
    last_commit: CommitCertificate | None = None
    seqs = {f"qrng-{i}": 0 for i in range(sources)}
    upcoming: dict[str, bytes] = {}  # per source, the digest its last chunk committed to
    priorities = initial_priorities(chain.validators)  # the proposer rotation of a real network
    snapshots: list[Snapshot] = []
    for height in range(1, heights + 1):
        tip = chain.tip
        entropy: list[EntropyRef] = []
        contributing = sources if sources_at is None else sources_at(height)
        for source in sorted(seqs)[:contributing] if entropy_per_block > 0 else []:
            # One chunk per source and block, committed to by its source's chunk before (the
            # first one is not), each committing to a payload digest drawn ahead.
            digest = upcoming.pop(source, None) or hashlib.sha256(os.urandom(32)).digest()
            upcoming[source] = hashlib.sha256(os.urandom(32)).digest()
            ref = EntropyRef(source, seqs[source], digest,
                             passing_health() if health is None
                             else health(height, source, seqs[source]), upcoming[source])
            entropy.append(replace(ref, committed=tip.is_committed(ref)))
            seqs[source] += 1
        body = Body(entropy=tuple(entropy), txs=txs(height, chain, account_keys) if txs else (),
                    last_commit=last_commit)
        header = Header(
            chain_id=chain_id, height=height, round=0, time_ms=tip.previous_time_ms + 1000,
            previous_block_hash=tip.previous_block_hash, last_commit_hash=body.last_commit_hash(),
            entropy_root=body.entropy_root(), entropy_ranges=ranges_of(body.entropy),
            fresh_sources=fresh_sources_of(body.entropy, tip.previous_sources or ()),
            registered_sources=tip.registered_sources,
            randomness=block_randomness(tip.previous_randomness, height, body.entropy),
            tx_root=body.tx_root(), evidence_root=body.evidence_root(),
            validators_hash=tip.validators_hash, next_validators_hash=tip.next_validators_hash,
            app_hash=tip.app_hash,
            proposer_address=proposer(priorities, chain.validators, 0),
            history_root=tip.history_root_to_build_on(),
        )
        block = Block(header, body)
        commit = _commit(chain_id, block, by_address,
                         tuple(v.address for v in chain.validators.validators))
        before = chain.validators
        chain, response = apply_block(chain, spec.app, block, commit)
        priorities = next_height(priorities, before, chain.validators)
        if snapshot_every and height % snapshot_every == 0:
            snapshots.append(take_snapshot(BlockFollower(spec.app, chain, priorities), spec.app))
        records.append(encode_finalized(FinalizedRecord(
            chain_id, block, commit, response.app_hash, height * 3, header.time_ms,
            header.time_ms + 100)))
        last_commit = commit
    return LocalChain(path, validator_keys, account_keys, tuple(records), chain,
                      tuple(snapshots))


def tamper(raw: bytes, *, header: Callable[[Header], Header] | None = None,
           commit: Callable[[CommitCertificate], CommitCertificate] | None = None) -> bytes:
    """Re-encode ``raw`` after changing its header and/or certificate; the record's own hash
    fields are recomputed so it still decodes (the certificate keeps its signatures)."""
    record = decode_finalized(raw)
    block = record.block
    if header is not None:
        block = Block(header(block.header), block.body)
    cert = dataclasses.replace(record.commit, block_hash=block.hash)
    if commit is not None:
        cert = commit(cert)
    return encode_finalized(dataclasses.replace(record, block=block, commit=cert))


def resign(raw: bytes, keys: tuple[SigningKey, ...]) -> bytes:
    """``raw`` with a certificate of its block signed by every key in ``keys`` (the validators
    of its height, in any order)."""
    record = decode_finalized(raw)
    by_address = {key.address: key for key in keys}
    order = tuple(s.validator_address for s in record.commit.signatures)
    commit = _commit(record.chain_id, record.block, by_address, order)
    return encode_finalized(dataclasses.replace(record, commit=commit))


def flip_bit(data: bytes, index: int = 0, bit: int = 0) -> bytes:
    """``data`` with one bit flipped (for tamper tests)."""
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)
