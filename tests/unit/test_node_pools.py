"""Issue 16, items 6 and 7: the validator's mempool and evidence pool admit by rules, stay
bounded, and junk (fresh keys, forged or future evidence) can never push honest input out."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.evidence import DuplicateVoteEvidence
from protocol.keys import Algorithm, SigningKey
from protocol.messages import Vote, VoteType
from services.consensus.evidence_pool import (
    EvidencePool,
    EvidenceRejectedError,
    FutureEvidenceError,
)
from services.consensus.mempool import (
    NONCE_WINDOW,
    BadSignatureError,
    FeeTooLowError,
    Mempool,
    MempoolFullError,
    NonceWindowError,
    SenderCapError,
    UnfundedError,
)
from services.ledger.core import MICRO, Transfer, encode_signed_tx, sign_tx
from services.ledger.submit import submitted_record
from streams.codec import default_codec
from tests.unit.test_ledger_fixtures import CHAIN_ID, FEE, Chain, address, key, make_genesis

FUNDED = tuple(range(20, 40))
GENESIS = make_genesis(accounts=tuple((i, 10 * MICRO) for i in (10, 11, *FUNDED)))


def _state():  # type: ignore[no-untyped-def]
    return Chain(GENESIS).state


def _record(signer: SigningKey, nonce: int, fee: int = FEE, amount: int = 1) -> bytes:
    raw = encode_signed_tx(sign_tx(signer, CHAIN_ID, nonce, fee, Transfer(address(11), amount)))
    return submitted_record(raw)[1]


def _fresh(index: int) -> SigningKey:
    return SigningKey.from_seed(index.to_bytes(32, "little"), Algorithm.ED25519)


@settings(max_examples=10, deadline=None)
@given(junk=st.integers(min_value=1, max_value=2_000), limit=st.integers(1, 50))
def test_junk_from_fresh_keys_never_enters_nor_displaces(junk: int, limit: int) -> None:
    """Fresh keys hold nothing, so they cannot pay a fee: every junk transaction is refused
    (as ``unfunded``) and an honest one is admitted whatever came before, even in a pool of
    any size."""
    state = _state()
    pool = Mempool(limit=limit)
    for index in range(junk):
        with pytest.raises(UnfundedError):
            pool.admit(_record(_fresh(1_000_000 + index), 0), state, 1)
    assert len(pool) == 0
    assert pool.admit(_record(key(10), 0), state, 1)
    assert len(pool.candidates()) == 1


@settings(max_examples=15, deadline=None)
@given(spammers=st.integers(min_value=1, max_value=len(FUNDED)),
       limit=st.integers(min_value=2, max_value=60))
def test_funded_spam_cannot_push_an_honest_sender_below_its_share(spammers: int,
                                                                   limit: int) -> None:
    """Funded senders fill a full pool up to their cap; an honest sender with fewer pending
    transactions than the largest holder still gets in (the largest holder loses its highest
    nonce)."""
    state = _state()
    pool = Mempool(limit=limit)
    for sender in FUNDED[:spammers]:
        for nonce in range(NONCE_WINDOW):
            try:
                pool.admit(_record(key(sender), nonce), state, 1)
            except (MempoolFullError, SenderCapError):
                break
    assert len(pool) <= limit
    assert max(pool.pending_of(key(s).address) for s in FUNDED) <= NONCE_WINDOW
    largest = max(pool.pending_of(key(s).address) for s in FUNDED)
    if largest > 1:
        assert pool.admit(_record(key(10), 0), state, 1)
        assert pool.pending_of(key(10).address) == 1
    assert len(pool) <= limit


def test_admission_rules_nonce_window_fee_signature_and_pruning() -> None:
    state = _state()
    pool = Mempool()
    sender = key(10)
    with pytest.raises(NonceWindowError):
        pool.admit(_record(sender, NONCE_WINDOW), state, 1)
    with pytest.raises(FeeTooLowError):
        pool.admit(_record(sender, 0, fee=FEE - 1), state, 1)
    forged = _record(sender, 0)
    raw = encode_signed_tx(dataclasses.replace(
        sign_tx(sender, CHAIN_ID, 0, FEE, Transfer(address(11), 2)), signature=bytes(64)))
    unchecked = default_codec().encode("TransactionSubmitted", {
        "tx": raw, "sender": sender.address, "nonce": 0, "submitted_at_ms": 0})
    with pytest.raises(BadSignatureError):
        pool.admit(unchecked, state, 1)
    assert pool.admit(forged, state, 1)
    assert not pool.admit(forged, state, 1)  # a redelivery: harmless, not dead-lettered
    assert pool.admit(_record(sender, 3), state, 1)  # a future nonce inside the window
    poor = key(11)
    chain = Chain(GENESIS)
    # the sender spends everything: its pending fees are no longer covered
    chain.block(txs=[chain.tx(11, Transfer(address(10), 10 * MICRO - FEE))])
    drained = chain.state
    assert pool.admit(_record(poor, 1), state, 1)
    pool.prune((), drained, 2)
    assert pool.pending_of(poor.address) == 0
    # stale nonces go, and a future nonce whose gap is never filled expires
    pool.prune((), state, 2 + 1_000)
    assert pool.pending_of(sender.address) == 1  # nonce 0 stays (executable), nonce 3 expired


def _vote(signer: SigningKey, height: int, block: bytes | None, round_: int = 0) -> Vote:
    unsigned = Vote(VoteType.PREVOTE, height, round_, block, signer.address, b"")
    return dataclasses.replace(unsigned, signature=signer.sign(unsigned.sign_bytes(CHAIN_ID)))


def _evidence(signer: SigningKey, height: int, forged: bool = False) -> DuplicateVoteEvidence:
    first, second = _vote(signer, height, None), _vote(signer, height, b"\x01" * 32)
    if forged:
        second = dataclasses.replace(second, signature=bytes(64))
    return DuplicateVoteEvidence.from_votes(first, second)


def _chain_at(height: int):  # type: ignore[no-untyped-def]
    from protocol.chain import genesis_chain

    chain = Chain(GENESIS)
    return genesis_chain(chain.app, chain.state, CHAIN_ID, bytes(32), 0, bytes(64)), chain


@settings(max_examples=10, deadline=None)
@given(spam=st.integers(min_value=1, max_value=300))
def test_evidence_spam_is_refused_and_the_pool_is_bounded(spam: int) -> None:
    chain, _ = _chain_at(1)
    pool = EvidencePool(limit=8)
    for index in range(spam):
        stranger = _fresh(5_000 + index)
        with pytest.raises(EvidenceRejectedError):
            pool.add(_evidence(stranger, 1), chain)  # not a validator
        with pytest.raises(EvidenceRejectedError):
            pool.add(_evidence(key(index % 4), 1, forged=True), chain)  # bad signature
        with pytest.raises(FutureEvidenceError):
            pool.add(_evidence(key(index % 4), 2 + index), chain)  # not decided yet
    assert len(pool) == 0
    assert pool.add(_evidence(key(0), 1), chain)
    assert not pool.add(_evidence(key(0), 1), chain)  # one pending item per offender
    assert [e.validator_address for e in pool.pending()] == [key(0).address]


def test_evidence_is_pruned_once_included_or_expired() -> None:
    chain, _ = _chain_at(1)
    pool = EvidencePool()
    item = _evidence(key(1), 1)
    pool.add(item, chain)
    pool.prune(chain, (item,))
    assert len(pool) == 0
    pool.add(item, chain)
    expired = dataclasses.replace(chain, tip=dataclasses.replace(
        chain.tip, height=1 + chain.evidence_max_age + 1))
    pool.prune(expired, ())
    assert len(pool) == 0
