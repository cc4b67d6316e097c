"""The state hash packs rewards and signing infos in one go (``state._write_rewards``,
``state._write_signing_info``): the bytes must be exactly the field-by-field canonical encoding
they replaced, for every value, and refuse what it refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.canonical import CanonicalEncodingError, CanonicalWriter
from services.ledger.core.codec import write_big_uint
from services.ledger.core.state import (
    SigningInfo,
    ValidatorRewards,
    _rewards_item,
    _signing_info_item,
    _write_rewards,
    _write_signing_info,
)

U64 = st.integers(min_value=0, max_value=2**64 - 1)
BIG = st.one_of(U64, st.integers(min_value=0, max_value=2**600))
ADDRESS = st.binary(min_size=20, max_size=20)


def fields_rewards(address: bytes, r: ValidatorRewards) -> bytes:
    w = CanonicalWriter.fragment().raw(address, 20)
    write_big_uint(w, r.ratio)
    write_big_uint(w, r.carry)
    return w.u64(r.outstanding).u64(r.commission).finish()


def fields_signing_info(address: bytes, info: SigningInfo) -> bytes:
    w = CanonicalWriter.fragment().raw(address, 20)
    w.u64(info.window).u64(info.start_height).u64(info.index_offset)
    write_big_uint(w, info.missed_bitmap)
    return w.u64(info.missed_count).finish()


def packed(write, address, value) -> bytes:  # type: ignore[no-untyped-def]
    w = CanonicalWriter.fragment()
    write(w, address, value)
    return w.finish()


@given(ADDRESS, BIG, BIG, U64, U64)
def test_rewards_pack_to_the_field_encoding(address: bytes, ratio: int, carry: int,
                                            outstanding: int, commission: int) -> None:
    rewards = ValidatorRewards(ratio, carry, outstanding, commission)
    assert packed(_write_rewards, address, rewards) == fields_rewards(address, rewards)
    assert _rewards_item(address, rewards) == fields_rewards(address, rewards)


@given(ADDRESS, U64, U64, U64, BIG, U64)
def test_signing_infos_pack_to_the_field_encoding(address: bytes, window: int, start: int,
                                                  offset: int, bitmap: int, count: int) -> None:
    info = SigningInfo(window, start, offset, bitmap, count)
    assert packed(_write_signing_info, address, info) == fields_signing_info(address, info)
    assert _signing_info_item(address, info) == fields_signing_info(address, info)


@pytest.mark.parametrize(("address", "rewards", "info"), [
    (b"\x01" * 19, ValidatorRewards(), SigningInfo(10, 1)),  # short address
    (b"\x01" * 20, ValidatorRewards(outstanding=2**64), SigningInfo(2**64, 1)),  # too wide
    (b"\x01" * 20, ValidatorRewards(ratio=-1), SigningInfo(10, 1, missed_bitmap=-1)),
    (b"\x01" * 20, ValidatorRewards(commission=-1), SigningInfo(10, -1)),
])
def test_what_the_fields_refuse_the_packing_refuses(address: bytes, rewards: ValidatorRewards,
                                                     info: SigningInfo) -> None:
    for write, fields, value in ((_write_rewards, fields_rewards, rewards),
                                 (_write_signing_info, fields_signing_info, info)):
        with pytest.raises(CanonicalEncodingError):
            fields(address, value)
        with pytest.raises(CanonicalEncodingError):
            packed(write, address, value)
