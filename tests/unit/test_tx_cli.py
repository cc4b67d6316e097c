"""Command-line amounts and rates convert exactly to ledger integers, or are refused."""

from __future__ import annotations

import pytest

from services.ledger.tx_cli import AmountError, parse_address, parse_percent, parse_tokens


@pytest.mark.parametrize(("text", "micro"), [("1", 1_000_000), ("1.5", 1_500_000),
                                             ("0.000001", 1), ("12345.678901", 12_345_678_901)])
def test_tokens_to_micro_units(text: str, micro: int) -> None:
    assert parse_tokens(text) == micro


@pytest.mark.parametrize("text", ["0", "-1", "0.0000001", "abc", "1e-9", "nan"])
def test_bad_token_amounts_are_refused(text: str) -> None:
    with pytest.raises(AmountError):
        parse_tokens(text)


def test_percent_to_parts_per_billion() -> None:
    assert parse_percent("5") == 50_000_000
    assert parse_percent("100") == 1_000_000_000
    assert parse_percent("0.0000001") == 1
    for bad in ("101", "-1", "x", "0.00000001"):
        with pytest.raises(AmountError):
            parse_percent(bad)


def test_address_must_be_20_bytes_of_hex() -> None:
    assert parse_address("ab" * 20) == bytes([0xAB]) * 20
    with pytest.raises(Exception, match="20 bytes"):
        parse_address("ab" * 19)
    with pytest.raises(Exception, match="hex"):
        parse_address("zz" * 20)
