"""Beacon reads a client can verify: pulses by height and time, ranges, future pulses, failover.

``verify_pulse_range(document, validators, anchor=)`` checks a ``GET /v1/beacon?from=&to=``
answer with one certificate check: the last header's commit certificate must carry more than
2/3 of ``validators`` (a set the client trusts, e.g. its light client's checkpoint), and every
earlier header is linked to it by the previous-block hash of the header after it. Each pulse's
entropy references must hash to its header's entropy root and ranges, and its randomness must
be HMAC-SHA-512 of the previous randomness and those references (the previous randomness of
the first pulse comes from ``previous_header``, itself hash-linked, or from the genesis
``anchor`` at height 1). Every reference's SP 800-90B health summary (part of the hashed
reference) must pass (``protocol.block.unhealthy_entropy``), and the pulse's per-source
``health`` must be exactly the fold of those summaries (``protocol.pulse.health_by_source``);
``Pulse.health`` hands the recomputed fold over. Any changed byte fails with
``BlockRejectedError``.

``verify_pulse_range_bytes(data, validators, anchor=)`` makes the same checks on the binary
range (``protocol.pulse.PULSE_RANGE_MEDIA_TYPE``): the headers and references as the bytes that
are hashed, no per-source summary served (the client computes it).

``verify_pulse_proof(document, validators)`` checks a ``GET /v1/beacon/{h}/proof`` answer: the
head's certificate, then an inclusion path from the pulse's block hash to the head's history
root, so one verified head proves any older pulse in O(log n) hashes.

``BeaconClient`` reads one or several gateways (failover: a gateway that does not answer is
skipped, the next URL is tried; ``reading`` names the one in use) and returns only verified
``Pulse``s. ``range(first, last, workers=N)`` fetches pages ahead and verifies them on N
processes (a long range is CPU-bound on the client), checking each page's hash link to the
page before it. Lookups by time raise the typed ``PulseNotYetError`` (with ``expected_at_ms``) and
``BeforeGenesisError``; ``wait_for_height`` / ``wait_for_time`` await a future pulse with
bounded long polls (the fair-lottery use: commit to "the pulse of height H" before it exists).

``FailoverBlockSource`` feeds a ``BlockSubscriber`` from a list of sources (gateways' SSE
streams and Kafka): when one fails it resumes from the next, after the last height it handed
out, so with the subscriber's verification every pulse is delivered exactly once.
"""

from __future__ import annotations

import base64
import json
import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from protocol.block import (
    EntropyRef,
    Header,
    entropy_problem,
    precommitment_problems,
    unhealthy_entropy,
)
from protocol.codec import WireError, decode_commit, decode_header, decode_pulse_range
from protocol.commit import CommitCertificate, verify_commit
from protocol.entropy.chain import HealthSummary
from protocol.errors import InputError
from protocol.mmr import verify_inclusion
from protocol.pulse import (
    PULSE_RANGE_MEDIA_TYPE,
    PulseStatus,
    SourceHealth,
    health_by_source,
    is_random,
    pulse_status,
)
from protocol.randomness import block_randomness
from protocol.validators import ValidatorSet
from sdk.errors import (
    ApiError,
    BlockGapError,
    BlockRejectedError,
    PulseNotYetError,
    error_from_http,
)
from sdk.subscriber import TrustedCheckpoint
from streams.chain_wire import decode_finalized
from streams.orphans import watch_parent

log = logging.getLogger("qustream.sdk.beacon")
MAX_WAIT_S = 60.0  # the gateway's bound on one long poll
JSON_MEDIA_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class Pulse:
    """A verified pulse: its height, time, randomness and status (``is_random`` False: do not
    use the value as randomness, it was computable in advance), and the per-source health of
    the entropy it mixes, recomputed from the verified references (module doc)."""

    chain_id: str
    height: int
    time_ms: int
    randomness: bytes
    block_hash: bytes
    status: PulseStatus
    health: tuple[SourceHealth, ...] = ()

    @property
    def is_random(self) -> bool:
        return is_random(self.status)

    def __reduce__(self) -> tuple[Any, ...]:
        # The fields as they are: a quarter of what pickling a frozen dataclass costs, paid
        # for every pulse a page verifier process hands back (``BeaconClient.range``).
        return Pulse, (self.chain_id, self.height, self.time_ms, self.randomness,
                       self.block_hash, self.status, self.health)

    @classmethod
    def of(cls, header: Header, entropy: tuple[EntropyRef, ...] = (),
           health: tuple[SourceHealth, ...] | None = None) -> Pulse:
        """``health``: ``health_by_source(entropy)`` when the caller has it already."""
        return cls(header.chain_id, header.height, header.time_ms, header.randomness,
                   header.hash(), pulse_status(header),
                   health_by_source(entropy) if health is None else health)


