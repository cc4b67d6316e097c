"""Entropy sources behind one small interface, and the ``--source`` spec parser.

``Source.read(size)`` returns up to ``size`` raw bytes, or ``b""`` when nothing arrived within
the source's poll interval (a stall; the caller keeps asking). ``simulated`` is True only for
output that is not from quantum hardware. Specs:

- ``sim`` — simulator (chunks flagged simulated); ``sim,rate=2MiB`` paces it to a rate;
- ``file:/dev/hwrng`` — a character device or file (vendor device, kernel hwrng);
- ``http://host:port/path`` or ``https://...`` — a network appliance streaming bytes; the auth
  header comes from ``--auth-header`` or ``QUSTREAM_QRNG_AUTH_HEADER`` (``Name: value``);
- ``fault:<mode>[,key=value...]`` — the simulator with an injected fault, for tests and drills:
  modes ``stuck`` (value=V), ``biased`` (probability P of emitting value V), ``stall``
  (no data), ``burst`` (repeats a byte ``length`` times); keys ``after`` (bytes before the fault
  starts, default 0), ``length`` (bytes the fault lasts, default forever; ``stall``: seconds),
  ``value``, ``p``, ``every`` (``burst``: bytes between bursts).

Lanes (``qustream qrng run --lanes K``): each lane process opens the source itself, and lanes
must never publish the same bytes. The simulator and fault sources draw independently in every
process; a character device (``/dev/hwrng``, a vendor device) hands every read fresh bytes, so
each lane simply reads it; a *regular file* is striped (``Stripe``): lane k of K reads its
blocks k, k+K, k+2K, ... of the chunk size, so the lanes' data is disjoint. An HTTP appliance is
opened once per lane: it must serve every connection its own bytes.
"""

from __future__ import annotations

import http.client
import os
import stat
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from protocol.errors import InputError, OperationError


class SourceError(OperationError):
    """A source cannot be opened or read; the message names the source."""


class SourceSpecError(InputError):
    """A ``--source`` spec that does not parse."""


class Source(Protocol):
    simulated: bool

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; ``b""`` when the source is stalled for now."""
        ...

    def describe(self) -> str:
        ...

    def close(self) -> None:
        ...


class SimulatorSource:
    """Random bytes from a CSPRNG seeded by the OS: AES-256-CTR keyed from ``os.urandom``.

    Why not ``os.urandom`` itself: the kernel's generator delivers ~220 MB/s here, below a
    Quantum Dice device's line rate; AES-CTR (AES-NI) gives several GB/s and is the core of
    NIST's CTR_DRBG. The key is replaced from the OS every ``rekey_bytes``.
    """

    simulated = True

    def __init__(self, rekey_bytes: int = 1 << 30) -> None:
        self._rekey_bytes = rekey_bytes
        self._since_rekey = 0
        self._zeros = b""
        self._rekey()

    def _rekey(self) -> None:
        self._cipher = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16)))
        self._encryptor = self._cipher.encryptor()
        self._since_rekey = 0

    def read(self, size: int) -> bytes:
        if self._since_rekey >= self._rekey_bytes:
            self._rekey()
        if len(self._zeros) < size:
            self._zeros = bytes(size)
        self._since_rekey += size
        return self._encryptor.update(memoryview(self._zeros)[:size])

    def describe(self) -> str:
        return "simulator (AES-256-CTR keyed by the OS CSPRNG)"

    def close(self) -> None:
        pass


class PacedSource:
    """Delivers another source's bytes at no more than ``bytes_per_s``.

    For demos and tests that stand in for slower hardware (a Quantis PCIe card gives ~2 MB/s):
    a simulator at full speed would flood a laptop's broker. Reads block until the schedule
    allows them, so the ingest pipeline sees a steady device, not a stall.
    """

    def __init__(self, inner: Source, bytes_per_s: int,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if bytes_per_s <= 0:
            raise SourceSpecError(f"rate must be positive, got {bytes_per_s}")
        self.simulated = inner.simulated
        self._inner = inner
        self._rate = bytes_per_s
        self._clock = clock
        self._sleep = sleep
        self._start = clock()
        self._delivered = 0

    def read(self, size: int) -> bytes:
        data = self._inner.read(size)
        self._delivered += len(data)
        delay = self._start + self._delivered / self._rate - self._clock()
        if delay > 0:
            self._sleep(delay)
        return data

    def describe(self) -> str:
        return f"{self._inner.describe()} paced to {self._rate} bytes/s"

    def close(self) -> None:
        self._inner.close()


@dataclass(frozen=True, slots=True)
class Stripe:
    """Lane ``lane`` of ``lanes`` reading a regular file: its blocks are the file's blocks
    ``lane, lane + lanes, lane + 2 * lanes, ...`` of ``block_size`` bytes."""

    lane: int
    lanes: int
    block_size: int

    def __post_init__(self) -> None:
        if not 0 <= self.lane < self.lanes or self.block_size <= 0:
            raise SourceSpecError(f"lane {self.lane} of {self.lanes} with blocks of "
                                  f"{self.block_size} bytes is not a stripe")

    def locate(self, position: int) -> tuple[int, int]:
        """The file offset of this lane's byte ``position``, and how many of the lane's bytes
        follow it contiguously (to the end of its block)."""
        block, within = divmod(position, self.block_size)
        return (block * self.lanes + self.lane) * self.block_size + within, (
            self.block_size - within)


class DeviceFileSource:
    """A character device or a regular file, read unbuffered in whole requests. With a
    ``stripe``, a regular file is read only in that lane's blocks (a device is read whole: every
    read gives fresh bytes)."""

    simulated = False

    def __init__(self, path: str, stripe: Stripe | None = None) -> None:
        self._path = path
        try:
            self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
            regular = stat.S_ISREG(os.fstat(self._file.fileno()).st_mode)
        except OSError as exc:
            raise SourceError(f"cannot open entropy device {path}: {exc}") from exc
        self._stripe = stripe if regular and stripe is not None and stripe.lanes > 1 else None
        self._position = 0

    def read(self, size: int) -> bytes:
        try:
            if self._stripe is None:
                data = self._file.read(size)
            else:
                offset, room = self._stripe.locate(self._position)
                data = os.pread(self._file.fileno(), min(size, room), offset)
                self._position += len(data)
        except OSError as exc:
            raise SourceError(f"cannot read entropy device {self._path}: {exc}") from exc
        return data or b""

    def describe(self) -> str:
        if self._stripe is not None:
            return (f"file {self._path}, lane {self._stripe.lane} of {self._stripe.lanes} "
                    f"(its blocks of {self._stripe.block_size} bytes)")
        return f"device {self._path}"

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential reconnect delays: ``initial_s`` doubling up to ``max_s``."""

    initial_s: float = 0.1
    max_s: float = 10.0

    def delay(self, attempt: int) -> float:
        return float(min(self.max_s, self.initial_s * (2 ** min(attempt, 30))))


