"""Issue 16, items 8, 9 and 18: one source-id rule for the ledger and the registry, parameters
that pass validation can never make a block unencodable, one encoding per algorithm name."""

from __future__ import annotations

import base64
import dataclasses

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from protocol.canonical import CanonicalWriter
from protocol.entropy.registry import RegistryError, SourceRegistryEntry, source_id_problem
from protocol.keys import Algorithm, KeyFormatError, PublicKey, UnknownAlgorithmError
from services.ledger.core import (
    MICRO,
    ParameterChange,
    ParameterChangeProposal,
    QrngSource,
    SubmitProposal,
    Undelegate,
    VoteOption,
    VoteProposal,
    decode_signed_tx,
    encode_signed_tx,
    sign_tx,
)
from services.ledger.core import errors as E
from services.ledger.core.chain_spec import source_registry
from services.ledger.core.params import U64_MAX
from services.ledger.core.queries import proposal, supply_held
from services.ledger.core.state import ProposalStatus
from services.ledger.core.tx import RegisterQrngSource, Transfer
from tests.unit.test_ledger_fixtures import (
    CHAIN_ID,
    TEST_PARAMS,
    Chain,
    address,
    key,
    make_genesis,
    with_params,
)

PUBLIC = key(90).public_key


@given(st.text(max_size=80) | st.from_regex(r"[A-Za-z0-9._:/ -]{1,70}", fullmatch=True))
def test_ledger_and_registry_share_one_source_id_rule(source_id: str) -> None:
    """Item 8: an id the ledger admits is an id every validator's registry takes, and the
    other way round (before, ``qrng/eu-1`` passed the ledger and stopped every validator)."""
    try:
        QrngSource(source_id, PUBLIC, True).check()
        ledger_ok = True
    except E.InvalidTxError:
        ledger_ok = False
    try:
        SourceRegistryEntry(source_id, PUBLIC, True)
        registry_ok = True
    except RegistryError:
        registry_ok = False
    assert ledger_ok == registry_ok == (source_id_problem(source_id) is None)


def test_a_registered_source_id_always_reaches_the_registry() -> None:
    chain = Chain(with_params(make_genesis(), qrng_registry_authority=address(11)))
    slash = QrngSource("qrng/eu-1", key(96).public_key, True)
    chain.block([chain.tx(11, RegisterQrngSource(slash), nonce=0)])
    assert chain.responses[-1].tx_results[0].code == E.InvalidTxError.code  # no fee, no nonce
    dotted = QrngSource("qrng.eu-1", key(97).public_key, True)
    chain.block([chain.tx(11, RegisterQrngSource(dotted), nonce=0)])
    assert chain.responses[-1].tx_results[0].code == 0
    assert set(source_registry(chain.state)) == {"qrng-0", "qrng.eu-1"}


def _governed(change: ParameterChange) -> Chain:
    chain = Chain(make_genesis())
    chain.block()
    content = ParameterChangeProposal((change,))
    chain.block([chain.tx(10, SubmitProposal(content, 10 * MICRO))])
    chain.block([chain.tx(v, VoteProposal(1, VoteOption.YES)) for v in range(4)])
    while chain.state.height < 2 + TEST_PARAMS.voting_period_blocks:
        chain.block()
    return chain


def test_the_largest_block_reward_no_longer_halts_the_chain() -> None:
    """Item 9: governance sets block_reward = 2^64-1; issuance stops where the total supply
    would leave its u64 field, and blocks keep coming."""
    chain = _governed(ParameterChange("block_reward", U64_MAX))
    assert proposal(chain.state, 1).status is ProposalStatus.PASSED  # type: ignore[union-attr]
    for _ in range(5):
        chain.block()
    supply = chain.state.supply
    assert supply.genesis + supply.issued == U64_MAX
    assert supply_held(chain.state) == supply.expected