def _b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _header(height: int | None, encoded: str) -> Header:
    try:
        return decode_header(_b64(encoded))
    except (WireError, ValueError) as exc:
        raise BlockRejectedError(height, f"undecodable header: {exc}") from exc


def _entropy(height: int, items: Sequence[Any]) -> tuple[EntropyRef, ...]:
    """References of a range pulse: ``[source_id, seq, digest, next_digest, committed,
    health]``."""
    try:
        return tuple(EntropyRef(str(source), int(seq), bytes.fromhex(digest),
                                HealthSummary.from_json(health), bytes.fromhex(next_digest),
                                _flag(committed))
                     for source, seq, digest, next_digest, committed, health in items)
    except (ValueError, TypeError) as exc:  # InputError is a ValueError
        raise BlockRejectedError(height, f"malformed entropy reference: {exc}") from exc


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"committed must be true or false, not {value!r}")
    return value


def _check_health(height: int, served: Any, entropy: tuple[EntropyRef, ...],
                  shared: dict[tuple[Any, ...], SourceHealth] | None = None
                  ) -> tuple[SourceHealth, ...]:
    """Every reference's summary passes and ``served`` is their per-source fold (returned;
    ``_UNCLAIMED``: nothing was served to compare, as in a binary range). ``shared``: see
    ``health_by_source``."""
    unhealthy = unhealthy_entropy(entropy)
    if unhealthy is not None:
        raise BlockRejectedError(height, unhealthy)
    folded = health_by_source(entropy, shared)
    if served is _UNCLAIMED:
        return folded
    if type(served) is list and served == [source.to_json() for source in folded] and all(
            type(value) is int or key == "source_id"
            for item in served for key, value in item.items()):
        return folded  # the common case, compared as JSON; otherwise say what is wrong
    try:
        claimed = tuple(SourceHealth.from_json(item) for item in served)
    except (InputError, TypeError) as exc:
        raise BlockRejectedError(height, f"malformed health summary: {exc}") from exc
    if claimed != folded:
        raise BlockRejectedError(height, "the per-source health summary is not the fold of the "
                                         "entropy references' health summaries")
    return folded


def _check_pulse(header: Header, entropy: tuple[EntropyRef, ...], previous_randomness: bytes,
                 previous_entropy: tuple[EntropyRef, ...] | None = None) -> None:
    """One pulse's entropy against its header. ``previous_entropy``: the block before's
    references when the client verified them too (inside a range); then each committed flag
    of a source that block held, and the fresh source count, are checked exactly
    (``docs/precommitment.md``); otherwise the count is bounded by the committed devices."""
    height = header.height
    problem = entropy_problem(header, entropy)
    if problem is not None:
        raise BlockRejectedError(height, f"entropy references do not match the header: "
                                         f"{problem}")
    if previous_entropy is not None:
        before = {ref.source_id: ref.next_digest for ref in previous_entropy}
        problems = precommitment_problems(header, entropy, before.get, before)
        if problems:
            raise BlockRejectedError(height, problems[0])
    if block_randomness(previous_randomness, height, entropy) != header.randomness:
        raise BlockRejectedError(height, "randomness is not HMAC-SHA-512 of the previous "
                                         "randomness and the committed entropy references")


def verify_pulse_range(document: dict[str, Any], validators: ValidatorSet, *,
                       anchor: TrustedCheckpoint | None = None) -> list[Pulse]:
    """The pulses of a range document, verified (module doc); ``BlockRejectedError`` naming
    the height and the failed check otherwise. ``anchor``: the genesis checkpoint (height 0),
    needed when the range starts at height 1."""
    pulses, header, _ = _linked_pulses(document, anchor)
    _check_certificate(header, document.get("commit"), validators)
    return pulses


