"""``BlockSubscriber``: finalized blocks, each verified before it is handed over.

Sources (anything yielding ``(position, BlockFinalized bytes)``):

- ``KafkaBlockSource``: reads ``chain.blocks`` directly (the position is the Kafka offset);
- ``SseBlockSource``: the gateway's ``/v1/stream/blocks`` (the position is the height, sent as
  the SSE event id; a dropped connection is resumed with ``Last-Event-ID``).

Both carry the very bytes the tally wrote, so verification never trusts the gateway or Kafka.

Two ways to trust:

- ``genesis=`` (full verification): a ``BlockFollower`` checks every block from height 1 —
  hash link, chain id, time, proposer, body against header, randomness re-derived from the
  previous randomness and the entropy references, last commit, evidence, the commit
  certificate against the validator set of the height (+2/3 of power), and the state hash by
  re-executing the ledger (which is how validator-set changes are tracked). Resuming from a
  stored height re-verifies the earlier blocks silently and yields only the later ones.
- ``checkpoint=`` (light client): a ``TrustedCheckpoint`` (height, block hash, randomness and
  the validator set of the next height) taken from a source the application trusts, e.g. a
  previous run (``subscriber.checkpoint()``). Each block must link to it, derive its
  randomness from it, name a validator set whose hash is known (the tracked set, or one from
  ``validator_sets(height)`` whose hash matches the header) and carry a certificate with +2/3
  of that set. The ledger is not re-executed, so the state hash is not checked.
  ``skip_to`` catches up over a long distance in one step (CometBFT's skipping verification):
  trusted validators holding more than 1/3 of the trusted power must have signed the far
  block, and +2/3 of the far block's own set. The far block's randomness is then accepted on
  the strength of those signatures; derivation checks resume with the next block.

  Trusting period (as CometBFT's light client): trust in a validator set lasts only as long as
  its validators can still be punished, i.e. less than the unbonding period. A light subscriber
  refuses to verify anything (skipping or the next block) from a trusted block whose time is
  ``trusting_period_ms`` or more in the past (``TrustExpiredError``: start from a newer
  checkpoint, or verify fully from genesis), and refuses blocks timed more than
  ``max_clock_drift_ms`` ahead of its clock. The default trusting period is two thirds of the
  unbonding period of the default genesis parameters (14 days of 21;
  ``trusting_period_for(params)`` gives it for a chain's own parameters). Every verified block
  renews the trust, so a subscriber that keeps up never expires.

Any failure raises ``BlockRejectedError`` (``BlockGapError`` when heights jump,
``ForkDetectedError`` for a second block at a known height whose certificate verifies) with the
reason; nothing unverified is ever yielded (a verified block whose pulse carried no fresh
entropy is yielded with ``is_random`` False, and never becomes ``latest_random``). A duplicate
of a known block is skipped silently;
a second block at a known height whose certificate does *not* verify is not a fork (anyone who
can write the topic can append one): it is skipped and listed in ``skipped``, and the stream
goes on.
"""

from __future__ import annotations

import base64
import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self

from protocol import light as protocol_light
from protocol.codec import WireError
from protocol.commit import TrustLevel
from protocol.finalized import FinalizedRecord
from protocol.follow import (
    BlockOutcome,
    FollowError,
    ForkError,
    GapError,
    UnverifiedConflictError,
)
from protocol.pulse import PulseStatus, is_random, pulse_status
from sdk.errors import BlockGapError, BlockRejectedError, ForkDetectedError
from services.ledger.core.chain_spec import DAY_MS as DAY_MS  # re-exported
from services.ledger.core.chain_spec import ChainSpec, trusting_period_for
from services.ledger.core.params import Params
from streams.chain_wire import decode_finalized

MAX_CLOCK_DRIFT_MS = protocol_light.MAX_CLOCK_DRIFT_MS


DEFAULT_TRUSTING_PERIOD_MS = trusting_period_for(Params())


_wall_clock_ms = protocol_light.wall_clock_ms


@dataclass(frozen=True, slots=True)
class VerifiedBlock:
    """A block that passed every check; ``position`` resumes the source after it."""

    record: FinalizedRecord
    position: int
    raw: bytes

    @property
    def height(self) -> int:
        return self.record.height

    @property
    def randomness(self) -> bytes:
        return self.record.block.header.randomness

    @property
    def block_hash(self) -> bytes:
        return self.record.block.hash

    @property
    def pulse_status(self) -> PulseStatus:
        """NIST-like status of this pulse (``protocol.pulse``): 0 is all good."""
        return pulse_status(self.record.block.header)

    @property
    def is_random(self) -> bool:
        """False when the block carried no fresh entropy, or from too few sources: then its
        randomness was computable in advance and must not be used as a random value."""
        return is_random(self.pulse_status)


