"""The QuStream ledger: the application state machine behind consensus (pure, integer-only).

Modules: ``tx`` (transactions and their encoding), ``state`` (records, state hash), ``params``,
``staking``, ``distribution`` (rewards, F1), ``slashing``, ``governance``, ``execute`` (one
transaction), ``app`` (``LedgerApp``: one block), ``genesis``, ``queries``.
"""

from __future__ import annotations

from services.ledger.core.app import LedgerApp
from services.ledger.core.errors import AnteError, BodyError, LedgerError, TxDecodeError
from services.ledger.core.genesis import (
    Genesis,
    GenesisAccount,
    GenesisError,
    GenesisValidator,
    genesis_state,
)
from services.ledger.core.params import MICRO, RATE_ONE, Params
from services.ledger.core.state import LedgerState, state_hash
from services.ledger.core.tx import (
    CreateValidator,
    Delegate,
    EditValidator,
    ParameterChange,
    ParameterChangeProposal,
    PayForService,
    QrngRegistryProposal,
    QrngSource,
    RegisterQrngSource,
    ServiceKind,
    SignedTx,
    SubmitProposal,
    Transfer,
    Tx,
    TxBody,
    Undelegate,
    Unjail,
    VoteOption,
    VoteProposal,
    WithdrawRewards,
    decode_signed_tx,
    encode_signed_tx,
    sign_tx,
    tx_hash,
)

__all__ = [
    "MICRO",
    "RATE_ONE",
    "AnteError",
    "BodyError",
    "CreateValidator",
    "Delegate",
    "EditValidator",
    "Genesis",
    "GenesisAccount",
    "GenesisError",
    "GenesisValidator",
    "LedgerApp",
    "LedgerError",
    "LedgerState",
    "ParameterChange",
    "ParameterChangeProposal",
    "Params",
    "PayForService",
    "QrngRegistryProposal",
    "QrngSource",
    "RegisterQrngSource",
    "ServiceKind",
    "SignedTx",
    "SubmitProposal",
    "Transfer",
    "Tx",
    "TxBody",
    "TxDecodeError",
    "Undelegate",
    "Unjail",
    "VoteOption",
    "VoteProposal",
    "WithdrawRewards",
    "decode_signed_tx",
    "encode_signed_tx",
    "genesis_state",
    "sign_tx",
    "state_hash",
    "tx_hash",
]