def verify_pulse_range_bytes(data: bytes, validators: ValidatorSet, *,
                             anchor: TrustedCheckpoint | None = None) -> list[Pulse]:
    """``verify_pulse_range`` of a binary range (``protocol.pulse.PULSE_RANGE_MEDIA_TYPE``,
    docs/verify-a-pulse.md): the same checks, on the bytes that are hashed."""
    return _verified_page(data, True, validators, anchor)[1]


def _verified_page(raw: bytes, binary: bool, validators: ValidatorSet,
                   anchor: TrustedCheckpoint | None) -> tuple[bytes, list[Pulse]]:
    """A range page's response bytes (``binary`` or JSON) verified: the hash its first pulse
    links to, and the pulses."""
    if not binary:
        try:
            document = json.loads(raw)
        except ValueError as exc:
            raise BlockRejectedError(None, f"the range page is not JSON: {exc}") from exc
        pulses, header, previous_hash = _linked_pulses(document, anchor)
        _check_certificate(header, document.get("commit"), validators)
        return previous_hash, pulses
    try:
        page = decode_pulse_range(raw)
    except WireError as exc:
        raise BlockRejectedError(None, f"undecodable pulse range: {exc}") from exc
    if not page.pulses:
        raise BlockRejectedError(None, "the range holds no pulse")
    first = page.pulses[0][0].height
    if page.pulses[0][0].chain_id != page.chain_id:
        raise BlockRejectedError(first, "another chain id than the range's")
    previous_hash, previous_randomness = _range_start(first, page.previous_header, anchor)
    pulses, header = _link(first, previous_hash, previous_randomness,
                           ((header, entropy, _UNCLAIMED) for header, entropy in page.pulses))
    _check_commit(header, page.commit, validators)
    return previous_hash, pulses


def _linked_pulses(document: dict[str, Any], anchor: TrustedCheckpoint | None
                   ) -> tuple[list[Pulse], Header, bytes]:
    """The pulses of ``document`` checked each on its own and linked to the header before it
    (steps of ``verify_pulse_range`` but the certificate), with the last header and the hash
    the first pulse links to."""
    items = document.get("pulses") or []
    if not items:
        raise BlockRejectedError(None, "the range holds no pulse")
    first_height = int(items[0]["height"])
    encoded = document.get("previous_header") if first_height > 1 else None
    if first_height > 1 and not encoded:
        raise BlockRejectedError(first_height, "the range lacks the previous header")
    previous = _header(first_height - 1, encoded) if encoded else None
    previous_hash, previous_randomness = _range_start(first_height, previous, anchor)

    def decoded() -> Iterator[tuple[Header, tuple[EntropyRef, ...], Any]]:
        for height, item in enumerate(items, first_height):
            yield (_header(height, item["header"]), _entropy(height, item.get("entropy", ())),
                   item.get("health"))

    pulses, header = _link(first_height, previous_hash, previous_randomness, decoded())
    return pulses, header, previous_hash


_UNCLAIMED = object()  # a pulse served without a per-source health summary to compare


def _range_start(first_height: int, previous: Header | None,
                 anchor: TrustedCheckpoint | None) -> tuple[bytes, bytes]:
    """The block hash and randomness the range's first pulse builds on: the genesis
    ``anchor``'s at height 1, else the previous header's (its hash is checked by the link)."""
    if first_height == 1:
        if anchor is None or anchor.height != 0:
            raise BlockRejectedError(1, "a range from height 1 is checked against the genesis: "
                                        "pass anchor=TrustedCheckpoint.from_genesis(...)")
        return anchor.block_hash, anchor.randomness
    if previous is None:
        raise BlockRejectedError(first_height, "the range lacks the previous header")
    if previous.height != first_height - 1:
        raise BlockRejectedError(first_height, "previous header is of another height")
    return previous.hash(), previous.randomness


