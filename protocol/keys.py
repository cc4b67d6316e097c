"""Signing keys: ML-DSA-65 (FIPS 204, the default) and Ed25519, through ``cryptography``.

A key file is JSON with the algorithm, the private seed and the public key, written with mode
0600. A public key's text form is ``<algorithm>:<base64>``; its *address* is the first 20 bytes of
the SHA-256 of its canonical encoding, shown as hex. Signatures are over the caller's canonical
bytes (see ``protocol.canonical``), which already carry a domain-separation tag.
"""

from __future__ import annotations

import base64
import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from protocol.canonical import CanonicalWriter
from protocol.errors import InputError


class KeyError_(InputError):
    """Base for key problems (kept distinct from the builtin ``KeyError``)."""


class UnknownAlgorithmError(KeyError_):
    """The algorithm name is not one QuStream supports."""


class KeyFormatError(KeyError_):
    """A key file or public-key string is malformed, or a key file cannot be written."""


class Algorithm(StrEnum):
    ML_DSA_65 = "ml-dsa-65"
    ED25519 = "ed25519"

    @classmethod
    def parse(cls, name: str) -> Algorithm:
        """The algorithm named exactly (lower case) as it is encoded: decoding accepts one
        spelling only, so a key, and every transaction that carries it, has one encoding and
        one hash. Human input goes through ``from_option``."""
        try:
            return cls(name)
        except ValueError as exc:
            raise UnknownAlgorithmError(
                f"unknown signature algorithm {name!r}; use one of "
                f"{', '.join(a.value for a in cls)}"
            ) from exc

    @classmethod
    def from_option(cls, name: str) -> Algorithm:
        """A command-line option: case and surrounding spaces do not matter there."""
        return cls.parse(name.strip().lower())


ADDRESS_SIZE = 20  # bytes of a key holder's address
_PUBLIC_SIZES = {Algorithm.ML_DSA_65: 1952, Algorithm.ED25519: 32}
SIGNATURE_SIZES = {Algorithm.ML_DSA_65: 3309, Algorithm.ED25519: 64}