@pytest.mark.parametrize("name", ["downtime_jail_blocks", "unbonding_period_blocks",
                                  "voting_period_blocks", "signed_blocks_window",
                                  "max_evidence_age_blocks", "max_validators"])
def test_values_outside_the_encodable_range_are_refused_at_submission(name: str) -> None:
    chain = Chain(make_genesis())
    content = ParameterChangeProposal((ParameterChange(name, U64_MAX),))
    chain.block([chain.tx(10, SubmitProposal(content, 10 * MICRO))])
    assert chain.responses[-1].tx_results[0].code == E.InvalidProposalError.code


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_any_valid_parameters_keep_every_block_encodable(data: st.DataObject) -> None:
    """Whatever parameters pass validation, blocks that issue rewards, jail, unbond and open
    a proposal stay encodable (the state hash is computed after every block)."""
    u64 = st.integers(min_value=0, max_value=U64_MAX)
    changes = {name: data.draw(u64 | st.integers(min_value=1, max_value=1_000), name)
               for name in ("block_reward", "unbonding_period_blocks", "downtime_jail_blocks",
                            "voting_period_blocks", "min_tx_fee", "fee_per_byte",
                            "signed_blocks_window", "min_deposit")}
    try:
        params = dataclasses.replace(TEST_PARAMS, **changes).validate()
    except E.InvalidParamsError:
        assume(False)
        return
    assume(params.min_tx_fee + params.fee_per_byte * 2_000 <= 500 * MICRO)
    assume(params.min_deposit <= 100 * MICRO)
    chain = Chain(make_genesis(params=params))
    fee = params.min_tx_fee + params.fee_per_byte * 2_000
    chain.block([chain.tx(0, Undelegate(address(0), MICRO), fee=fee),
                 chain.tx(10, SubmitProposal(ParameterChangeProposal(
                     (ParameterChange("block_reward", 1),)), params.min_deposit), fee=fee)])
    for _ in range(3):
        chain.block(absent=(address(3),))
    assert supply_held(chain.state) == chain.state.supply.expected


@given(st.sampled_from(list(Algorithm)), st.data())
def test_one_encoding_per_algorithm_name(algorithm: Algorithm, data: st.DataObject) -> None:
    """Item 18: only the lower-case name decodes, in a key and in a transaction."""
    name = algorithm.value
    variant = "".join(data.draw(st.sampled_from([c.lower(), c.upper()]), "case") for c in name)
    assume(variant != name)
    with pytest.raises(UnknownAlgorithmError):
        Algorithm.parse(variant)
    assert Algorithm.from_option(f" {variant} ") is algorithm  # a CLI option may shout
    signer = key(10, algorithm)
    raw = encode_signed_tx(sign_tx(signer, CHAIN_ID, 0, 1_000, Transfer(address(11), 1)))
    canonical_key = CanonicalWriter("PublicKey").text(name).bytes(signer.public_key.raw).finish()
    shouting = CanonicalWriter("PublicKey").text(variant).bytes(signer.public_key.raw).finish()
    assert canonical_key in raw
    with pytest.raises(E.TxDecodeError):
        decode_signed_tx(raw.replace(canonical_key, shouting))
    text = signer.public_key.to_text()
    with pytest.raises(UnknownAlgorithmError):
        PublicKey.from_text(variant + text[len(name):])


def test_public_key_text_has_one_spelling() -> None:
    key_text = key(5).public_key.to_text()  # Ed25519: 32 bytes, one padding character
    name, _, data = key_text.partition(":")
    raw = base64.b64decode(data)
    last = data[-2]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    sibling = alphabet[alphabet.index(last) ^ 1]  # same 6 bits minus the unused low ones
    other = f"{name}:{data[:-2]}{sibling}{data[-1]}"
    if base64.b64decode(other.partition(":")[2]) == raw:
        with pytest.raises(KeyFormatError):
            PublicKey.from_text(other)
    assert PublicKey.from_text(key_text).raw == raw