def _link(first_height: int, previous_hash: bytes, previous_randomness: bytes,
          entries: Iterator[tuple[Header, tuple[EntropyRef, ...], Any]]
          ) -> tuple[list[Pulse], Header]:
    """Each pulse checked on its own (``_check_pulse``, ``_check_health`` against its served
    summary) and hash-linked to the one before, heights consecutive from ``first_height``;
    the pulses and the last header (whose certificate the caller checks).

    A source's health fold, which repeats from pulse to pulse, is one object per page (as the
    chain id is, from the decoder): a verifier process hands the page back as one pickle,
    which then holds each once (a third of the pickling, both ways)."""
    chain_id = None
    pulses: list[Pulse] = []
    header: Header | None = None
    previous_entropy: tuple[EntropyRef, ...] | None = None
    shared: dict[tuple[Any, ...], SourceHealth] = {}
    for height, (header, entropy, served) in enumerate(entries, first_height):
        if header.height != height:
            raise BlockGapError(header.height, f"expected height {height}")
        if chain_id is None:
            chain_id = header.chain_id
        if header.chain_id != chain_id:
            raise BlockRejectedError(height, "another chain id")
        if header.previous_block_hash != previous_hash:
            raise BlockRejectedError(height, "previous block hash does not link to the block "
                                             "before it")
        _check_pulse(header, entropy, previous_randomness, previous_entropy)
        health = _check_health(height, served, entropy, shared)
        previous_entropy = entropy
        pulse = Pulse.of(header, entropy, health)
        pulses.append(pulse)
        previous_hash, previous_randomness = pulse.block_hash, header.randomness
    if header is None:
        raise BlockRejectedError(None, "the range holds no pulse")
    return pulses, header


def _check_certificate(header: Header, encoded: Any, validators: ValidatorSet) -> None:
    """``encoded`` (base64) is a certificate of more than 2/3 of ``validators`` for
    ``header``'s block, and ``validators`` is the set the header names."""
    _check_trusted_set(header, validators)  # before decoding: the clearer error
    try:
        commit = decode_commit(_b64(encoded))
    except (WireError, ValueError, TypeError) as exc:
        raise BlockRejectedError(header.height, f"undecodable certificate: {exc}") from exc
    _check_commit(header, commit, validators)


def _check_trusted_set(header: Header, validators: ValidatorSet) -> None:
    if header.validators_hash != validators.hash():
        raise BlockRejectedError(header.height, "the last header names a validator set this "
                                                "client does not trust (the set changed: follow "
                                                "the chain with a BlockSubscriber to learn it)")


def _check_commit(header: Header, commit: CommitCertificate, validators: ValidatorSet) -> None:
    """``commit`` carries more than 2/3 of ``validators`` for ``header``'s block, and
    ``validators`` is the set the header names."""
    _check_trusted_set(header, validators)
    result = verify_commit(header.chain_id, header.hash(), header.height, commit, validators)
    if not result.ok:
        raise BlockRejectedError(header.height, f"certificate does not verify: {result.reason}")


def verify_pulse_proof(document: dict[str, Any], validators: ValidatorSet, *,
                       anchor: TrustedCheckpoint | None = None) -> Pulse:
    """The pulse of ``GET /v1/beacon/{h}/proof``, verified with one certificate and O(log n)
    hashes: the head's certificate against ``validators`` (as for any pulse), then the pulse's
    block hash against the head's history root by the inclusion path (``protocol.mmr``), then
    the pulse's own entropy and randomness as in a range. ``BlockRejectedError`` otherwise."""
    height = document.get("height")
    head = _header(document.get("head"), str(document.get("head_header", "")))
    _check_certificate(head, document.get("commit"), validators)
    item = document.get("pulse")
    if not isinstance(item, dict) or "header" not in item:
        raise BlockRejectedError(head.height, "the proof carries no pulse header")
    pulses, header, _ = _linked_pulses({"previous_header": document.get("previous_header"),
                                     "pulses": [item]}, anchor)
    if (header.height, head.height) != (height, document.get("head")) or (
            header.chain_id != head.chain_id):
        raise BlockRejectedError(header.height, "the pulse or head is not of the height and "
                                                "chain the document names")
    if not header.height < head.height:
        raise BlockRejectedError(header.height, f"the head {head.height} is not above the pulse")
    history: Any = document.get("history")
    try:
        path = tuple(bytes.fromhex(node) for node in history["path"])
    except (ValueError, TypeError, KeyError) as exc:
        raise BlockRejectedError(header.height, f"malformed inclusion path: {exc}") from exc
    # size and index come from the heights just verified, never from the document
    if not verify_inclusion(head.history_root, head.height - 1, header.height - 1,
                            pulses[0].block_hash, path):
        raise BlockRejectedError(header.height, f"the inclusion path does not lead from block "
                                                f"{header.height} to the history root of head "
                                                f"{head.height}")
    return pulses[0]


