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
"""

from __future__ import annotations

from enum import IntFlag

from protocol.block import Header

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
