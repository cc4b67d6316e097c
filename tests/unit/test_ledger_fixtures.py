"""Builders shared by the ledger tests: deterministic keys, a genesis, and a block driver.

Keys are Ed25519 from fixed seeds (fast, deterministic signatures); one test module also runs
with ML-DSA-65. ``Chain`` feeds ``LedgerApp.finalize_block`` the way consensus does: the
``last_commit`` of height H lists the set that governed H-1, with chosen signers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from functools import cache

from protocol.app import FinalizeBlockRequest, FinalizeBlockResponse, Misbehavior, VoteInfo
from protocol.keys import Algorithm, SigningKey
from protocol.validators import ValidatorSet
from services.ledger.core import (
    MICRO,
    Genesis,
    GenesisAccount,
    GenesisValidator,
    LedgerApp,
    LedgerState,
    Params,
    QrngSource,
    TxBody,
    encode_signed_tx,
    genesis_state,
    sign_tx,
)
from services.ledger.core.queries import next_nonce

CHAIN_ID = "qustream-test"
FEE = 1_000

TEST_PARAMS = Params(
    min_self_bond=100 * MICRO,
    unbonding_period_blocks=10,
    blocks_per_day=5,
    signed_blocks_window=10,
    downtime_jail_blocks=5,
    max_evidence_age_blocks=10,
    min_deposit=10 * MICRO,
    voting_period_blocks=3,
    min_tx_fee=FEE,
)


@cache
def key(index: int, algorithm: Algorithm = Algorithm.ED25519) -> SigningKey:
    """Deterministic test key number ``index``."""
    return SigningKey.from_seed(index.to_bytes(32, "big"), algorithm)


def address(index: int) -> bytes:
    return key(index).address


def make_genesis(
    validators: Iterable[int] = (0, 1, 2, 3),
    accounts: Iterable[tuple[int, int]] = ((10, 1_000 * MICRO), (11, 1_000 * MICRO)),
    params: Params = TEST_PARAMS,
    self_bond: int = 1_000 * MICRO,
    commission_rate: int = 100_000_000,
    algorithm: Algorithm = Algorithm.ED25519,
) -> Genesis:
    """Validators and accounts are key indexes; validators also get a funded account."""
    validator_ids = tuple(validators)
    return Genesis(
        chain_id=CHAIN_ID,
        genesis_time_ms=1_700_000_000_000,
        genesis_randomness=bytes(range(64)),
        validators=tuple(
            GenesisValidator(
                public_key=key(i, algorithm).public_key,
                self_bond=self_bond,
                commission_rate=commission_rate,
                max_commission_rate=500_000_000,
                max_commission_change_rate=100_000_000,
            )
            for i in validator_ids
        ),
        accounts=tuple(
            [GenesisAccount(key(i, algorithm).address, 100 * MICRO) for i in validator_ids]
            + [GenesisAccount(key(i, algorithm).address, balance) for i, balance in accounts]
        ),
        qrng_sources=(QrngSource("qrng-0", key(90).public_key, True),),
        params=params,
    )


class Chain:
    """Drives a ledger block by block, like consensus would."""

    def __init__(self, genesis: Genesis, algorithm: Algorithm = Algorithm.ED25519) -> None:
        self.app = LedgerApp()
        self.state: LedgerState = genesis_state(genesis)
        self.algorithm = algorithm
        self.last_set: ValidatorSet | None = None  # set that governed the last height
        self.pending: dict[bytes, int] = {}  # next nonce per sender within the open block
        self.requests: list[FinalizeBlockRequest] = []  # every block applied, in order
        self.responses: list[FinalizeBlockResponse] = []

    def tx(self, sender: int, body: TxBody, fee: int = FEE, nonce: int | None = None) -> bytes:
        signer = key(sender, self.algorithm)
        if nonce is None:
            nonce = self.pending.get(signer.address, next_nonce(self.state, signer.address))
            self.pending[signer.address] = nonce + 1
        return encode_signed_tx(sign_tx(signer, CHAIN_ID, nonce, fee, body))

    def request(
        self,
        txs: Iterable[bytes] = (),
        absent: Iterable[bytes] = (),
        misbehavior: Iterable[Misbehavior] = (),
    ) -> FinalizeBlockRequest:
        height = self.state.height + 1
        missing = set(absent)
        last_commit = (
            ()
            if self.last_set is None
            else tuple(
                VoteInfo(v.address, v.power, v.address not in missing)
                for v in self.last_set.validators
            )
        )
        return FinalizeBlockRequest(
            chain_id=CHAIN_ID,
            height=height,
            time_ms=self.state.time_ms + 5_000,
            proposer_address=self.app.validator_set(self.state, height).validators[0].address,
            txs=tuple(txs),
            last_commit=last_commit,
            misbehavior=tuple(misbehavior),
            randomness=bytes(64),
        )

    def apply(self, request: FinalizeBlockRequest) -> FinalizeBlockResponse:
        governing = self.app.validator_set(self.state, request.height)
        self.state, response = self.app.finalize_block(self.state, request)
        self.last_set = governing
        self.pending.clear()
        self.requests.append(request)
        self.responses.append(response)
        return response

    def block(
        self,
        txs: Iterable[bytes] = (),
        absent: Iterable[bytes] = (),
        misbehavior: Iterable[Misbehavior] = (),
    ) -> FinalizeBlockResponse:
        return self.apply(self.request(txs, absent, misbehavior))

    def blocks(self, count: int, absent: Iterable[bytes] = ()) -> None:
        missing = tuple(absent)
        for _ in range(count):
            self.block(absent=missing)


def with_params(genesis: Genesis, **changes: int | bytes) -> Genesis:
    return dataclasses.replace(genesis, params=genesis.params.with_changes(changes.items()))


def test_chain_driver_produces_increasing_heights() -> None:
    chain = Chain(make_genesis())
    chain.blocks(3)
    assert chain.state.height == 3
    assert [len(r.app_hash) for r in chain.responses] == [32, 32, 32]
