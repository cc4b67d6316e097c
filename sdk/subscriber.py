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
from typing import Any, Protocol

from protocol.chain import ChainTip
from protocol.check import check_commit, check_header
from protocol.codec import WireError
from protocol.commit import (
    TrustLevel,
    verify_commit_light,
    verify_commit_light_trusting,
)
from protocol.finalized import FinalizedRecord
from protocol.follow import (
    BlockOutcome,
    FollowError,
    ForkError,
    GapError,
    UnverifiedConflictError,
    conflict_error,
)
from protocol.pulse import PulseStatus, is_random, pulse_status
from protocol.validators import ValidatorSet, validator_set_from_json, validator_set_to_json
from sdk.errors import BlockGapError, BlockRejectedError, ForkDetectedError, TrustExpiredError
from services.ledger.core.chain_spec import ChainSpec
from services.ledger.core.params import Params
from streams.chain_wire import decode_finalized

DAY_MS = 86_400_000
MAX_CLOCK_DRIFT_MS = 10_000  # as CometBFT's light client


def trusting_period_for(params: Params) -> int:
    """Two thirds of the unbonding period of ``params``, in ms (a day is ``blocks_per_day``)."""
    unbonding_ms = params.unbonding_period_blocks * DAY_MS // max(1, params.blocks_per_day)
    return unbonding_ms * 2 // 3


DEFAULT_TRUSTING_PERIOD_MS = trusting_period_for(Params())


def _wall_clock_ms() -> int:
    return int(time.time() * 1000)


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


@dataclass(frozen=True, slots=True)
class TrustedCheckpoint:
    """A block the application trusts and the validator set that governs the next height."""

    chain_id: str
    height: int
    block_hash: bytes
    randomness: bytes
    time_ms: int
    next_validators: ValidatorSet

    def to_json(self) -> str:
        return json.dumps({
            "chain_id": self.chain_id, "height": self.height, "block_hash": self.block_hash.hex(),
            "randomness": self.randomness.hex(), "time_ms": self.time_ms,
            "next_validators": validator_set_to_json(self.next_validators)})

    @classmethod
    def from_json(cls, text: str) -> TrustedCheckpoint:
        data = json.loads(text)
        return cls(data["chain_id"], int(data["height"]), bytes.fromhex(data["block_hash"]),
                   bytes.fromhex(data["randomness"]), int(data["time_ms"]),
                   validator_set_from_json(data["next_validators"]))

    def save(self, path: Path | str) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: Path | str) -> TrustedCheckpoint:
        return cls.from_json(Path(path).read_text())

    @classmethod
    def from_genesis(cls, genesis: Path | str) -> TrustedCheckpoint:
        """Height 0: the genesis itself (hash, randomness R_0 and the set of height 1)."""
        spec = ChainSpec.load(genesis)
        tip = spec.initial.tip
        return cls(spec.chain_id, 0, tip.previous_block_hash, tip.previous_randomness,
                   tip.previous_time_ms, spec.initial.validators)


class BlockSource(Protocol):
    def records(self, after: int | None) -> Iterator[tuple[int, bytes]]:
        """``(position, BlockFinalized bytes)`` after position ``after`` (None: the start)."""
        ...


ValidatorSets = Callable[[int], ValidatorSet]


