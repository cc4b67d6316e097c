"""Publishing chunks and checkpoints of one source to Kafka, and resuming after a crash.

Commit order (what makes "never reuse a sequence number with different bytes" hold):

1. The caller hands over a payload that passed the health tests (``offer``), with its SHA-256.
   It goes to ``entropy.raw`` or, for the configured share, ``entropy.private``
   (``core.pacing.place``; each pool is its own chain).
2. One ahead (``core.pacing``): each pool holds one payload in memory. A new payload for the
   pool publishes the held one, whose ``next_digest`` is the new payload's digest, and is held
   in its place. Publishing extends the in-memory chain (seq = head.next_seq, digest links the
   previous one) and produces the chunk, keyed by source id. The producer is idempotent with
   ``acks=all`` and no compression; all of a source's messages go to one partition, in order.
   The held payload is lost in a crash: the restarted source continues its chain (by
   ``prev_digest``, as always) with a chunk its predecessor did not commit to, which blocks
   include but do not mix. ``close`` publishes the held payloads with a zero ``next_digest``,
   except a public one that pacing still keeps secret (below).
   Paced (``pace(gate)``): the held public payload is revealed only when ``gate`` says every
   public chunk before it is settled (``core.pacing.may_reveal``); until then a public-bound
   payload is withheld (never published) or, with no private share, not taken at all
   (``placement`` answers WAIT, and the caller waits).
3. When a checkpoint is due (every N chunks or T ms), the chain head is signed (ML-DSA-65) and
   the checkpoint is produced after the chunks it covers, on the same partition.
4. Delivery reports advance the *delivered* head; any failed delivery is fatal: ``publish``
   raises ``PublishError`` and the process must restart (step 6), because continuing would leave
   a gap.
5. After a checkpoint's delivery, the state file (delivered head, its partition and offset, last
   checkpointed seq) is replaced atomically (write, fsync, rename). It is never ahead of Kafka.
6. On start, ``resume`` takes the state file and then reads the topic itself from the recorded
   offset to its end (or, with no state file, scans every partition backwards) and continues from
   the newest chunk of this source found there. Chunks produced before a crash but never
   acknowledged are thus either on the topic (and the chain continues after them) or not (and
   their sequence numbers were never published). Kafka is read after the old process is gone:
   a killed producer's connections are closed, so nothing of it lands later.

Back-pressure: the producer queue is bounded (``queue.buffering.max.kbytes``); when full
(``ProducerQueueFullError``), ``publish`` serves delivery reports (``poll``) until there is room,
so memory stays bounded when Kafka is slow.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from protocol.entropy.chain import (
    ChainHead,
    Checkpoint,
    CheckpointPolicy,
    Chunk,
    HealthSummary,
    payload_sha256,
    sign_checkpoint,
)
from protocol.errors import OperationError
from protocol.keys import SigningKey
from services.qrng_ingest.core.ahead import AheadChain, Held, discard, release, take
from services.qrng_ingest.core.pacing import Placement, place, public_open
from streams.codec import CodecError, default_codec
from streams.errors import KafkaOperationError, ProducerQueueFullError
from streams.instance_lock import InstanceLock
from streams.kafka import (
    Delivery,
    KafkaConsumer,
    KafkaProducer,
    Position,
    make_producer,
    make_reader,
)
from streams.settings import Settings


def _zigzag(value: int) -> bytes:
    """Avro ``long``/``int``: zig-zag then base-128 varint."""
    number = (value << 1) ^ (value >> 63)
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


class ChunkEncoder:
    """Avro single-object bytes of ``EntropyChunkPublished`` with one copy of the payload.

    The generic codec copies a 1 MiB payload twice (into a buffer, then out of it); this writes
    the same bytes field by field and joins them once. ``tests/unit/test_qrng_publisher.py``
    checks it byte for byte against ``streams.codec`` on random chunks.
    """

    def __init__(self) -> None:
        codec = default_codec()
        probe = Chunk("x", False, 0, bytes(32), bytes(32), bytes(32), b"", 0, False,
                      HealthSummary())
        self._header = codec.encode("EntropyChunkPublished", probe.to_record())[:10]
        fields = [f["name"] for f in json.loads(
            (Path(__file__).resolve().parents[2] / "schemas" / "EntropyChunkPublished.avsc")
            .read_text())["fields"]]
        if fields != ["source_id", "seq", "prev_digest", "payload_digest", "chunk_digest",
                      "payload", "produced_at_ms", "simulated", "health_rct_max_run",
                      "health_apt_max_count", "health_windows", "private", "health_samples",
                      "health_rct_cutoff", "health_apt_cutoff", "health_apt_window",
                      "health_failures", "next_digest"]:
            raise PublishError(f"EntropyChunkPublished changed ({fields}); update ChunkEncoder")

    def encode(self, chunk: Chunk) -> bytes:
        source = chunk.source_id.encode()
        health = chunk.health
        return b"".join((
            self._header, _zigzag(len(source)), source, _zigzag(chunk.seq),
            b"\x40", chunk.prev_digest, b"\x40", chunk.payload_digest, b"\x40",
            chunk.chunk_digest, _zigzag(len(chunk.payload)), chunk.payload,
            _zigzag(chunk.produced_at_ms), b"\x01" if chunk.simulated else b"\x00",
            _zigzag(health.rct_max_run), _zigzag(health.apt_max_count),
            _zigzag(health.windows), b"\x01" if chunk.private else b"\x00",
            _zigzag(health.samples), _zigzag(health.rct_cutoff), _zigzag(health.apt_cutoff),
            _zigzag(health.apt_window), _zigzag(health.failures), b"\x40", chunk.next_digest,
        ))


class PublishError(OperationError):
    """A chunk or checkpoint could not be published; the process must restart and resume."""


class ResumeError(OperationError):
    """The state file or the topic tail cannot be read, or they contradict each other."""


POOLS = (False, True)  # private flag: public entropy.raw, private entropy.private


def topic_for(settings: Settings, private: bool) -> str:
    return settings.topic("entropy.private" if private else "entropy.raw")


@dataclass(frozen=True, slots=True)
class ChainPosition:
    """A delivered point of one chain: head, where its last chunk sits, last checkpointed seq."""

    head: ChainHead = field(default_factory=ChainHead)
    checkpointed_seq: int = -1
    partition: int | None = None
    offset: int | None = None

    def to_json_dict(self) -> dict[str, Any]:
        return {"next_seq": self.head.next_seq, "digest": self.head.digest.hex(),
                "checkpointed_seq": self.checkpointed_seq, "partition": self.partition,
                "offset": self.offset}

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> ChainPosition:
        return cls(ChainHead(int(data["next_seq"]), bytes.fromhex(data["digest"])),
                   int(data["checkpointed_seq"]), data.get("partition"), data.get("offset"))


class StateFile:
    """``<state_dir>/qrng/<source_id>.json``: the delivered position of both chains."""

    def __init__(self, path: Path, source_id: str) -> None:
        self.path = path
        self._source_id = source_id

    def load(self) -> dict[bool, ChainPosition]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            if data["source_id"] != self._source_id:
                raise ResumeError(f"state file {self.path} belongs to source "
                                  f"{data['source_id']!r}, not {self._source_id!r}")
            return {pool: ChainPosition.from_json_dict(data["chains"][name])
                    for pool, name in ((False, "public"), (True, "private"))
                    if name in data["chains"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ResumeError(f"cannot read state file {self.path}: {exc}") from exc

    def save(self, positions: dict[bool, ChainPosition]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"source_id": self._source_id, "chains": {
            "private" if pool else "public": position.to_json_dict()
            for pool, position in positions.items()}}
        temporary = self.path.with_suffix(".tmp")
        with open(temporary, "w") as handle:
            handle.write(json.dumps(data, indent=2))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)


def _tail_of_partition(
    consumer: KafkaConsumer, topic: str, partition: int, start: int, end: int, source_id: str,
    private: bool,
) -> tuple[ChainPosition | None, int]:
    """Newest chunk and checkpoint of (source, pool) in offsets [start, end) of one partition."""
    codec = default_codec()
    key = source_id.encode()
    found: ChainPosition | None = None
    checkpointed = -1
    consumer.assign([Position(topic, partition, start)])
    next_offset = start
    deadline = time.monotonic() + 60
    while next_offset < end:
        if time.monotonic() > deadline:
            raise ResumeError(f"timed out reading {topic}[{partition}] {start}..{end}")
        message = consumer.poll(1.0)
        if message is None:
            continue
        offset = message.offset
        next_offset = offset + 1
        if message.key != key:
            continue
        try:
            decoded = codec.decode(message.value)
        except CodecError as exc:
            raise ResumeError(f"{topic}[{partition}]@{offset}: {exc}") from exc
        record = decoded.record
        if record["source_id"] != source_id or bool(record.get("private")) != private:
            continue
        if decoded.schema == "EntropyChunkPublished":
            chunk = Chunk.from_record(record)
            found = ChainPosition(ChainHead(chunk.seq + 1, chunk.chunk_digest),
                                  found.checkpointed_seq if found else -1,
                                  partition, offset)
        elif decoded.schema == "EntropyCheckpointSigned":
            checkpointed = max(checkpointed, int(record["last_seq"]))
    if found is not None:
        found = replace(found, checkpointed_seq=max(found.checkpointed_seq, checkpointed))
    return found, checkpointed


def read_tail(
    settings: Settings, source_id: str, private: bool, known: ChainPosition | None,
    *, window: int = 256,
) -> ChainPosition | None:
    """The newest delivered position of a chain according to the topic itself.

    With ``known`` (from the state file), reads its partition forward from the known offset;
    otherwise scans every partition backwards in windows of ``window`` messages until a
    checkpoint of the chain (or the partition's start) is reached.
    """
    topic = topic_for(settings, private)
    consumer = make_reader(settings, f"qrng-resume-{source_id}-{os.getpid()}",
                           **{"isolation.level": "read_uncommitted"})
    try:
        partitions = consumer.partitions(topic)
        if not partitions:
            raise ResumeError(f"topic {topic} is not available")
        if known is not None and known.partition is not None and known.offset is not None:
            low, high = consumer.watermarks(topic, known.partition)
            start = max(low, int(known.offset) + 1)
            found, checkpointed = _tail_of_partition(
                consumer, topic, known.partition, start, high, source_id, private)
            if found is None:
                return replace(known, checkpointed_seq=max(known.checkpointed_seq, checkpointed))
            return replace(found, checkpointed_seq=max(found.checkpointed_seq,
                                                       known.checkpointed_seq))
        best: ChainPosition | None = None
        for partition in partitions:
            low, high = consumer.watermarks(topic, partition)
            end = high
            newest: ChainPosition | None = None
            while end > low:
                start = max(low, end - window)
                found, checkpointed = _tail_of_partition(
                    consumer, topic, partition, start, end, source_id, private)
                if newest is None and found is not None:
                    newest = found
                if newest is not None and checkpointed > newest.checkpointed_seq:
                    newest = replace(newest, checkpointed_seq=checkpointed)
                if checkpointed >= 0:
                    break
                end = start
            if newest is not None and (best is None or newest.head.next_seq > best.head.next_seq):
                best = newest
        return best
    except KafkaOperationError as exc:
        raise ResumeError(f"cannot read the tail of {topic}: {exc}") from exc
    finally:
        consumer.close()


def resume_positions(
    settings: Settings, source_id: str, state: StateFile
) -> dict[bool, ChainPosition]:
    """Where each chain continues: the newer of the state file and the topic tail."""
    saved = state.load()
    positions: dict[bool, ChainPosition] = {}
    for pool in POOLS:
        known = saved.get(pool)
        tail = read_tail(settings, source_id, pool, known)
        candidates = [p for p in (known, tail) if p is not None]
        positions[pool] = (max(candidates, key=lambda p: p.head.next_seq) if candidates
                           else ChainPosition())
    return positions


# What the ingest producer may have in flight: well inside the socket's send buffer (at most
# 4 MiB on Linux unless net.core.wmem_max is raised). With 8 MiB batches and librdkafka's
# idempotent default of 5 requests in flight, its broker thread spun while requests waited for
# room in the socket (poll, clock_gettime and its locks: 4-5 ms of CPU per MB against 0.6-1.0
# within this budget, at no higher rate; docs/performance.md).
RECORD_OVERHEAD = 64 * 1024  # bound on a chunk record's framing and Kafka's record overhead
IN_FLIGHT_BYTES = 2 * (1024 * 1024 + RECORD_OVERHEAD)  # two 1 MiB chunks with their framing


def producer_tuning(chunk_size: int = 1 << 20) -> dict[str, Any]:
    """librdkafka settings for chunks of ``chunk_size``: a deep local queue keeps the network
    busy while the caller tests and hashes; a batch holds 1 MiB, and as many requests may be in
    flight as ``IN_FLIGHT_BYTES`` holds: two for chunks up to 1 MiB, one for larger ones."""
    batch = 1024 * 1024
    request = max(batch, chunk_size + RECORD_OVERHEAD)
    return {
        "linger.ms": 5,
        "batch.size": batch,
        "max.in.flight.requests.per.connection": max(1, IN_FLIGHT_BYTES // request),
        "queue.buffering.max.kbytes": 128 * 1024,
        "queue.buffering.max.messages": 100_000,
        "socket.send.buffer.bytes": 4 * 1024 * 1024,
    }


PRODUCER_TUNING: dict[str, Any] = producer_tuning()  # 1 MiB chunks (the default; bench.ingest)


class RevealGate(Protocol):
    """What pacing asks the chain (``services.qrng_ingest.pacing.ChainWatch``): the newest
    public seq of this source that is settled, None while not known."""

    def settled_seq(self) -> int | None: ...


@dataclass(slots=True)
class PublisherStats:
    chunks: int = 0
    bytes: int = 0
    withheld: int = 0  # public-bound payloads dropped while pacing kept the chain waiting
    checkpoints: int = 0
    delivered_chunks: int = 0
    latency_sum_ms: float = 0.0
    latency_count: int = 0


class ChunkPublisher:
    """Publishes one source's chunks and checkpoints (see the module doc for the order).

    Not thread-safe: one thread calls ``publish``/``maybe_checkpoint``/``poll``; delivery
    callbacks run inside those calls.
    """

    def __init__(
        self,
        settings: Settings,
        source_id: str,
        key: SigningKey,
        *,
        positions: dict[bool, ChainPosition],
        state: StateFile,
        checkpoint_policy: CheckpointPolicy | None = None,
        private_share: float = 0.0,
        producer: KafkaProducer | None = None,
        on_latency: Callable[[float], None] | None = None,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        instance: InstanceLock | None = None,
        **producer_overrides: Any,
    ) -> None:
        if not 0.0 <= private_share <= 1.0:
            raise PublishError(f"private share {private_share} is outside 0..1")
        self._instance = instance  # released by ``close`` (``open_publisher`` takes it)
        self.source_id = source_id
        self._key_bytes = source_id.encode()
        self._signing_key = key
        self._policy = checkpoint_policy or CheckpointPolicy()
        self._private_share = private_share
        self._private_credit = 0.0
        self._state = state
        self._clock_ms = clock_ms
        self._on_latency = on_latency
        self._codec = default_codec()
        self._chunk_encoder = ChunkEncoder()
        self._topics = {pool: topic_for(settings, pool) for pool in POOLS}
        self._producer = producer or make_producer(settings, **{**PRODUCER_TUNING,
                                                                **producer_overrides})
        self._gate: RevealGate | None = None
        self._chains = {pool: AheadChain(source_id, pool, positions[pool].head)
                        for pool in POOLS}
        self.delivered = dict(positions)
        self._unsigned_from = {pool: positions[pool].checkpointed_seq + 1 for pool in POOLS}
        self._last_checkpoint_ms = {pool: clock_ms() for pool in POOLS}
        self._fatal: str | None = None
        self.stats = PublisherStats()

    @property
    def producer(self) -> KafkaProducer:
        return self._producer

    def _check(self) -> None:
        if self._fatal is not None:
            raise PublishError(self._fatal)

    def _produce(self, private: bool, value: bytes,
                 on_delivery: Callable[[Delivery], None]) -> None:
        topic = self._topics[private]
        while True:
            self._check()
            try:
                self._producer.produce(topic, value, self._key_bytes, on_delivery=on_delivery)
                return
            except ProducerQueueFullError:
                self._producer.poll(0.05)  # wait for acknowledgements
            except KafkaOperationError as exc:
                raise PublishError(f"cannot produce to {topic}: {exc}") from exc

    @property
    def heads(self) -> dict[bool, ChainHead]:
        """Per pool, the head of what was published (held payloads are not in it)."""
        return {pool: self._chains[pool].head for pool in POOLS}

    def pace(self, gate: RevealGate) -> None:
        """Pace the public chain by ``gate`` from now on (module doc); call before ``offer``.
        (The gate is built after resuming: where the chain stands depends on the head.)"""
        self._gate = gate

    @property
    def paced(self) -> bool:
        return self._gate is not None

    def _public_open(self) -> bool:
        chain = self._chains[False]
        return public_open(chain.held is not None, chain.head.next_seq,
                           None if self._gate is None else self._gate.settled_seq(),
                           self._gate is not None)

    def placement(self) -> Placement:
        """Where a payload offered now would go (changes nothing): WAIT asks the caller to
        take no payload until the chain settles the revealed public chunk."""
        return place(self._private_credit, self._private_share, self._public_open())[0]

    def offer(
        self, payload: bytes, *, simulated: bool, health: HealthSummary,
        produced_at_ms: int | None = None, payload_digest: bytes | None = None,
    ) -> tuple[Placement, Chunk | None]:
        """Take one healthy payload (module doc, step 2): where it went, and the chunk published
        for it (its pool's held predecessor, committing to it; delivery is async), if any.
        WITHHELD and WAIT: the payload was not taken (never published).
        ``payload_digest``: its SHA-256 if already computed (the service hashes off the main
        thread)."""
        self._check()
        placement, self._private_credit = place(self._private_credit, self._private_share,
                                                self._public_open())
        if placement in (Placement.WITHHELD, Placement.WAIT):
            self.stats.withheld += 1
            return placement, None
        private = placement is Placement.PRIVATE
        held = Held(payload, payload_sha256(payload) if payload_digest is None else payload_digest,
                    self._clock_ms() if produced_at_ms is None else produced_at_ms, simulated,
                    health)
        self._chains[private], chunk = take(self._chains[private], held)
        if chunk is not None:
            self._produce_chunk(chunk)
        return placement, chunk

    def _produce_chunk(self, chunk: Chunk) -> None:
        """Produce a chunk ``take``/``release`` made (the chain's head already counts it)."""
        private = chunk.private
        value = self._chunk_encoder.encode(chunk)
        sent_at = time.perf_counter()
        next_head = ChainHead(chunk.seq + 1, chunk.chunk_digest)

        def delivered(report: Delivery) -> None:
            if report.error is not None:
                self._fatal = (f"chunk {self.source_id}#{chunk.seq} was not delivered: "
                               f"{report.error}; restart to resume from the topic")
                return
            latency_ms = (time.perf_counter() - sent_at) * 1000
            self.stats.delivered_chunks += 1
            self.stats.latency_sum_ms += latency_ms
            self.stats.latency_count += 1
            if self._on_latency is not None:
                self._on_latency(latency_ms)
            previous = self.delivered[private]
            self.delivered[private] = ChainPosition(
                next_head, previous.checkpointed_seq, report.partition, report.offset)

        self._produce(private, value, delivered)
        self.stats.chunks += 1
        self.stats.bytes += len(chunk.payload)
        self._producer.poll(0)
        self.maybe_checkpoint()

    def maybe_checkpoint(self, *, force: bool = False) -> list[Checkpoint]:
        """Sign and produce a checkpoint for every chain whose policy says it is due."""
        self._check()
        made: list[Checkpoint] = []
        now = self._clock_ms()
        for pool in POOLS:
            head = self._chains[pool].head
            unsigned = head.next_seq - self._unsigned_from[pool]
            if unsigned <= 0:
                continue
            # A paced public chunk is signed at once: blocks include only checkpointed chunks,
            # and the next one waits for that block (one signature per block costs nothing).
            paced_public = not pool and self._gate is not None
            if not (force or paced_public
                    or self._policy.due(unsigned, now - self._last_checkpoint_ms[pool])):
                continue
            checkpoint = sign_checkpoint(
                self._signing_key, source_id=self.source_id, private=pool,
                first_seq=self._unsigned_from[pool], head=head, signed_at_ms=now)
            value = self._codec.encode("EntropyCheckpointSigned", checkpoint.to_record())
            last_seq = checkpoint.last_seq

            def delivered(report: Delivery, pool: bool = pool, last_seq: int = last_seq) -> None:
                if report.error is not None:
                    self._fatal = (f"checkpoint {self.source_id} ..#{last_seq} was not "
                                   f"delivered: {report.error}; restart to resume from the topic")
                    return
                self.delivered[pool] = replace(self.delivered[pool], checkpointed_seq=last_seq)
                self._save_state()

            self._produce(pool, value, delivered)
            self._unsigned_from[pool] = head.next_seq
            self._last_checkpoint_ms[pool] = now
            self.stats.checkpoints += 1
            made.append(checkpoint)
        return made

    def _save_state(self) -> None:
        try:
            self._state.save(self.delivered)
        except OSError as exc:
            self._fatal = f"cannot write state file {self._state.path}: {exc}"

    def poll(self, timeout_s: float = 0.0) -> None:
        self._producer.poll(timeout_s)
        self._check()

    def close(self, timeout_s: float = 30.0) -> list[Chunk]:
        """Publish the held payloads committing to nothing, checkpoint what is unsigned, wait
        for every acknowledgement, save the state, let the next process of this source in.
        Returns the chunks published here.

        A held public payload that pacing keeps secret (its predecessor is not in a finalized
        block yet) stays unpublished and is lost: revealing it would break the pacing rule, and
        keeping it for the next run would mean writing secret payloads to disk. The next run
        continues the chain with an uncommitted chunk, as after a crash."""
        try:
            return self._close(timeout_s)
        finally:
            if self._instance is not None:
                self._instance.release()

    def _close(self, timeout_s: float) -> list[Chunk]:
        released: list[Chunk] = []
        try:
            if self._fatal is None:
                for pool in POOLS:
                    chain = self._chains[pool]
                    if not pool and not self._public_open():  # pacing keeps it secret
                        self._chains[pool] = discard(chain)
                        continue
                    self._chains[pool], chunk = release(chain)
                    if chunk is not None:
                        self._produce_chunk(chunk)
                        released.append(chunk)
                self.maybe_checkpoint(force=True)
            remaining = self._producer.flush(timeout_s)
        except KafkaOperationError as exc:
            raise PublishError(f"cannot flush the producer: {exc}") from exc
        if remaining:
            raise PublishError(f"{remaining} messages still unacknowledged after {timeout_s}s")
        self._check()
        self._save_state()
        return released


def open_publisher(
    settings: Settings, source_id: str, key: SigningKey, *,
    checkpoint_policy: CheckpointPolicy | None = None, private_share: float = 0.0,
    on_latency: Callable[[float], None] | None = None, **producer_overrides: Any,
) -> ChunkPublisher:
    """Resume both chains of ``source_id`` (state file + topic tail) and build the publisher.
    Only one process of a source runs on a host (``streams.instance_lock``): a second one would
    extend the same chain from the same state, and the two chains would fork."""
    path = settings.state_dir / "qrng" / f"{source_id}.json"
    instance = InstanceLock(path.with_name(path.name + ".lock"), f"QRNG source {source_id!r}",
                            "two processes of one source extend its hash chain from the same "
                            "head, and the chain forks")
    try:
        state = StateFile(path, source_id)
        try:
            positions = resume_positions(settings, source_id, state)
        except KafkaOperationError as exc:
            raise ResumeError(f"cannot resume {source_id}: {exc}") from exc
        return ChunkPublisher(settings, source_id, key, positions=positions, state=state,
                              checkpoint_policy=checkpoint_policy, private_share=private_share,
                              on_latency=on_latency, instance=instance, **producer_overrides)
    except BaseException:
        instance.release()
        raise