class HttpApplianceSource:
    """A network QRNG appliance streaming raw bytes over HTTP(S) (GET, any transfer encoding).

    On a connection error, a non-200 answer or end of stream it reconnects with exponential
    backoff; meanwhile ``read`` returns ``b""`` (the monitor sees a stall). ``reconnects``
    counts reconnections.
    """

    simulated = False

    def __init__(
        self, url: str, *, auth_header: str | None = None, timeout_s: float = 5.0,
        backoff: Backoff | None = None, sleep: float = 0.0,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise SourceSpecError(f"appliance URL {url!r} must be http(s)://host[:port]/path")
        self._url = url
        self._parsed = parsed
        self._headers: dict[str, str] = {}
        if auth_header:
            name, sep, value = auth_header.partition(":")
            if not sep:
                raise SourceSpecError("an auth header reads 'Name: value'")
            self._headers[name.strip()] = value.strip()
        self._timeout_s = timeout_s
        self._backoff = backoff or Backoff()
        self._connection: http.client.HTTPConnection | None = None
        self._response: http.client.HTTPResponse | None = None
        self._failures = 0
        self._retry_at = 0.0
        self.reconnects = 0
        self.last_error: str | None = None

    def _connect(self) -> None:
        host = self._parsed.hostname or ""
        connection_class = (http.client.HTTPSConnection if self._parsed.scheme == "https"
                            else http.client.HTTPConnection)
        connection = connection_class(host, self._parsed.port, timeout=self._timeout_s)
        path = self._parsed.path or "/"
        if self._parsed.query:
            path += "?" + self._parsed.query
        connection.request("GET", path, headers=self._headers)
        response = connection.getresponse()
        if response.status != 200:
            connection.close()
            raise SourceError(f"appliance {self._url} answered HTTP {response.status}")
        self._connection, self._response = connection, response

    def _drop(self, error: str) -> None:
        self.last_error = error
        if self._connection is not None:
            self._connection.close()
        self._connection = self._response = None
        self._retry_at = time.monotonic() + self._backoff.delay(self._failures)
        self._failures += 1

    def read(self, size: int) -> bytes:
        if self._response is None:
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, self._timeout_s))
                return b""
            try:
                self._connect()
            except (OSError, http.client.HTTPException, SourceError) as exc:
                self._drop(f"connect: {exc}")
                return b""
            if self.reconnects or self._failures:
                self.reconnects += 1
        assert self._response is not None
        try:
            data = self._response.read1(size)
        except (OSError, http.client.HTTPException) as exc:
            self._drop(f"read: {exc}")
            return b""
        if not data:
            self._drop("end of stream")
            return b""
        self._failures = 0
        return data

    def describe(self) -> str:
        return f"appliance {self._url}"

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()