class _LightVerifier:
    def __init__(self, checkpoint: TrustedCheckpoint, validator_sets: ValidatorSets | None,
                 trust_level: TrustLevel, trusting_period_ms: int = DEFAULT_TRUSTING_PERIOD_MS,
                 clock_ms: Callable[[], int] = _wall_clock_ms,
                 max_clock_drift_ms: int = MAX_CLOCK_DRIFT_MS) -> None:
        self.trusted = checkpoint
        self.validator_sets = validator_sets
        self.trust_level = trust_level
        self.trusting_period_ms = trusting_period_ms
        self.clock_ms = clock_ms
        self.max_clock_drift_ms = max_clock_drift_ms
        self.validators = checkpoint.next_validators  # governs trusted.height + 1
        self.hashes: dict[int, bytes] = {checkpoint.height: checkpoint.block_hash}
        self.sets: dict[int, ValidatorSet] = {}  # the set that signed a verified height

    def _check_trust(self, height: int, time_ms: int) -> None:
        """The trusted block must be younger than the trusting period, the new one not from
        the future (module doc)."""
        now = self.clock_ms()
        age = now - self.trusted.time_ms
        if age >= self.trusting_period_ms:
            raise TrustExpiredError(
                height, f"the trusted block {self.trusted.height} is {age // 1000} s old, not "
                        f"younger than the trusting period of {self.trusting_period_ms // 1000} "
                        "s: its validators may have unbonded; start from a newer checkpoint or "
                        "verify fully from genesis")
        if time_ms > now + self.max_clock_drift_ms:
            raise BlockRejectedError(height, f"block time is {time_ms - now} ms ahead of this "
                                             f"clock (more than {self.max_clock_drift_ms} ms)")

    def _set_for(self, height: int, wanted_hash: bytes) -> ValidatorSet:
        if self.validators.hash() == wanted_hash:
            return self.validators
        if self.validator_sets is None:
            raise BlockRejectedError(height, "validators hash names a set this subscriber does "
                                             "not know (wrong validator set, or pass "
                                             "validator_sets= to fetch a new one)")
        fetched = self.validator_sets(height)
        if fetched.hash() != wanted_hash:
            raise BlockRejectedError(height, "the fetched validator set does not match the "
                                             "header's validators hash")
        return fetched

    def verify(self, record: FinalizedRecord) -> bool:
        """True to yield, False for a harmless duplicate; raises on anything else."""
        block, header, height = record.block, record.block.header, record.height
        trusted = self.trusted
        if height <= trusted.height:
            known = self.hashes.get(height)
            if known is not None and known != block.hash:
                error = conflict_error(record, known, self.sets.get(height))
                if isinstance(error, ForkError):
                    raise ForkDetectedError(height, str(error))
                raise error
            return False
        if height > trusted.height + 1:
            raise BlockGapError(height, f"expected height {trusted.height + 1}")
        self._check_trust(height, header.time_ms)
        if header.validators_hash != self.validators.hash():
            raise BlockRejectedError(height, "validators hash does not match the trusted "
                                             "validator set (wrong validator set)")
        # No application state here: the app hash, the next set and the registered source
        # count are taken from the header (the next set is checked against its hash below, the
        # others by full verifiers, and the certificate's signers vouch for them).
        tip = ChainTip(trusted.chain_id, trusted.height + 1, trusted.block_hash, trusted.time_ms,
                       trusted.randomness, (), header.app_hash, self.validators.hash(),
                       header.next_validators_hash, header.registered_sources)
        findings = check_header(tip, self.validators, block)
        if findings:
            raise BlockRejectedError(height, findings[0].reason)
        finding = check_commit(header.chain_id, self.validators, block, record.commit)
        if finding is not None:
            raise BlockRejectedError(height, finding.reason)
        next_set = self._set_for(height + 1, header.next_validators_hash)
        self._advance(record, self.validators, next_set)
        return True

    def _advance(self, record: FinalizedRecord, signed_by: ValidatorSet,
                 next_set: ValidatorSet) -> None:
        header = record.block.header
        self.trusted = TrustedCheckpoint(header.chain_id, record.height, record.block.hash,
                                         header.randomness, header.time_ms, next_set)
        self.validators = next_set
        self.hashes[record.height] = record.block.hash
        self.sets[record.height] = signed_by
        if len(self.hashes) > 10_000:  # heights only grow, so the first key is the oldest
            del self.hashes[next(iter(self.hashes))]
            del self.sets[next(iter(self.sets))]

    def skip_to(self, record: FinalizedRecord) -> None:
        block, header, height = record.block, record.block.header, record.height
        if height <= self.trusted.height:
            raise BlockRejectedError(height, "skip target is not beyond the trusted height")
        if header.chain_id != self.trusted.chain_id or header.time_ms <= self.trusted.time_ms:
            raise BlockRejectedError(height, "skip target has another chain id or older time")
        self._check_trust(height, header.time_ms)
        mismatch = block.structural_problem()
        if mismatch is not None:
            raise BlockRejectedError(height, mismatch.reason)
        trusting = verify_commit_light_trusting(header.chain_id, self.validators, record.commit,
                                                self.trust_level)
        if not trusting.ok:
            raise BlockRejectedError(height, f"not enough trusted validators signed: "
                                             f"{trusting.reason}")
        own = self._set_for(height, header.validators_hash)
        light = verify_commit_light(header.chain_id, block.hash, height, record.commit, own)
        if not light.ok:
            raise BlockRejectedError(height, f"commit does not verify: {light.reason}")
        self._advance(record, own, self._set_for(height + 1, header.next_validators_hash))


class BlockSubscriber:
    """Verified blocks from ``source`` (see module doc). Iterate it; ``position`` and
    ``checkpoint()`` say where to resume."""

    def __init__(self, source: BlockSource, *, genesis: Path | str | None = None,
                 checkpoint: TrustedCheckpoint | None = None,
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
        self._light = (_LightVerifier(checkpoint, validator_sets, trust_level or TrustLevel(),
                                      trusting_period_ms, clock_ms, max_clock_drift_ms)
                       if checkpoint is not None else None)
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

    def checkpoint(self) -> TrustedCheckpoint:
        """A checkpoint to start a light subscriber from later (the last verified block)."""
        if self._light is not None:
            return self._light.trusted
        assert self._follower is not None
        chain = self._follower.chain
        tip = chain.tip
        return TrustedCheckpoint(chain.chain_id, tip.height - 1, tip.previous_block_hash,
                                 tip.previous_randomness, tip.previous_time_ms, chain.validators)

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