def verify_pulse_document(document: dict[str, Any], validators: ValidatorSet, *,
                          anchor: TrustedCheckpoint | None = None) -> Pulse:
    """One pulse of ``GET /v1/beacon/{h}`` (or a time lookup), verified as a range of one."""
    proof = document["proof"]
    header = _header(document.get("height"), proof["header"])
    entropy = [[e["source_id"], e["seq"], e["digest"], e["next_digest"], e["committed"],
                e.get("health")]
               for e in proof["entropy"]]
    return verify_pulse_range({"previous_header": proof.get("previous_header"),
                               "commit": proof["commit"],
                               "pulses": [{"height": header.height, "header": proof["header"],
                                           "entropy": entropy,
                                           "health": document.get("health")}]},
                              validators, anchor=anchor)[0]


def time_ms_of(moment: int | float | datetime) -> int:
    """Milliseconds since the epoch of an int (already ms) or an aware datetime."""
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            raise ValueError("give an aware datetime (with a time zone)")
        return int(moment.timestamp() * 1000)
    return int(moment)


class BeaconClient:
    """Verified pulses from one or several gateways (module doc). ``api_key`` is optional
    (beacon reads are public); ``validators`` is the set the client trusts for the pulses'
    heights (from ``checkpoint.next_validators`` by default); ``anchor`` the genesis checkpoint
    for ranges starting at height 1."""

    def __init__(self, urls: str | Sequence[str], *, checkpoint: TrustedCheckpoint,
                 api_key: str | None = None, anchor: TrustedCheckpoint | None = None,
                 timeout_s: float = 10.0, client: Any = None) -> None:
        import httpx

        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("give at least one gateway URL")
        self.validators = checkpoint.next_validators
        self.anchor = anchor if anchor is not None else (checkpoint if checkpoint.height == 0
                                                         else None)
        self.timeout_s = timeout_s
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = client or httpx.Client(headers=headers, timeout=timeout_s)
        self._owns_http = client is None  # a client passed in is the caller's to close
        self._index = 0
        self._pool: ProcessPoolExecutor | None = None
        self._pool_size = 0
        self._pool_broken = False  # its processes died once: ranges are verified here

    @property
    def reading(self) -> str:
        """The gateway URL in use."""
        return self.urls[self._index]

    def _get(self, path: str, params: dict[str, Any] | None = None,
             timeout_s: float | None = None, *, accept: str | None = None) -> Any:
        """The parsed JSON answer of the first gateway that serves it (``accept``: the
        response itself, asked for that media type)."""
        import httpx

        last: Exception | None = None
        for _ in range(len(self.urls)):
            url = self.urls[self._index].rstrip("/") + path
            try:
                response = self._http.get(url, params=params,
                                          timeout=timeout_s or self.timeout_s,
                                          headers={"Accept": accept} if accept else None)
            except httpx.TransportError as exc:
                log.warning("gateway %s unreachable (%s); trying the next", self.reading, exc)
                last = exc
                self._index = (self._index + 1) % len(self.urls)
                continue
            if response.status_code >= 500:  # this gateway cannot serve now: ask the next
                last = error_from_http(response)
                self._index = (self._index + 1) % len(self.urls)
                continue
            if response.status_code != 200:
                raise error_from_http(response)
            return response if accept else response.json()
        assert last is not None
        if isinstance(last, ApiError):
            raise last
        raise ApiError(0, "unreachable", f"no gateway answered: {last}") from last

    def _pulse(self, document: dict[str, Any], asked: str,
               fits: Callable[[Pulse, int | None], bool]) -> Pulse:
        """The verified pulse of ``document``, refused unless it is the one asked for:
        ``fits(pulse, time of the block before it)`` (None at height 1). The block before is
        the document's previous header, authenticated by the pulse's hash link; block times
        increase strictly along a chain, so "the first pulse at or after T" is provable from
        the pulse and the one before it. A verified pulse of another height or time, which a
        gateway could choose among, is refused like a forged one."""
        pulse = verify_pulse_document(document, self.validators, anchor=self.anchor)
        encoded = document["proof"].get("previous_header")
        before = _header(pulse.height - 1, encoded).time_ms if pulse.height > 1 else None
        if not fits(pulse, before):
            raise BlockRejectedError(pulse.height, f"asked for {asked}; the gateway answered "
                                                   f"pulse {pulse.height} of time "
                                                   f"{pulse.time_ms}")
        return pulse

    def latest(self) -> Pulse:
        """The latest random pulse."""
        return self._pulse(self._get("/v1/beacon/latest"), "the latest random pulse",
                           lambda pulse, _: pulse.is_random)

    def at_height(self, height: int, *, wait_s: float = 0.0) -> Pulse:
        """The pulse of ``height`` (``PulseNotYetError`` when it does not exist after
        ``wait_s``, at most ``MAX_WAIT_S``)."""
        params = {"wait": wait_s} if wait_s else None
        return self._pulse(self._get(f"/v1/beacon/{height}", params,
                                     timeout_s=self.timeout_s + wait_s),
                           f"pulse {height}", lambda pulse, _: pulse.height == height)

    def at_or_after(self, moment: int | datetime, *, wait_s: float = 0.0) -> Pulse:
        """The first pulse at or after ``moment`` (NIST: the pulse of a time)."""
        at = time_ms_of(moment)
        params: dict[str, Any] = {"time": at}
        if wait_s:
            params["wait"] = wait_s
        return self._pulse(self._get("/v1/beacon/at", params, timeout_s=self.timeout_s + wait_s),
                           f"the first pulse at or after {at}",
                           lambda pulse, before: (before is None or before < at)
                           and at <= pulse.time_ms)

    def next(self, moment: int | datetime) -> Pulse:
        """The first pulse strictly after ``moment``."""
        at = time_ms_of(moment)
        return self._pulse(self._get("/v1/beacon/next", {"time": at}),
                           f"the first pulse after {at}",
                           lambda pulse, before: (before is None or before <= at)
                           and at < pulse.time_ms)

    def previous(self, moment: int | datetime) -> Pulse:
        """The last pulse strictly before ``moment`` (that it is before ``moment`` is checked;
        that none follows before ``moment`` would take the next header, which the answer
        does not carry)."""
        at = time_ms_of(moment)
        return self._pulse(self._get("/v1/beacon/previous", {"time": at}),
                           f"the last pulse before {at}", lambda pulse, _: pulse.time_ms < at)

    def pulse_with_proof(self, height: int, head: int | None = None) -> Pulse:
        """The pulse of ``height`` proven against the gateway's head (or ``head``): one
        certificate check and O(log n) hashes however old the pulse (``verify_pulse_proof``).
        """
        params = {"head": head} if head is not None else None
        document = self._get(f"/v1/beacon/{height}/proof", params)
        pulse = verify_pulse_proof(document, self.validators, anchor=self.anchor)
        if pulse.height != height or (head is not None and document.get("head") != head):
            raise BlockRejectedError(pulse.height, f"asked for pulse {height} against head "
                                                   f"{head}, the gateway proved another")
        return pulse

    def range(self, first: int, last: int, *, workers: int = 1) -> list[Pulse]:
        """Pulses ``first..last``, each page verified with one certificate check and its hash
        link to the page before it. ``workers`` > 1: pages of ``page_size`` are fetched ahead
        and verified on that many processes (kept until ``close``); a page the gateway
        shortens (its head, a smaller page limit) is continued from where it ended."""
        pool = self._verifiers(workers) if workers > 1 and not self._pool_broken else None
        pending: deque[tuple[int, Future[tuple[bytes, list[Pulse]]]]] = deque()
        try:
            return self._range(first, last, workers, pool, pending)
        except BrokenProcessPool as exc:
            # The verifier processes died: most often a script that calls this at import
            # time, without ``if __name__ == "__main__":`` (a spawned process imports the
            # script again and cannot start processes of its own). The pulses are verified
            # here instead, now and from then on, rather than failing the caller.
            log.warning("range verifier processes failed (%s); verifying in this process "
                        "from now on. Call range(workers=N) under if __name__ == "
                        "'__main__': to use N processes", exc)
            pending.clear()
            self._pool_broken = True
            self._close_pool()
            return self._range(first, last, workers, None, pending)
        finally:
            for _, later in pending:  # an error left pages in flight
                later.cancel()

    def _range(self, first: int, last: int, workers: int, pool: ProcessPoolExecutor | None,
               pending: deque[tuple[int, Future[tuple[bytes, list[Pulse]]]]]
               ) -> list[Pulse]:
        out: list[Pulse] = []
        fetch_at = first
        while (expected := out[-1].height + 1 if out else first) <= last:
            if pool is None:  # one page at a time, verified here
                link, pulses = _verified_page(*self._page(expected, last), self.validators,
                                              self.anchor if expected == 1 else None)
            else:
                if pending and pending[0][0] != expected:  # a page came back short: go on
                    for _, later in pending:                # from where it ended
                        later.cancel()
                    pending.clear()
                if not pending:
                    fetch_at = expected
                while fetch_at <= last and len(pending) < workers + 1:
                    end = min(last, fetch_at + self.page_size - 1)
                    pending.append((fetch_at, pool.submit(
                        _verified_page, *self._page(fetch_at, end), self.validators,
                        self.anchor if fetch_at == 1 else None)))
                    fetch_at = end + 1
                link, pulses = pending.popleft()[1].result()
            if pulses[0].height != expected:
                raise BlockGapError(pulses[0].height, f"asked for pulses from {expected}")
            if out and (link != out[-1].block_hash or pulses[0].chain_id != out[-1].chain_id):
                raise BlockRejectedError(expected, "the page does not link to the pulse before "
                                                   "it")
            out += pulses
        return out

    page_size = 1000  # the gateway's ``MAX_PULSES``

    def _page(self, first: int, last: int) -> tuple[bytes, bool]:
        """A range page's bytes, binary (``PULSE_RANGE_MEDIA_TYPE``) unless the gateway
        answered JSON (one that predates it), and which."""
        response = self._get("/v1/beacon", {"from": first, "to": last},
                             accept=f"{PULSE_RANGE_MEDIA_TYPE}, {JSON_MEDIA_TYPE};q=0.5")
        binary = response.headers.get("content-type", "").startswith(PULSE_RANGE_MEDIA_TYPE)
        return response.content, binary

    def _verifiers(self, workers: int) -> ProcessPoolExecutor:
        if self._pool is None or self._pool_size != workers:
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)
            # spawn, not fork: the client may run threads (an HTTP pool, the caller's own);
            # the workers end with this process even when it is killed (``streams.orphans``)
            self._pool = ProcessPoolExecutor(workers,
                                             mp_context=multiprocessing.get_context("spawn"),
                                             initializer=watch_parent, initargs=(os.getpid(),))
            self._pool_size = workers
        return self._pool

    def health(self) -> dict[str, Any]:
        """The gateway's view of the beacon's freshness (``UnavailableError`` when stale)."""
        result: dict[str, Any] = self._get("/v1/beacon/health")
        return result

    def _await(self, ask: Callable[[float], Pulse], timeout_s: float) -> Pulse:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                return ask(max(0.0, min(MAX_WAIT_S, remaining)))
            except PulseNotYetError:
                if deadline - time.monotonic() <= 0:
                    raise

    def wait_for_height(self, height: int, timeout_s: float = 600.0) -> Pulse:
        """Block until the pulse of ``height`` exists (long polls), then return it verified;
        ``PulseNotYetError`` after ``timeout_s``."""
        return self._await(lambda wait: self.at_height(height, wait_s=wait), timeout_s)

    def wait_for_time(self, moment: int | datetime, timeout_s: float = 600.0) -> Pulse:
        """Block until the first pulse at or after ``moment`` exists, then return it."""
        return self._await(lambda wait: self.at_or_after(moment, wait_s=wait), timeout_s)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()
        self._close_pool()

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


