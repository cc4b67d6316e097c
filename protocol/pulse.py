"""Is a pulse random? The status of a block's randomness, read from its header alone.

A block's randomness is ``HMAC-SHA-512(previous randomness, height and entropy references)``. When
the block carries no fresh entropy, that is a function of the previous pulse and the height:
anyone can compute it in advance, so it must never be served as a random value. The header says
how many registered sources contributed fresh entropy (``fresh_sources``, one per device among
the entropy ranges: a source's chunks are fresh by construction, every range starts right after
what the chain already used; lanes of one device count once) and how many devices were
registered (``registered_sources``); DESIGN.md asks for entropy from two independent sources
whenever two are registered, so one source cannot decide the output.

``pulse_status`` returns a bit set anchored on the NIST Randomness Beacon 2.0 ``statusCode``
(NIST IR 8213): 0 means "chain intact, and values are all good", bit 0 (1) marks the start of a
chain (here: height 1, derived from the genesis randomness). Bits from 8 up are QuStream's:

- ``NO_FRESH_ENTROPY`` (256): no source contributed; the value is computable in advance;
- ``TOO_FEW_SOURCES`` (512): fewer sources than ``min(2, registered)`` contributed; one source
  could have chosen the value.

``is_random(status)`` is False when either QuStream bit is set: the beacon API, the SDK and the
``chain`` commands mark such pulses and never present one as the latest random pulse.

Health, for readers: ``health_by_source(entropy)`` folds the SP 800-90B summaries the block's
entropy references carry (``protocol.entropy.chain.HealthSummary``) into one ``SourceHealth``
per source and test parameters (a source keeps its parameters, so that is one per source unless
it was reconfigured between chunks): chunks, windows and samples are sums, the maximum run and
APT count maxima, failures a sum. The beacon API serves it with every pulse and block; the SDK
recomputes it from the references it verified and refuses a document whose summary differs or
does not pass. Each reference passing (``protocol.block.unhealthy_entropy``) implies the fold
passes, so the summary is a convenience to read, never an extra trust assumption.

A range of pulses in canonical bytes (``encode_pulse_range``; ``protocol.codec``
reads it back, strictly), what ``GET /v1/beacon?from=&to=`` answers when asked for
``PULSE_RANGE_MEDIA_TYPE``: only what a client verifies, in the encodings it hashes, so it
parses no JSON and re-encodes nothing to check a hash (docs/verify-a-pulse.md)::

    PulseRange := tag, text chain_id, optional nested BlockHeader (the header before the
                  first pulse; absent from height 1), nested CommitCertificate (of the last
                  pulse's block), sequence of PulseEntry
    PulseEntry := nested BlockHeader, sequence of nested EntropyRef   (no tag: a fragment)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from enum import IntFlag
from typing import Any

from protocol.block import EntropyRef, Header
from protocol.canonical import CanonicalWriter
from protocol.commit import CommitCertificate
from protocol.errors import InputError

PULSE_RANGE_MEDIA_TYPE = "application/vnd.qustream.pulse-range"

MIN_SOURCES_FOR_RANDOM = 2


class PulseStatus(IntFlag):
    OK = 0
    CHAIN_START = 1
    NO_FRESH_ENTROPY = 256
    TOO_FEW_SOURCES = 512


NOT_RANDOM = PulseStatus.NO_FRESH_ENTROPY | PulseStatus.TOO_FEW_SOURCES


def required_sources(registered: int) -> int:
    """How many sources must contribute for a pulse to count as random."""
    return max(1, min(MIN_SOURCES_FOR_RANDOM, registered))


def pulse_status(header: Header) -> PulseStatus:
    """The status of the pulse ``header`` carries (module doc)."""
    status = PulseStatus.OK
    if header.height == 1:
        status |= PulseStatus.CHAIN_START
    if header.fresh_sources == 0:
        status |= PulseStatus.NO_FRESH_ENTROPY
    elif header.fresh_sources < required_sources(header.registered_sources):
        status |= PulseStatus.TOO_FEW_SOURCES
    return status


def is_random(status: PulseStatus) -> bool:
    return not status & NOT_RANDOM


def describe(status: PulseStatus) -> str:
    """One line for people: ``random`` or what is wrong."""
    if status & PulseStatus.NO_FRESH_ENTROPY:
        return "NOT RANDOM: no fresh entropy (computable from the previous pulse)"
    if status & PulseStatus.TOO_FEW_SOURCES:
        return "NOT RANDOM: fresh entropy from fewer sources than the two-source rule asks"
    return "random (start of the chain)" if status & PulseStatus.CHAIN_START else "random"


class HealthSummaryError(InputError):
    """A served per-source health summary that is malformed."""


@dataclass(frozen=True, slots=True, order=True)
class SourceHealth:
    """The health of one source's chunks in one block, with the parameters they were tested
    with (module doc): sorted by source id, then parameters."""

    source_id: str
    rct_cutoff: int
    apt_cutoff: int
    apt_window: int
    chunks: int
    windows: int
    samples: int
    rct_max_run: int
    apt_max_count: int
    failures: int

    def failing(self) -> str | None:
        """Why these chunks were not all passing entropy, None when they were."""
        if self.failures:
            return f"{self.source_id}: {self.failures} of {self.windows} windows failed"
        if self.rct_max_run >= self.rct_cutoff:
            return f"{self.source_id}: RCT run {self.rct_max_run} reaches {self.rct_cutoff}"
        if self.apt_max_count >= self.apt_cutoff:
            return f"{self.source_id}: APT count {self.apt_max_count} reaches {self.apt_cutoff}"
        if self.windows < self.chunks or self.samples != self.windows * self.apt_window:
            return (f"{self.source_id}: {self.chunks} chunks of {self.windows} windows and "
                    f"{self.samples} samples do not add up")
        return None

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _SOURCE_HEALTH_FIELDS}

    def __reduce__(self) -> tuple[Any, ...]:  # the fields as they are: cheap to pickle
        return SourceHealth, tuple(getattr(self, name) for name in _SOURCE_HEALTH_FIELDS)

    def describe(self) -> str:
        """One line for people (the ``chain`` and ``beacon`` commands print it)."""
        verdict = self.failing()
        return (f"{self.source_id}: {self.chunks} chunks, {self.windows} windows, "
                f"{self.samples} samples; RCT max run {self.rct_max_run} (cutoff "
                f"{self.rct_cutoff}), APT max count {self.apt_max_count} (cutoff "
                f"{self.apt_cutoff} of {self.apt_window}), {self.failures} failures: "
                f"{'passed' if verdict is None else 'FAILED, ' + verdict}")

    @classmethod
    def from_json(cls, data: Any) -> SourceHealth:
        names = _SOURCE_HEALTH_FIELDS
        if not isinstance(data, Mapping) or data.keys() != _SOURCE_HEALTH_KEYS:
            raise HealthSummaryError(f"a source's health summary has exactly the fields "
                                     f"{list(names)}")
        source_id, *counts = (data[name] for name in names)
        if not isinstance(source_id, str) or not all(type(c) is int for c in counts):
            raise HealthSummaryError(f"malformed source health summary {dict(data)}")
        return cls(source_id, *counts)


_SOURCE_HEALTH_FIELDS = tuple(f.name for f in fields(SourceHealth))
_SOURCE_HEALTH_KEYS = frozenset(_SOURCE_HEALTH_FIELDS)


def health_by_source(entropy: Sequence[EntropyRef],
                     shared: dict[tuple[Any, ...], SourceHealth] | None = None
                     ) -> tuple[SourceHealth, ...]:
    """The per-source fold of ``entropy``'s health summaries (module doc), sorted.

    ``shared``: a dict the caller keeps across blocks, so that equal folds are one object (a
    source's summary repeats from block to block; a range client pickles a page of pulses
    between processes, and the pickle then holds each once)."""
    folded: dict[tuple[str, int, int, int], tuple[Any, ...]] = {}
    for ref in entropy:
        h = ref.health
        key = (ref.source_id, h.rct_cutoff, h.apt_cutoff, h.apt_window)
        seen = folded.get(key)
        if seen is None:
            folded[key] = (*key, 1, h.windows, h.samples, h.rct_max_run, h.apt_max_count,
                           h.failures)
        else:
            folded[key] = (*key, seen[4] + 1, seen[5] + h.windows, seen[6] + h.samples,
                           max(seen[7], h.rct_max_run), max(seen[8], h.apt_max_count),
                           seen[9] + h.failures)
    made = {} if shared is None else shared
    out = []
    for key in sorted(folded):
        fields = folded[key]
        if fields not in made:
            made[fields] = SourceHealth(*fields)
        out.append(made[fields])
    return tuple(out)


def health_json(entropy: Sequence[EntropyRef]) -> list[dict[str, Any]]:
    """``health_by_source`` as the beacon API serves it."""
    return [source.to_json() for source in health_by_source(entropy)]


@dataclass(frozen=True, slots=True)
class PulseRange:
    """A decoded binary pulse range (module doc), not yet verified."""

    chain_id: str
    previous_header: Header | None
    commit: CommitCertificate
    pulses: tuple[tuple[Header, tuple[EntropyRef, ...]], ...]


def pulse_range_entry(header: Header, entropy: Sequence[EntropyRef]) -> bytes:
    """One ``PulseEntry`` (module doc): a block's header and its entropy references."""
    return (CanonicalWriter.fragment().nested(header.canonical())
            .sequence(entropy, lambda w, ref: w.nested(ref.canonical())).finish())


def encode_pulse_range(chain_id: str, previous_header: bytes | None, commit: bytes,
                       entries: Sequence[bytes]) -> bytes:
    """The ``PulseRange`` of ``pulse_range_entry`` fragments (module doc);
    ``previous_header`` and ``commit`` in their canonical encodings."""
    return (CanonicalWriter("PulseRange").text(chain_id)
            .optional(previous_header, lambda w, header: w.nested(header)).nested(commit)
            .u32(len(entries)).finish() + b"".join(entries))
