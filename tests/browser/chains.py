"""Gateways over locally made chains (``sdk.testing``), some blocks served tampered.

The tampering is the test's data source, not a gateway flag: the view is filled with records
the test chose, exactly as the follower would fill it with the records it read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from protocol.block import Block
from protocol.commit import CommitFlag, CommitSig
from protocol.validators import ValidatorSet
from sdk.testing import LocalChain, flip_bit, tamper
from services.gateway.api import Gateway
from services.gateway.auth import ApiKeyStore
from services.gateway.chain import ChainView
from services.gateway.explorer.documents import GenesisAnchor
from services.ledger.core.chain_spec import ChainSpec
from streams.chain_wire import decode_finalized, encode_finalized


def _body_entropy_digest(raw: bytes) -> bytes:
    """The first entropy reference's digest changed, header untouched (so the certificate still
    signs the header: only the body no longer matches its root)."""
    record = decode_finalized(raw)
    block = record.block
    first, *rest = block.body.entropy
    changed = dataclasses.replace(first, digest=flip_bit(first.digest, 3))
    body = dataclasses.replace(block.body, entropy=(changed, *rest))
    return encode_finalized(dataclasses.replace(record, block=Block(block.header, body)))


def _minority(raw: bytes) -> bytes:
    """Half of the signatures dropped: below the 2/3 quorum."""
    def drop(cert):  # type: ignore[no-untyped-def]
        signatures = tuple(CommitSig(CommitFlag.ABSENT, s.validator_address, b"") if i % 2 else s
                           for i, s in enumerate(cert.signatures))
        return dataclasses.replace(cert, signatures=signatures)
    return encode_finalized(dataclasses.replace(decode_finalized(raw),
                                                commit=drop(decode_finalized(raw).commit)))


# Each tampering and the check protocol/check.py (and the page) names first.
TAMPERINGS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "randomness bit": ("randomness", lambda raw: tamper(raw, header=lambda h: dataclasses.replace(
        h, randomness=flip_bit(h.randomness, 5)))),
    "certificate signature bit": ("commit", lambda raw: tamper(raw, commit=lambda c: (
        dataclasses.replace(c, signatures=(dataclasses.replace(
            c.signatures[0], signature=flip_bit(c.signatures[0].signature, 40)),
            *c.signatures[1:]))))),
    "entropy digest in the body": ("entropy_root", _body_entropy_digest),
    "time before the previous block": ("time", lambda raw: tamper(
        raw, header=lambda h: dataclasses.replace(h, time_ms=h.time_ms - 5000))),
    "previous block hash": ("hash_link", lambda raw: tamper(raw, header=lambda h: (
        dataclasses.replace(h, previous_block_hash=flip_bit(h.previous_block_hash, 9))))),
    "certificate below quorum": ("commit", _minority),
    "proposer not a validator": ("proposer", lambda raw: tamper(
        raw, header=lambda h: dataclasses.replace(h, proposer_address=bytes(20)))),
    "fresh source count": ("entropy_root", lambda raw: tamper(raw, header=lambda h: (
        dataclasses.replace(h, fresh_sources=h.fresh_sources + 1)))),
    "validators hash": ("validator_set", lambda raw: tamper(raw, header=lambda h: (
        dataclasses.replace(h, validators_hash=flip_bit(h.validators_hash, 1))))),
}


def local_gateway(chain: LocalChain, served: list[bytes] | None = None) -> Gateway:
    """A gateway whose view holds ``served`` (default: the chain's own records) at heights
    1..n, each with the validator set the honest chain has at that height."""
    spec = ChainSpec.load(chain.genesis)
    view = ChainView(spec.chain_id, spec.initial.tip.previous_randomness)
    follower = spec.follower()
    sets: list[ValidatorSet] = []
    for raw in chain.records:
        sets.append(follower.chain.validators)
        follower.accept(decode_finalized(raw))
    for offset, raw in enumerate(served if served is not None else chain.records):
        view.add(raw, decode_finalized(raw), sets[offset], offset, 0)
    view.caught_up = True
    gateway = Gateway(view=view, keys=ApiKeyStore(None), genesis=GenesisAnchor.of_spec(spec))
    gateway.ledger.state = follower.chain.app_state
    return gateway