# ---------------------------------------------------------------- exactly once, with failover


class HeightSource(Protocol):
    """A source a ``FailoverBlockSource`` can resume by height."""

    def from_height(self, height: int, time_ms: int | None) -> Iterator[bytes]:
        """BlockFinalized records from ``height`` on (earlier ones may come too; ``time_ms``
        is the time of the block before ``height``, when known)."""
        ...


class SseHeights:
    """A gateway's SSE stream as a ``HeightSource`` (reconnects ``max_reconnects`` times)."""

    def __init__(self, base_url: str, api_key: str | None = None, *, max_reconnects: int = 2,
                 timeout_s: float = 10.0) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.max_reconnects = max_reconnects
        self.timeout_s = timeout_s

    def from_height(self, height: int, time_ms: int | None) -> Iterator[bytes]:
        from sdk.subscriber import SseBlockSource

        source = SseBlockSource(self.base_url, self.api_key or "", from_height=height,
                                timeout_s=self.timeout_s, max_reconnects=self.max_reconnects)
        for _height, raw in source.records(height - 1 if height > 1 else None):
            yield raw


class KafkaHeights:
    """``chain.blocks`` as a ``HeightSource``: starts at the first record timestamped at or
    after the previous block's time less ``clock_skew_ms`` (Kafka's time index, no scan)."""

    def __init__(self, settings: Any, *, clock_skew_ms: int = 60_000) -> None:
        self.settings = settings
        self.clock_skew_ms = clock_skew_ms

    def from_height(self, height: int, time_ms: int | None) -> Iterator[bytes]:
        from streams.kafka import Position, make_consumer

        topic = self.settings.topic("chain.blocks")
        consumer = make_consumer(self.settings, f"sdk-failover-{time.time_ns()}",
                                 **{"fetch.wait.max.ms": 20})
        try:
            start = 0
            if height > 1 and time_ms is not None:
                found = consumer.offset_for_time(topic, 0, time_ms - self.clock_skew_ms)
                start = found if found is not None else consumer.watermarks(topic)[1]
            consumer.assign([Position(topic, 0, start)])
            while True:
                record = consumer.poll(0.2)
                if record is not None:
                    yield bytes(record.value or b"")
        finally:
            consumer.close()


