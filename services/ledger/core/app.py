"""``LedgerApp``: the ledger behind the consensus ``Application`` boundary.

``finalize_block`` for height H, step by step (each step a pure function of the state):

1. check the request continues this state (chain id, height = last height + 1);
2. distribution: issue the block reward and distribute it with H-1's fees to the signers of
   H-1 (``last_commit``);
3. slashing: liveness windows from ``last_commit`` (downtime slash + jail), then every
   ``misbehavior`` (double-sign slash + tombstone + jail forever);
4. transactions in block order (``execute.execute_tx``; rejected ones leave the state as it was,
   apart from the fee of a transaction whose body failed);
5. governance: close proposals whose voting period ends at H;
6. staking: pay out unbonding entries that complete at H;
7. validator set for H+2 = top N by power now (if nobody qualifies, the set of H+1 is kept so
   the chain cannot halt itself; jailed validators then recover through Unjail);
8. height, time, and the state hash.
"""

from __future__ import annotations

from protocol.app import FinalizeBlockRequest, FinalizeBlockResponse, TxResult
from protocol.entropy.registry import count_devices
from protocol.validators import ValidatorSet
from services.ledger.core import distribution, governance, slashing, staking
from services.ledger.core.errors import AnteError, BlockSequenceError, UnknownHeightError
from services.ledger.core.execute import admit, execute_tx
from services.ledger.core.snapshot import decode_ledger_state, encode_ledger_state
from services.ledger.core.state import LedgerState, evolve, state_hash
from services.ledger.core.tx import SignatureCheck


class LedgerApp:
    """Implements ``protocol.app.Application[LedgerState]``; holds no state.

    ``signature_check`` verifies transaction signatures in place of ``PublicKey.verify``; it
    must give the same answers (the audit passes one that collects results computed ahead on
    other cores)."""

    def __init__(self, signature_check: SignatureCheck | None = None) -> None:
        self.signature_check = signature_check

    def check_tx(self, state: LedgerState, tx: bytes) -> TxResult:
        """Mempool admission against ``state``: the ante checks only (size, decoding, chain id,
        signature, field ranges, minimum fee, nonce == next nonce, balance covers the fee).

        The body is not executed (as in CometBFT/Cosmos CheckTx); a body failure shows up in
        ``finalize_block`` and costs the fee. Callers that admit several transactions from one
        sender in a row should check against the state after the previous ones (``admit``).
        """
        try:
            admitted = admit(state, tx, self.signature_check)
        except AnteError as exc:
            return TxResult(code=exc.code, log=f"{type(exc).__name__}: {exc}")
        return TxResult(code=0, log="ok", fee_charged=admitted.tx.fee)

    def finalize_block(
        self, state: LedgerState, request: FinalizeBlockRequest
    ) -> tuple[LedgerState, FinalizeBlockResponse]:
        """Apply one decided block (steps in the module docstring). Pure and deterministic.

        Raises ``BlockSequenceError`` if the request is not the next block of this chain.
        """
        if request.chain_id != state.chain_id:
            raise BlockSequenceError(
                f"block for chain {request.chain_id!r}, state is {state.chain_id!r}"
            )
        if request.height != state.height + 1:
            raise BlockSequenceError(
                f"block at height {request.height}, state expects {state.height + 1}"
            )
        height = request.height
        before = state
        state = distribution.allocate_block_rewards(state, request.last_commit)
        state = slashing.track_liveness(state, request.last_commit, height)
        for offence in request.misbehavior:
            state = slashing.punish_misbehavior(state, offence, height)
        results: list[TxResult] = []
        for tx in request.txs:
            state, result = execute_tx(state, tx, height, self.signature_check)
            results.append(result)
        state = governance.end_block(state, height)
        state = staking.mature_unbondings(state, height)
        if state.validators is before.validators and state.params is before.params:
            # Nothing the set depends on changed in this block, so step 7 gives the set it gave
            # for the previous block (kept as the object, with its cached hash).
            next_set = state.validator_sets[1]
        else:
            next_set = staking.compute_validator_set(state) or state.validator_sets[1]
            if next_set == state.validator_sets[1]:
                next_set = state.validator_sets[1]  # the same set: keep the object and its hash
        state = evolve(
            state,
            height=height,
            time_ms=request.time_ms,
            validator_sets=(state.validator_sets[1], next_set),
        )
        return state, FinalizeBlockResponse(tuple(results), state_hash(state))

    def validator_set(self, state: LedgerState, height: int) -> ValidatorSet:
        """The set governing ``height``; defined for ``state.height + 1`` and ``+ 2`` only."""
        offset = height - state.height
        if offset not in (1, 2):
            raise UnknownHeightError(
                f"state at height {state.height} knows the sets of heights "
                f"{state.height + 1} and {state.height + 2}, not {height}"
            )
        return state.validator_sets[offset - 1]

    def state_hash(self, state: LedgerState) -> bytes:
        return state_hash(state)

    def registered_sources(self, state: LedgerState) -> int:
        return count_devices(state.qrng_sources)  # lanes of one device count once

    # ``protocol.snapshot.StateCodec``: the state in a snapshot
    def encode_state(self, state: LedgerState) -> bytes:
        return encode_ledger_state(state)

    def decode_state(self, data: bytes) -> LedgerState:
        return decode_ledger_state(data)