class TrustedCheckpoint(protocol_light.TrustedCheckpoint):
    """``protocol.light.TrustedCheckpoint`` with a constructor from a genesis file (which needs
    the ledger to compute the initial validator set)."""

    __slots__ = ()

    @classmethod
    def from_genesis(cls, genesis: Path | str) -> Self:
        """Height 0: the genesis itself (hash, randomness R_0 and the set of height 1)."""
        at = ChainSpec.load(genesis).checkpoint()
        return cls(at.chain_id, at.height, at.block_hash, at.randomness, at.time_ms,
                   at.next_validators, at.accumulator)


class BlockSource(Protocol):
    def records(self, after: int | None) -> Iterator[tuple[int, bytes]]:
        """``(position, BlockFinalized bytes)`` after position ``after`` (None: the start)."""
        ...


ValidatorSets = protocol_light.ValidatorSets


class BlockSubscriber:
    """Verified blocks from ``source`` (see module doc). Iterate it; ``position`` and
    ``checkpoint()`` say where to resume."""

    def __init__(self, source: BlockSource, *, genesis: Path | str | None = None,
                 checkpoint: protocol_light.TrustedCheckpoint | None = None,
                 validator_sets: ValidatorSets | None = None,
                 resume_after: tuple[int, int] | None = None,
                 trust_level: TrustLevel | None = None,
                 trusting_period_ms: int = DEFAULT_TRUSTING_PERIOD_MS,
                 clock_ms: Callable[[], int] = _wall_clock_ms,
                 max_clock_drift_ms: int = MAX_CLOCK_DRIFT_MS) -> None:
        """``resume_after=(position, height)``: continue a previous run (with ``genesis``, the
        blocks up to that height are re-verified from the start and not yielded again).
        ``trusting_period_ms``, ``clock_ms`` (wall clock in ms) and ``max_clock_drift_ms``
        bound the light client's trust (module doc)."""
        if (genesis is None) == (checkpoint is None):
            raise ValueError("give exactly one of genesis= or checkpoint=")
        self.source = source
        self._follower = ChainSpec.load(genesis).follower() if genesis else None
        self._light = (protocol_light.LightVerifier(
            checkpoint, validator_sets, trust_level or TrustLevel(), trusting_period_ms,
            clock_ms, max_clock_drift_ms) if checkpoint is not None else None)
        self.position: int | None = None
        self._yield_after = 0
        if resume_after is not None:
            position, height = resume_after
            self._yield_after = height
            if self._light is not None:
                self.position = position
        self.last: VerifiedBlock | None = None
        self.latest_random: VerifiedBlock | None = None  # the last block with ``is_random``
        # (position, reason) of records skipped as conflicting blocks nobody signed, newest last
        self.skipped: deque[tuple[int, str]] = deque(maxlen=1000)

    @property
    def next_height(self) -> int:
        if self._follower is not None:
            return self._follower.next_height
        assert self._light is not None
        return self._light.trusted.height + 1

    def checkpoint(self) -> protocol_light.TrustedCheckpoint:
        """A checkpoint to start a light subscriber from later (the last verified block)."""
        if self._light is not None:
            return self._light.trusted
        assert self._follower is not None
        chain = self._follower.chain
        tip = chain.tip
        return TrustedCheckpoint(chain.chain_id, tip.height - 1, tip.previous_block_hash,
                                 tip.previous_randomness, tip.previous_time_ms, chain.validators,
                                 tip.accumulator)

    def verify(self, raw: bytes, position: int) -> VerifiedBlock | None:
        """Verify one record; the block, or None for a harmless duplicate or a conflicting
        record nobody signed (listed in ``skipped``). Raises ``BlockRejectedError`` (state
        unchanged) when it does not verify."""
        try:
            record = decode_finalized(raw)
        except WireError as exc:
            raise BlockRejectedError(None, f"undecodable record: {exc}") from exc
        try:
            fresh = self._verify_record(record)
        except UnverifiedConflictError as exc:
            self.skipped.append((position, str(exc)))
            fresh = False
        self.position = position
        if not fresh:
            return None
        self.last = VerifiedBlock(record, position, raw)
        if self.last.is_random:
            self.latest_random = self.last
        return self.last

    def _verify_record(self, record: FinalizedRecord) -> bool:
        if self._light is not None:
            fresh = self._light.verify(record)
        else:
            assert self._follower is not None
            try:
                fresh = self._follower.accept(record) is BlockOutcome.APPLIED
            except UnverifiedConflictError:
                raise
            except ForkError as exc:
                raise ForkDetectedError(record.height, str(exc)) from exc
            except GapError as exc:
                raise BlockGapError(record.height, str(exc)) from exc
            except FollowError as exc:
                raise BlockRejectedError(record.height, _strip(str(exc))) from exc
        return fresh

    def skip_to(self, raw: bytes, position: int) -> VerifiedBlock:
        """Light mode only: trust a far block by skipping verification (see module doc)."""
        if self._light is None:
            raise ValueError("skip_to needs a light subscriber (checkpoint=)")
        try:
            record = decode_finalized(raw)
        except WireError as exc:
            raise BlockRejectedError(None, f"undecodable record: {exc}") from exc
        self._light.skip_to(record)
        self.position = position
        self.last = VerifiedBlock(record, position, raw)
        return self.last

    def __iter__(self) -> Iterator[VerifiedBlock]:
        start = None if self._follower is not None else self.position
        for position, raw in self.source.records(start):
            block = self.verify(raw, position)
            if block is not None and block.height > self._yield_after:
                yield block