class FailoverBlockSource:
    """A ``sdk.subscriber.BlockSource`` over named ``HeightSource``s (module doc): positions
    are heights; a record at or below the last height handed out is dropped, so a switch never
    repeats a pulse, and the next source starts right after it, so none is missed.
    ``reading`` names the source in use; ``switches`` counts failovers; after ``max_failures``
    consecutive failures without a new block the last error is raised."""

    def __init__(self, sources: Sequence[tuple[str, HeightSource]], *, max_failures: int = 10,
                 pause_s: float = 0.5, after_time_ms: int | None = None,
                 on_switch: Callable[[str, Exception], None] | None = None) -> None:
        """``after_time_ms``: the time of the block a resumed subscriber starts after (its
        checkpoint's ``time_ms``), so a Kafka source is entered through the time index."""
        if not sources:
            raise ValueError("give at least one source")
        self.sources = list(sources)
        self.max_failures = max_failures
        self.pause_s = pause_s
        self.on_switch = on_switch
        self._index = 0
        self.switches = 0
        self.after_time_ms = after_time_ms

    @property
    def reading(self) -> str:
        return self.sources[self._index][0]

    def records(self, after: int | None) -> Iterator[tuple[int, bytes]]:
        last = after or 0
        last_time = self.after_time_ms if last else None
        failures = 0
        while True:
            name, source = self.sources[self._index]
            try:
                for raw in source.from_height(last + 1, last_time):
                    try:
                        record = decode_finalized(raw)
                    except WireError:
                        yield last, raw  # the subscriber rejects it, naming why
                        continue
                    if record.height <= last:
                        continue
                    last, last_time, failures = record.height, record.block.header.time_ms, 0
                    yield record.height, raw
                error: Exception = EOFError(f"{name} ended")
            except GeneratorExit:
                raise
            except Exception as exc:  # any failure of a source: the next one takes over
                error = exc
            failures += 1
            if failures > self.max_failures:
                raise error
            self._index = (self._index + 1) % len(self.sources)
            self.switches += 1
            log.warning("source %s failed (%s); reading %s after height %d", name, error,
                        self.reading, last)
            if self.on_switch is not None:
                self.on_switch(self.reading, error)
            if failures >= len(self.sources):
                time.sleep(self.pause_s)
