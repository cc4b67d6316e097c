"""Precommitted, paced publication (issue 19 item 1): which pool a tested block goes to, and
whether the next public chunk may be revealed now.

One ahead: a source publishes chunk k only when it already holds the payload of chunk k+1 of
the same chain, so chunk k carries ``next_digest`` = that payload's digest
(``protocol.entropy.chain``). The held payload is secret until chunk k+1 is published.

Pacing (public chain only): a grinder that sees an honest source's committed payload before it
fixes its own commitment can steer the output, so the honest source reveals that payload only
once the chunk committing to it is in a finalized block. Rule: **at most one public chunk of
the source is revealed and not yet in a finalized block.** Chunk k+1 may be revealed when every
public chunk up to k is *settled*: a finalized block includes it (per-source ``SeqRange`` of
block headers), or it was taken as settled at start-up (``settled_at_start``). The private
pool (key material, never in blocks) is not paced.

While the public chain waits, a block read for it is withheld (dropped unpublished: it was
never revealed, so nothing is lost but bytes) when the source has a private share, so key
delivery never waits for blocks; without a private share the service stops taking blocks
(``Placement.WAIT``), so a paced source reads no faster than it publishes.

Pure: the shell (``services.qrng_ingest.pacing``) reads ``chain.blocks``; the publisher asks
``place`` and ``may_reveal``.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from protocol.block import SeqRange


class Placement(StrEnum):
    PUBLIC = "PUBLIC"  # the block joins the public chain (held; its predecessor is revealed)
    PRIVATE = "PRIVATE"  # the block joins the private chain
    WITHHELD = "WITHHELD"  # public, but the public chain waits: dropped, never published
    WAIT = "WAIT"  # public, the chain waits and there is no private share: take no block now


def place(credit: float, private_share: float, public_open: bool) -> tuple[Placement, float]:
    """Where the next healthy block goes, and the new private credit.

    ``credit`` accumulates ``private_share`` per block; a block goes private whenever it
    reaches 1 (so ``private_share`` of the blocks, evenly spread). ``public_open``: the
    public chain can take a block now (the function ``public_open``). A withheld block counts
    as a public one, so the private pool keeps its configured share of what is read; a WAIT
    takes no block and leaves the credit as it was."""
    added = credit + private_share
    if added >= 1.0:
        return Placement.PRIVATE, added - 1.0
    if public_open:
        return Placement.PUBLIC, added
    if private_share > 0.0:
        return Placement.WITHHELD, added
    return Placement.WAIT, credit


def may_reveal(seq: int, settled_seq: int | None) -> bool:
    """Whether public chunk ``seq`` may be revealed now: every chunk before it is settled.
    ``settled_seq`` None: not known yet (the start-up look-back has not answered)."""
    return settled_seq is not None and seq - 1 <= settled_seq


def public_open(holding: bool, next_seq: int, settled_seq: int | None, paced: bool) -> bool:
    """Whether the public chain can take a block now. Taking one reveals the held block as
    chunk ``next_seq`` (its digest then commits to the new one); with nothing held it only
    starts holding, which reveals nothing."""
    return not paced or not holding or may_reveal(next_seq, settled_seq)


def settled_at_start(found_seq: int | None, last_published_seq: int) -> int:
    """The settled seq a paced source starts from.

    ``found_seq``: the newest seq of the source that a finalized block within the start-up
    look-back includes. None (no such block: a new source, one the chain does not register or
    cannot join, or one left out for longer than the look-back) takes every chunk published so
    far as settled, so the source reveals one chunk and then waits for the chain as usual.
    Waiting instead for a block that may never come would stop the source for ever; revealing
    one chunk exposes no more than an unpaced source exposes with every chunk."""
    return last_published_seq if found_seq is None else found_seq


def newest_included(ranges: Iterable[SeqRange], source_ids: Iterable[str]) -> dict[str, int]:
    """Per source of ``source_ids`` that ``ranges`` (a block header's ``entropy_ranges``)
    name: the last seq included."""
    wanted = frozenset(source_ids)
    found: dict[str, int] = {}
    for seq_range in ranges:
        if seq_range.source_id in wanted:
            found[seq_range.source_id] = max(found.get(seq_range.source_id, -1), seq_range.last)
    return found
