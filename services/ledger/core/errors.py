"""The ledger's error hierarchy; every rejected transaction is one of these, with a stable code.

Two families, and the difference matters for money:

- ``AnteError`` (codes 1-19): the transaction is not admissible at all (malformed, wrong chain,
  bad signature, nonce reuse or gap, fee too low or unaffordable). Nothing changes: no fee, no
  nonce increment. A block proposer should not include such a transaction.
- ``BodyError`` (codes 20+): the transaction is admissible but its body fails against the state
  (insufficient funds, unknown validator, ...). As in the Cosmos SDK, the fee is charged and the
  nonce consumed (the sender made the network do the work, and charging prevents free spam
  through deliberately failing transactions); every other effect of the body is discarded.

Codes are part of the public contract (``TxResult.code``); never renumber them.
"""

from __future__ import annotations

from protocol.errors import InputError


class LedgerError(InputError):
    """Base of every ledger error."""

    code: int = 99


class AnteError(LedgerError):
    """Inadmissible transaction: rejected with no state change and no fee."""


class BodyError(LedgerError):
    """Admissible transaction whose body failed: fee charged, nonce consumed, body discarded."""


# --- ante errors -------------------------------------------------------------------------


class TxDecodeError(AnteError):
    """The bytes are not a canonical signed transaction."""

    code = 1


class TxTooLargeError(AnteError):
    """The encoded transaction exceeds the ``max_tx_bytes`` parameter."""

    code = 2


class WrongChainError(AnteError):
    """The transaction names another chain id."""

    code = 3


class BadSignatureError(AnteError):
    """The signature does not verify against the sender's public key."""

    code = 4


class InvalidTxError(AnteError):
    """A field is out of range regardless of state (zero amount, rate above 100%, ...)."""

    code = 5


class FeeTooLowError(AnteError):
    """The fee is below ``min_tx_fee + fee_per_byte * size``."""

    code = 6


class NonceReusedError(AnteError):
    """The nonce was already used by this sender (replay)."""

    code = 7


class NonceGapError(AnteError):
    """The nonce is ahead of the sender's next nonce."""

    code = 8


class InsufficientFeeFundsError(AnteError):
    """The sender's balance cannot pay the fee."""

    code = 9


# --- body errors -------------------------------------------------------------------------


class InsufficientFundsError(BodyError):
    """The balance (after the fee) is below the amount the body moves."""

    code = 20


class BelowMinimumSelfBondError(BodyError):
    """A validator's self-bond would be below ``min_self_bond``."""

    code = 21


class UnknownValidatorError(BodyError):
    """No validator has this address."""

    code = 22


class ValidatorExistsError(BodyError):
    """The sender already operates a validator."""

    code = 23


class ValidatorTombstonedError(BodyError):
    """The validator double-signed; it can never be unjailed or delegated to."""

    code = 24


class NotJailedError(BodyError):
    """Unjail for a validator that is not jailed."""

    code = 25


class StillJailedError(BodyError):
    """Unjail before the jail period is over."""

    code = 26


class CommissionChangeError(BodyError):
    """A commission edit breaks the maximum rate, the maximum change, or the once-a-day rule."""

    code = 27


class InsufficientDelegationError(BodyError):
    """Undelegating more than the delegation is worth, or no delegation at all."""

    code = 28


class TooManyUnbondingEntriesError(BodyError):
    """The (delegator, validator) pair already has ``max_unbonding_entries`` entries."""

    code = 29


class InvalidExchangeRateError(BodyError):
    """The validator was slashed to zero tokens while shares remain; delegation is refused."""

    code = 30


class AmountTooSmallError(BodyError):
    """The amount buys zero delegation shares."""

    code = 31


class UnknownProposalError(BodyError):
    """No proposal has this id."""

    code = 32


class VotingClosedError(BodyError):
    """The proposal is not in its voting period."""

    code = 33


class DepositTooLowError(BodyError):
    """The proposal deposit is below ``min_deposit``."""

    code = 34


class InvalidProposalError(BodyError):
    """The proposal content cannot be applied (unknown parameter, invalid value, ...)."""

    code = 35


class UnauthorizedError(BodyError):
    """The sender is not allowed to do this (e.g. not the QRNG registry authority)."""

    code = 36


class SourceExistsError(BodyError):
    """A QRNG source with this id is already registered."""

    code = 37


# --- errors that are not about a transaction ---------------------------------------------


class InvalidParamsError(LedgerError):
    """A parameter set violates a documented bound."""

    code = 90


class BlockSequenceError(LedgerError):
    """``finalize_block`` was called for a height or chain this state cannot take next."""

    code = 91


class UnknownHeightError(LedgerError):
    """The validator set is asked for a height the state does not know yet (or any more)."""

    code = 92
