"""Signing keys: ML-DSA-65 and Ed25519 sign/verify, key files, public-key text form."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from protocol.keys import Algorithm, KeyFormatError, PublicKey, SigningKey, UnknownAlgorithmError


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_sign_verify_and_tamper(algorithm: Algorithm) -> None:
    key = SigningKey.generate(algorithm)
    signature = key.sign(b"message")
    assert key.public_key.verify(b"message", signature)
    assert not key.public_key.verify(b"messagE", signature)
    assert not key.public_key.verify(b"message", signature[:-1] + bytes([signature[-1] ^ 1]))
    assert not key.public_key.verify(b"message", b"")
    other = SigningKey.generate(algorithm)
    assert not other.public_key.verify(b"message", signature)


def test_seeded_keys_are_deterministic() -> None:
    a = SigningKey.from_seed(bytes(range(32)))
    b = SigningKey.from_seed(bytes(range(32)))
    assert a.public_key == b.public_key
    assert len(a.address) == 20


def test_key_file_round_trip_mode_and_no_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "v.key"
    key = SigningKey.generate()
    key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = SigningKey.load(path)
    assert loaded.public_key == key.public_key
    assert key.public_key.verify(b"x", loaded.sign(b"x"))
    with pytest.raises(KeyFormatError, match="already exists"):  # one clear line in the CLI
        key.save(path)
    assert SigningKey.load(path).public_key == key.public_key  # untouched


def test_bad_key_files_give_typed_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("{not json")
    with pytest.raises(KeyFormatError):
        SigningKey.load(bad)
    with pytest.raises(KeyFormatError):
        SigningKey.load(tmp_path / "missing.key")


def test_public_key_text_round_trip_and_errors() -> None:
    key = SigningKey.generate(Algorithm.ED25519).public_key
    assert PublicKey.from_text(key.to_text()) == key
    with pytest.raises(KeyFormatError):
        PublicKey.from_text("no-colon")
    with pytest.raises(UnknownAlgorithmError):
        PublicKey.from_text("rsa:AAAA")
    with pytest.raises(KeyFormatError):
        PublicKey.from_text("ed25519:AAAA")  # wrong length
    with pytest.raises(KeyFormatError):
        PublicKey.from_text("ed25519:!!!")