@dataclass(frozen=True, slots=True)
class PublicKey:
    algorithm: Algorithm
    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != _PUBLIC_SIZES[self.algorithm]:
            raise KeyFormatError(
                f"{self.algorithm} public key must be {_PUBLIC_SIZES[self.algorithm]} bytes, "
                f"got {len(self.raw)}"
            )

    def canonical(self) -> bytes:
        return CanonicalWriter("PublicKey").text(self.algorithm.value).bytes(self.raw).finish()

    @property
    def address(self) -> bytes:
        """20-byte identifier of the key holder (validator, QRNG source, account)."""
        return _address(self.algorithm, self.raw)

    @property
    def address_hex(self) -> str:
        return self.address.hex()

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True when ``signature`` is this key's signature over ``message``; never raises."""
        try:
            _load_public(self)(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True

    def to_text(self) -> str:
        return f"{self.algorithm.value}:{base64.b64encode(self.raw).decode('ascii')}"

    @classmethod
    def from_text(cls, text: str) -> PublicKey:
        name, sep, data = text.partition(":")
        if not sep:
            raise KeyFormatError("a public key reads '<algorithm>:<base64>'")
        try:
            raw = base64.b64decode(data, validate=True)
        except ValueError as exc:
            raise KeyFormatError(f"public key is not valid base64: {exc}") from exc
        key = cls(Algorithm.parse(name), raw)
        if key.to_text() != text:  # e.g. non-zero padding bits: another spelling of one key
            raise KeyFormatError("public key text is not in its canonical form")
        return key


@functools.lru_cache(maxsize=4096)
def _address(algorithm: Algorithm, raw: bytes) -> bytes:
    # Cached: validator sets check every member's address against its key whenever they are
    # rebuilt (once per block in the ledger), always for the same few keys.
    digest: bytes = CanonicalWriter("PublicKey").text(algorithm.value).bytes(raw).digest()
    return digest[:ADDRESS_SIZE]


# Verifiers are cached per key: parsing an ML-DSA public key is not free and a validator set
# verifies the same few keys over and over.
_VERIFIERS: dict[tuple[Algorithm, bytes], object] = {}


def _load_public(key: PublicKey):  # type: ignore[no-untyped-def]
    cache_key = (key.algorithm, key.raw)
    verifier = _VERIFIERS.get(cache_key)
    if verifier is None:
        if key.algorithm is Algorithm.ML_DSA_65:
            verifier = mldsa.MLDSA65PublicKey.from_public_bytes(key.raw).verify
        else:
            verifier = ed25519.Ed25519PublicKey.from_public_bytes(key.raw).verify
        if len(_VERIFIERS) > 4096:
            _VERIFIERS.clear()
        _VERIFIERS[cache_key] = verifier
    return verifier


class SigningKey:
    """A private signing key. Construct with ``generate``, ``from_seed`` or ``load``."""

    __slots__ = ("_private", "algorithm", "public_key", "seed")

    def __init__(self, algorithm: Algorithm, seed: bytes) -> None:
        self.algorithm = algorithm
        self.seed = seed
        try:
            if algorithm is Algorithm.ML_DSA_65:
                private: mldsa.MLDSA65PrivateKey | ed25519.Ed25519PrivateKey = (
                    mldsa.MLDSA65PrivateKey.from_seed_bytes(seed)
                )
            else:
                private = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        except ValueError as exc:
            raise KeyFormatError(f"bad {algorithm} private seed: {exc}") from exc
        self._private = private
        self.public_key = PublicKey(algorithm, private.public_key().public_bytes_raw())

    @classmethod
    def generate(cls, algorithm: Algorithm = Algorithm.ML_DSA_65) -> SigningKey:
        return cls(algorithm, os.urandom(32))

    @classmethod
    def from_seed(cls, seed: bytes, algorithm: Algorithm = Algorithm.ML_DSA_65) -> SigningKey:
        """Deterministic key from a 32-byte seed (tests, simulations, golden vectors)."""
        return cls(algorithm, seed)

    @property
    def address(self) -> bytes:
        return self.public_key.address

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def to_json(self) -> str:
        return json.dumps(
            {
                "algorithm": self.algorithm.value,
                "seed": base64.b64encode(self.seed).decode("ascii"),
                "public_key": self.public_key.to_text(),
                "address": self.public_key.address_hex,
            },
            indent=2,
        )

    def save(self, path: Path | str) -> None:
        """Write the key file with mode 0600, refusing to overwrite an existing key."""
        write_private_file(Path(path), self.to_json() + "\n", KeyFormatError, "key file",
                           "a key file is never overwritten: choose another file or move that "
                           "one away")

    @classmethod
    def load(cls, path: Path | str) -> SigningKey:
        try:
            data = json.loads(Path(path).read_text())
            key = cls(Algorithm.parse(data["algorithm"]), base64.b64decode(data["seed"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyFormatError(f"cannot load signing key from {path}: {exc}") from exc
        if "public_key" in data and data["public_key"] != key.public_key.to_text():
            raise KeyFormatError(f"{path}: public key does not match the private seed")
        return key


SignatureCheck = Callable[[PublicKey, bytes, bytes], bool]
"""Answers "is ``signature`` ``key``'s signature over ``message``?"; the audit and the
simulator replace the default with a cache or a process pool."""


def default_signature_check(key: PublicKey, message: bytes, signature: bytes) -> bool:
    return key.verify(message, signature)


def write_private_file(path: Path, text: str, error: type[InputError], what: str,
                       never_overwritten: str) -> None:
    """Create ``path`` (and its folder) with mode 0600 and write ``text``: a file of private
    keys, which is never overwritten. ``error`` says why it cannot be created: the file exists
    (the message goes on with ``never_overwritten``), or the system refused."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise error(f"{path} already exists; {never_overwritten}") from exc
    except OSError as exc:
        raise error(f"cannot write {what} {path}: {exc}") from exc
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