class FaultSource:
    """The simulator with one injected fault (see the module doc for the modes)."""

    simulated = True
    MODES = ("stuck", "biased", "stall", "burst")

    def __init__(
        self, mode: str, *, after: int = 0, length: int | None = None, value: int = 0,
        p: float = 0.5, every: int = 1 << 20, inner: Source | None = None,
    ) -> None:
        if mode not in self.MODES:
            raise SourceSpecError(f"unknown fault mode {mode!r}; use one of {self.MODES}")
        if not 0 <= value <= 255:
            raise SourceSpecError(f"fault value {value} is not a byte")
        self.mode = mode
        self._after = after
        self._length = length
        self._value = value
        self._p = p
        self._every = every
        self._inner = inner or SimulatorSource()
        self._position = 0
        self._stall_started: float | None = None
        self._rng = np.random.default_rng()

    def _active(self, position: int) -> bool:
        if position < self._after:
            return False
        return self._length is None or self.mode == "stall" or (
            position < self._after + self._length)

    def read(self, size: int) -> bytes:
        start = self._position
        if self.mode == "stall" and start >= self._after:
            if self._stall_started is None:
                self._stall_started = time.monotonic()
            if self._length is None or time.monotonic() - self._stall_started < self._length:
                time.sleep(0.05)
                return b""
        data = self._inner.read(size)
        self._position += len(data)
        if self.mode == "stall" or not data:
            return data
        if self.mode == "burst":
            if start < self._after:
                return data
            buffer = bytearray(data)
            burst = self._length or 64
            offset = (self._after - start) % self._every
            for at in range(offset, len(buffer), self._every):
                buffer[at:at + burst] = bytes([self._value]) * len(buffer[at:at + burst])
            return bytes(buffer)
        # stuck / biased: the fault covers [after, after + length) of the stream.
        lo = max(self._after, start) - start
        hi = len(data) if self._length is None else min(
            len(data), max(0, self._after + self._length - start))
        if lo >= hi:
            return data
        array = np.frombuffer(data, dtype=np.uint8).copy()
        if self.mode == "stuck":
            array[lo:hi] = self._value
        else:
            mask = self._rng.random(hi - lo) < self._p
            array[lo:hi][mask] = self._value
        return array.tobytes()

    def describe(self) -> str:
        return f"fault {self.mode} after {self._after} bytes (simulated)"

    def close(self) -> None:
        self._inner.close()


def _int(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    lowered = text.strip().lower().removesuffix("ib").removesuffix("b")
    if lowered and lowered[-1] in units:
        return int(float(lowered[:-1]) * units[lowered[-1]])
    return int(lowered)


def parse_source(spec: str, *, auth_header: str | None = None,
                 stripe: Stripe | None = None) -> Source:
    """Open the source a ``--source`` spec names (see the module doc); ``stripe``: the lane
    this process is, for a regular file."""
    if spec == "sim":
        return SimulatorSource()
    if spec.startswith("sim,"):
        key, sep, value = spec.removeprefix("sim,").partition("=")
        if key != "rate" or not sep:
            raise SourceSpecError(f"simulator option should read rate=<bytes/s>, got {spec!r}")
        try:
            rate = _int(value)
        except ValueError as exc:
            raise SourceSpecError(f"bad simulator rate {value!r}: {exc}") from exc
        return PacedSource(SimulatorSource(), rate)
    if spec.startswith("file:"):
        return DeviceFileSource(spec.removeprefix("file:"), stripe)
    if spec.startswith(("http://", "https://")):
        return HttpApplianceSource(
            spec, auth_header=auth_header or os.environ.get("QUSTREAM_QRNG_AUTH_HEADER"))
    if spec.startswith("fault:"):
        mode, *options = spec.removeprefix("fault:").split(",")
        kwargs: dict[str, int | float | None] = {}
        for option in options:
            key, sep, value = option.partition("=")
            if not sep:
                raise SourceSpecError(f"fault option {option!r} should read key=value")
            try:
                if key == "p":
                    kwargs["p"] = float(value)
                elif key in ("after", "length", "value", "every"):
                    kwargs[key] = _int(value)
                else:
                    raise SourceSpecError(f"unknown fault option {key!r}")
            except ValueError as exc:
                raise SourceSpecError(f"bad fault option {option!r}: {exc}") from exc
        return FaultSource(mode, **kwargs)  # type: ignore[arg-type]
    raise SourceSpecError(
        f"unknown source spec {spec!r}; use sim, file:<path>, http(s)://..., or fault:<mode>")