def _strip(reason: str) -> str:
    """``"block 7: randomness ..."`` -> ``"randomness ..."`` (the height is a separate field)."""
    head, sep, tail = reason.partition(": ")
    return tail if sep and head.startswith("block ") else reason


class KafkaBlockSource:
    """``chain.blocks`` read directly (one partition); positions are offsets. Reads through the
    streams edge kit's consumer (the SDK stands on ``streams`` for Kafka, as it does for the
    Avro wire format), so a broker failure reaches the caller as a ``streams.errors`` type.

    ``follow=False`` stops at the end of the topic (after ``idle_timeout_s`` without news)."""

    def __init__(self, settings: Any, *, follow: bool = True, idle_timeout_s: float = 5.0
                 ) -> None:
        self.settings = settings
        self.follow = follow
        self.idle_timeout_s = idle_timeout_s

    def records(self, after: int | None) -> Iterator[tuple[int, bytes]]:
        from streams.kafka import Position, make_consumer

        topic = self.settings.topic("chain.blocks")
        consumer = make_consumer(self.settings, f"sdk-subscriber-{time.time_ns()}",
                                 **{"fetch.wait.max.ms": 20})
        try:
            consumer.assign([Position(topic, 0, 0 if after is None else after + 1)])
            idle_since = time.monotonic()
            while True:
                record = consumer.poll(0.2)
                if record is None:
                    if not self.follow and time.monotonic() - idle_since > self.idle_timeout_s:
                        return
                    continue
                idle_since = time.monotonic()
                yield record.offset, bytes(record.value or b"")
        finally:
            consumer.close()


class SseBlockSource:
    """The gateway's SSE stream of blocks; reconnects with ``Last-Event-ID`` after a drop.

    ``from_height`` is where a fresh stream starts; positions are heights. ``max_reconnects``
    bounds consecutive failed reconnects (the counter resets on every received block)."""

    def __init__(self, base_url: str, api_key: str, *, from_height: int = 1,
                 timeout_s: float = 30.0, max_reconnects: int = 10,
                 stop_after: int | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.from_height = from_height
        self.timeout_s = timeout_s
        self.max_reconnects = max_reconnects
        self.stop_after = stop_after  # stop once this height was delivered (tests, examples)

    def records(self, after: int | None) -> Iterator[tuple[int, bytes]]:
        import httpx

        last = after
        failures = 0
        while True:
            headers = {"X-API-Key": self.api_key, "Accept": "text/event-stream"}
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            params = {} if last is not None else {"from": str(self.from_height)}
            try:
                with httpx.stream("GET", f"{self.base_url}/v1/stream/blocks", params=params,
                                  headers=headers, timeout=self.timeout_s) as response:
                    if response.status_code != 200:
                        from sdk.errors import error_from_http

                        response.read()
                        raise error_from_http(response)
                    for event_id, data in parse_sse(response.iter_lines()):
                        if event_id is None:
                            continue
                        height = int(event_id)
                        payload = json.loads(data)
                        last = height
                        failures = 0
                        yield height, base64.b64decode(payload["record"])
                        if self.stop_after is not None and height >= self.stop_after:
                            return
            except (httpx.TransportError, httpx.StreamError):
                failures += 1
                if failures > self.max_reconnects:
                    raise
                time.sleep(min(0.2 * failures, 2.0))


def parse_sse(lines: Iterable[str]) -> Iterator[tuple[str | None, str]]:
    """``(id, data)`` per server-sent event; comments (keep-alives) are skipped."""
    event_id: str | None = None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield event_id, "\n".join(data)
            event_id, data = None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "id":
            event_id = value
        elif field == "data":
            data.append(value)
