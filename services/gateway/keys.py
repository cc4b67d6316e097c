"""The private entropy pool and key delivery (``POST /v1/keys``).

Pool (``PrivatePool``), one consumer thread per gateway:

1. Consume ``entropy.private`` in the consumer group ``<prefix>gateway.keys``: Kafka assigns
   each partition (so each source's hash chain, keyed by source id) to exactly one gateway.
2. Verify every chunk with ``ChainVerifier`` against the sources registered on chain (chunks
   become usable only once a signed checkpoint covers them); rejects are counted and skipped.
3. Before any byte of a verified chunk is used, commit the offset just past that chunk
   (synchronously; commits only move forward per partition). So a chunk is consumed once: a
   restarted or rebalanced gateway resumes after every chunk any gateway has started to use,
   and the unused rest of an opened chunk is lost, never reused. If the commit fails (the
   partition moved away), the chunk is dropped.
4. Opened chunks go into a small in-memory buffer; ``draw(n)`` hands out the next ``n`` bytes
   under a lock (two requests never get overlapping bytes) and overwrites the buffer's copy
   with zeros. Python cannot guarantee that no other copy exists (the Kafka message, the
   decoded record); the payload objects are dropped right after the copy.

``draw`` raises ``PoolUnavailable`` (the route answers 503 with ``Retry-After``) when the
buffer is short or the consumer is unhealthy; there is no fallback to OS entropy alone.

Delivery (``KeyService.deliver``): validate keys and the signed ``PayForService`` (its
commitment must be ``protocol.keydelivery.request_commitment`` of this request), check the pool
can serve, then the two payment rules of ``services.gateway.payments``: put the payment on
``ledger.tx`` (if no block has it yet: its account must afford it and its nonce be neither used
nor too far ahead) and wait until a verified block included and executed it; claim it once
across every gateway. Only then draw pool bytes, mix them with OS bytes (HKDF-SHA-512), seal with
X25519 + ML-KEM-768 + AES-256-GCM and sign the delivery with the gateway's delivery key
(protocol in ``protocol.keydelivery``).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol.errors import QuStreamError
from protocol.keydelivery import (
    MAX_LENGTH,
    MIN_LENGTH,
    MLKEM_PUBLIC_BYTES,
    X25519_BYTES,
    delivery_kek,
    delivery_transcript,
    request_commitment,
    units_for,
)
from protocol.keys import SigningKey
from services.gateway.payments import (
    MemorySpentPayments,
    PaymentBook,
    PaymentOutcome,
    SpentPayments,
)
from services.gateway.problems import Problem, unavailable

if TYPE_CHECKING:
    from streams.kafka import Delivery, KafkaConsumer, Position, Record

log = logging.getLogger("qustream.gateway.keys")
POOL_DRAW_BYTES = 32  # at least this many pool bytes go into every key (>= 256 bits)
MAX_NONCE_AHEAD = 64  # a payment's nonce at most this far past the account's pending nonce


class PoolUnavailable(QuStreamError):
    """The private pool cannot serve now; ``retry_after_s`` is a hint."""

    def __init__(self, reason: str, retry_after_s: int = 2) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class KeyPool(Protocol):
    def draw(self, n: int) -> tuple[bytearray, tuple[str, ...]]: ...
    def status(self) -> dict[str, Any]: ...


@dataclass(slots=True)
class _Opened:
    source_id: str
    data: bytearray
    position: int = 0


@dataclass(slots=True)
class BufferPool:
    """The in-memory part: opened chunks handed out once, zeroized as they go."""

    max_bytes: int = 1 << 20
    _chunks: collections.deque[_Opened] = field(default_factory=collections.deque)
    _available: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    healthy: bool = True
    reason: str = "starting"
    served_bytes: int = 0

    @property
    def available(self) -> int:
        return self._available

    def put(self, source_id: str, payload: bytes) -> None:
        with self._lock:
            self._chunks.append(_Opened(source_id, bytearray(payload)))
            self._available += len(payload)

    def draw(self, n: int) -> tuple[bytearray, tuple[str, ...]]:
        with self._lock:
            if not self.healthy:
                raise PoolUnavailable(f"private pool unhealthy: {self.reason}", 5)
            if self._available < n:
                raise PoolUnavailable(f"private pool has {self._available} bytes, {n} needed", 2)
            out = bytearray(n)
            sources: list[str] = []
            filled = 0
            while filled < n:
                chunk = self._chunks[0]
                take = min(n - filled, len(chunk.data) - chunk.position)
                end = chunk.position + take
                out[filled:filled + take] = chunk.data[chunk.position:end]
                chunk.data[chunk.position:end] = bytes(take)  # zeroize the pool's copy
                chunk.position = end
                filled += take
                if chunk.source_id not in sources:
                    sources.append(chunk.source_id)
                if chunk.position == len(chunk.data):
                    self._chunks.popleft()
            self._available -= n
            self.served_bytes += n
            return out, tuple(sources)

    def status(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "reason": self.reason, "available_bytes": self.available,
                "served_bytes": self.served_bytes}


class PrivatePool:
    """``entropy.private`` -> verified chunks -> ``BufferPool`` (see module doc)."""

    def __init__(self, settings: Any, registry: Callable[[], Mapping[str, Any]], *,
                 group_id: str | None = None, low_water: int = 256 * 1024,
                 on_reject: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.group_id = group_id or settings.topic("gateway.keys")
        self.low_water = low_water
        self.buffer = BufferPool()
        self.on_reject = on_reject
        self.verified: collections.deque[tuple[int, int, Any]] = collections.deque()
        self._offsets: dict[tuple[str, int], tuple[int, int]] = {}
        self._committed: dict[int, int] = {}
        self._assigned_partitions: set[int] = set()
        self._verifier: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="private-pool", daemon=True)

    def draw(self, n: int) -> tuple[bytearray, tuple[str, ...]]:
        if not self._thread.is_alive():
            raise PoolUnavailable("private pool consumer is not running", 10)
        return self.buffer.draw(n)

    def status(self) -> dict[str, Any]:
        return {**self.buffer.status(), "verified_chunks_waiting": len(self.verified),
                "partitions": sorted(self._assigned_partitions)}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        from protocol.entropy.verifier import ChainVerifier
        from streams.kafka import make_consumer
        from streams.runloop import RunLoop, by_topic

        topic = self.settings.topic("entropy.private")
        self._verifier = ChainVerifier(_LiveRegistry(self.registry), allow_mid_stream=True)
        consumer = make_consumer(self.settings, self.group_id,
                                 **{"auto.offset.reset": "latest", "fetch.wait.max.ms": 50})
        consumer.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        self.buffer.reason = "ok"

        def tick() -> float:
            self._open_chunks(consumer, topic)
            if consumer.last_error is not None:
                self.buffer.reason = f"consumer error: {consumer.last_error}"
            return 0.1

        try:
            RunLoop(consumer, by_topic({topic: self._accept}), tick=tick, poll_s=0.1,
                    max_records=1, stop_event=self._stop).run()
        except Exception as exc:
            self.buffer.healthy = False
            self.buffer.reason = f"consumer failed: {type(exc).__name__}: {exc}"
            log.exception("private pool consumer failed")
            raise
        finally:
            consumer.close()

    def _on_assign(self, partitions: list[Position]) -> None:
        self._assigned_partitions |= {p.partition for p in partitions}

    def _on_revoke(self, partitions: list[Position]) -> None:
        gone = {p.partition for p in partitions}
        self._assigned_partitions -= gone
        self.verified = collections.deque(v for v in self.verified if v[0] not in gone)

    def _accept(self, record: Record) -> None:
        """Step 2 of the module doc for one record of ``entropy.private``."""
        from protocol.entropy.chain import Checkpoint, Chunk, ChunkFormatError
        from protocol.entropy.verifier import EntropyRejectedError
        from streams.codec import CodecError, default_codec

        try:
            schema, fields = default_codec().decode(record.value)
            if schema == "EntropyChunkPublished":
                chunk = Chunk.from_record(fields)
                if not chunk.private:
                    raise ChunkFormatError("public chunk on entropy.private")
                self._verifier.accept_chunk(chunk)
                self._offsets[(chunk.source_id, chunk.seq)] = (record.partition, record.offset)
            elif schema == "EntropyCheckpointSigned":
                for chunk in self._verifier.accept_checkpoint(Checkpoint.from_record(fields)):
                    where = self._offsets.pop((chunk.source_id, chunk.seq), None)
                    if where is not None and where[0] in self._assigned_partitions:
                        self.verified.append((where[0], where[1], chunk))
        except (CodecError, ChunkFormatError, EntropyRejectedError) as exc:
            if self.on_reject is not None:
                self.on_reject(type(exc).__name__)
            log.debug("private pool skips %s@%s: %s", record.partition, record.offset, exc)
        if len(self._offsets) > 100_000:
            self._offsets.clear()

    def _open_chunks(self, consumer: KafkaConsumer, topic: str) -> None:
        """Move verified chunks into the buffer, committing past each one first."""
        from streams.errors import KafkaOperationError
        from streams.kafka import Position

        while self.verified and self.buffer.available < self.low_water:
            partition, offset, chunk = self.verified.popleft()
            target = max(self._committed.get(partition, 0), offset + 1)
            try:
                consumer.commit([Position(topic, partition, target)])
            except KafkaOperationError as exc:  # lost the partition: never use the chunk
                log.warning("commit past chunk %s#%d failed, dropped: %s", chunk.source_id,
                            chunk.seq, exc)
                continue
            self._committed[partition] = target
            self.buffer.put(chunk.source_id, chunk.payload)
            del chunk


class _LiveRegistry(Mapping[str, Any]):
    """The registered sources as the chain currently says (looked up on every access)."""

    def __init__(self, registry: Callable[[], Mapping[str, Any]]) -> None:
        self._registry = registry

    def __getitem__(self, key: str) -> Any:
        return self._registry()[key]

    def __iter__(self) -> Any:
        return iter(self._registry())

    def __len__(self) -> int:
        return len(self._registry())


# ---------------------------------------------------------------------------- delivery


@dataclass(frozen=True, slots=True)
class KeyRequest:
    x25519_public: bytes
    mlkem_public: bytes
    length: int
    payment_tx: bytes


@dataclass(slots=True)
class LedgerView:
    """What the gateway knows of accounts: the verified ledger state plus its own pending
    transactions (so back-to-back requests with consecutive nonces are accepted)."""

    state: Any = None
    pending_nonce: dict[bytes, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def account(self, address: bytes) -> dict[str, Any]:
        from services.ledger.core.queries import balance, next_nonce

        if self.state is None:
            raise unavailable("chain-not-ready", "the gateway has not read the chain yet", 2)
        nonce = next_nonce(self.state, address)
        return {"address": address.hex(), "balance": balance(self.state, address),
                "next_nonce": nonce, "pending_nonce": max(nonce,
                                                          self.pending_nonce.get(address, 0))}


class TxSink(Protocol):
    async def submit(self, raw: bytes) -> bytes: ...


class KafkaTxSink:
    """Produces ``TransactionSubmitted`` to ``ledger.tx``; ``submit`` awaits the broker's
    acknowledgement (a poll thread resolves the futures). Trace context goes into headers."""

    def __init__(self, settings: Any) -> None:
        from streams.kafka import make_producer

        self.settings = settings
        self.topic = settings.topic("ledger.tx")
        self.producer = make_producer(settings, transactional_id=None, **{"linger.ms": 1})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="tx-sink", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)

    async def submit(self, raw: bytes) -> bytes:
        from services.ledger.submit import submitted_record
        from streams.telemetry import inject_context

        key, value = submitted_record(raw)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def delivered(report: Delivery) -> None:
            def resolve() -> None:
                if future.done():
                    return
                if report.error is not None:
                    future.set_exception(report.error)
                else:
                    future.set_result(None)
            loop.call_soon_threadsafe(resolve)

        self.producer.produce(self.topic, value, key, on_delivery=delivered,
                              headers=list(inject_context()))
        await asyncio.wait_for(future, 15)
        from services.ledger.core.tx import tx_hash

        return tx_hash(raw)

    def close(self) -> None:
        self._stop.set()
        self.producer.flush(5)


def _problem(status: int, slug: str, detail: str) -> Problem:
    return Problem(status, slug, detail)


@dataclass(frozen=True, slots=True)
class _Payment:
    sender: bytes
    nonce: int
    tx_hash: bytes
    fee: int
    units: int


class KeyService:
    """``POST /v1/keys`` (module doc; the payment rules are ``services.gateway.payments``).

    ``signer`` signs every delivery (clients pin its public key; a fresh one is made when none
    is given, for tests); ``payments`` is fed with key payment outcomes from verified blocks;
    ``spent`` is the claim store every gateway shares; ``inclusion_timeout_s`` is how long one
    request waits for its payment's block before answering ``503 payment-pending`` (the client
    resends the same request)."""

    def __init__(self, pool: KeyPool, sink: TxSink, ledger: LedgerView, chain_id: str,
                 *, check_ledger: bool = True, signer: SigningKey | None = None,
                 payments: PaymentBook | None = None, spent: SpentPayments | None = None,
                 inclusion_timeout_s: float = 20.0, claimant: str | None = None) -> None:
        self.pool = pool
        self.sink = sink
        self.ledger = ledger
        self.chain_id = chain_id
        self.check_ledger = check_ledger
        self.signer = signer if signer is not None else SigningKey.generate()
        self.public_key = self.signer.public_key.to_text()
        self.payments = payments if payments is not None else PaymentBook()
        self.spent: SpentPayments = spent if spent is not None else MemorySpentPayments()
        self.inclusion_timeout_s = inclusion_timeout_s
        self.claimant = claimant or f"gateway-{os.urandom(6).hex()}"

    def _check_payment(self, request: KeyRequest, commitment: bytes) -> _Payment:
        """What can be checked without the chain: a signed PayForService(KEY_MATERIAL) for
        this chain, committing to this request, paying enough units."""
        from services.ledger.core.tx import PayForService, ServiceKind, decode_signed_tx
        from services.ledger.submit import SubmissionError, parse_tx

        try:
            pending = parse_tx(request.payment_tx)
        except SubmissionError as exc:
            raise _problem(422, "invalid-payment", str(exc)) from exc
        tx = decode_signed_tx(request.payment_tx).tx
        body = tx.body
        if tx.chain_id != self.chain_id:
            raise _problem(422, "invalid-payment", f"transaction is for chain {tx.chain_id!r}, "
                                                   f"this is {self.chain_id!r}")
        if not isinstance(body, PayForService) or body.service is not ServiceKind.KEY_MATERIAL:
            raise _problem(422, "invalid-payment", "payment_tx must be a PayForService for "
                                                   "KEY_MATERIAL")
        if body.commitment != commitment:
            raise _problem(422, "invalid-payment", "the transaction's commitment is not the "
                                                   "request commitment of these keys and length")
        if body.units < units_for(request.length):
            raise _problem(422, "invalid-payment", f"{request.length} bytes need "
                                                   f"{units_for(request.length)} units")
        return _Payment(pending.sender, pending.nonce, pending.hash, tx.fee, body.units)

    def _admit(self, payment: _Payment) -> None:
        """A payment not yet on chain: can it still be included? (A used nonce never will; one
        too far ahead would only hold the request for nothing.)"""
        if not self.check_ledger:
            return
        state = self.ledger.state
        if state is None:
            raise unavailable("chain-not-ready", "the gateway has not read the chain yet", 2)
        from services.ledger.core.queries import balance, next_nonce

        cost = payment.fee + payment.units * state.params.price_key_material_per_unit
        if balance(state, payment.sender) < cost:
            raise _problem(422, "insufficient-funds", f"account {payment.sender.hex()} "
                                                      f"cannot pay {cost} micro-units")
        expected = next_nonce(state, payment.sender)
        if payment.nonce < expected:
            raise _problem(409, "nonce-used", f"nonce {payment.nonce} is already used (and "
                                              "not by a key payment this gateway knows)")
        ahead = max(expected, self.ledger.pending_nonce.get(payment.sender, 0))
        if payment.nonce > ahead + MAX_NONCE_AHEAD:
            raise _problem(422, "nonce-too-far", f"nonce {payment.nonce} is more than "
                                                 f"{MAX_NONCE_AHEAD} ahead of {ahead}")

    async def _included(self, request: KeyRequest, payment: _Payment) -> PaymentOutcome:
        """Rule 1 of ``payments``: the payment's outcome once a verified block included it."""
        outcome = self.payments.get(payment.tx_hash)
        if outcome is None:
            self._admit(payment)
            try:
                await self.sink.submit(request.payment_tx)
            except Exception as exc:
                raise unavailable("ledger-unavailable",
                                  f"the payment could not be written to ledger.tx: {exc}",
                                  5) from exc
            with self.ledger.lock:
                self.ledger.pending_nonce[payment.sender] = max(
                    self.ledger.pending_nonce.get(payment.sender, 0), payment.nonce + 1)
            outcome = await self.payments.wait(payment.tx_hash, self.inclusion_timeout_s)
        if outcome is None:
            raise unavailable("payment-pending", "the payment is submitted but not yet in a "
                              "finalized block; send the same request again (no key is "
                              "delivered before the payment is on chain)", 2)
        if not outcome.paid:
            raise _problem(409, "payment-failed", f"the payment was included at height "
                                                  f"{outcome.height} but failed: {outcome.log}")
        return outcome

    async def _claim(self, payment: _Payment) -> None:
        """Rule 2 of ``payments``: exactly one claim per payment across every gateway."""
        from services.gateway.spent import SpentStoreError

        try:
            won = await asyncio.to_thread(self.spent.claim, payment.sender, payment.nonce,
                                          payment.tx_hash, self.claimant)
        except SpentStoreError as exc:
            raise unavailable("claims-unavailable", str(exc), 5) from exc
        if not won:
            raise _problem(409, "payment-reused", "this payment was already used for a "
                                                  "delivery")

    async def _release(self, payment: _Payment) -> None:
        from services.gateway.spent import SpentStoreError

        try:
            await asyncio.to_thread(self.spent.release, payment.sender, payment.nonce,
                                    self.claimant)
        except SpentStoreError:
            log.warning("could not release the claim of %s#%d; that payment is spent",
                        payment.sender.hex(), payment.nonce)

    def _ready(self, n: int) -> None:
        """Refuse before the client pays for nothing: the pool must be able to serve now."""
        status = self.pool.status()
        if not status.get("healthy", True) or status.get("available_bytes", n) < n:
            raise unavailable("pool-unavailable", f"private pool cannot serve {n} bytes now "
                                                  f"({status.get('reason', 'low')})", 2)

    async def deliver(self, request: KeyRequest,
                      charge: Callable[[], None] | None = None) -> dict[str, Any]:
        """The signed, sealed delivery for ``request``; ``charge`` (the key's quota) runs once
        the payment is on chain, before the claim, so resending a pending request is free."""
        if len(request.x25519_public) != X25519_BYTES:
            raise _problem(422, "invalid-key", f"x25519_public_key must be {X25519_BYTES} bytes")
        if len(request.mlkem_public) != MLKEM_PUBLIC_BYTES:
            raise _problem(422, "invalid-key",
                           f"mlkem768_public_key must be {MLKEM_PUBLIC_BYTES} bytes")
        if not MIN_LENGTH <= request.length <= MAX_LENGTH:
            raise _problem(422, "invalid-length", f"length must be {MIN_LENGTH}..{MAX_LENGTH}")
        try:
            client_x = x25519.X25519PublicKey.from_public_bytes(request.x25519_public)
            client_k = mlkem.MLKEM768PublicKey.from_public_bytes(request.mlkem_public)
        except ValueError as exc:
            raise _problem(422, "invalid-key", f"public key rejected: {exc}") from exc
        commitment = request_commitment(request.x25519_public, request.mlkem_public,
                                        request.length)
        payment = self._check_payment(request, commitment)
        draw = max(POOL_DRAW_BYTES, request.length)
        self._ready(draw)
        await self._included(request, payment)
        if charge is not None:
            charge()
        await self._claim(payment)
        try:
            pool_bytes, sources = self.pool.draw(draw)
        except PoolUnavailable as exc:
            await self._release(payment)
            raise unavailable("pool-unavailable", exc.reason, exc.retry_after_s) from exc
        try:
            ikm = bytearray(pool_bytes)
            ikm += os.urandom(64)
            key = bytearray(HKDF(algorithm=hashes.SHA512(), length=request.length,
                                 salt=commitment, info=b"QuStream/v1/KeyMaterial"
                                 + payment.tx_hash).derive(bytes(ikm)))
            ikm[:] = bytes(len(ikm))
        finally:
            pool_bytes[:] = bytes(len(pool_bytes))
        ephemeral = x25519.X25519PrivateKey.generate()
        ephemeral_public = ephemeral.public_key().public_bytes_raw()
        shared_k, kem_ciphertext = client_k.encapsulate()
        kek = delivery_kek(ephemeral.exchange(client_x), shared_k, ephemeral_public,
                           request.x25519_public, kem_ciphertext, commitment)
        nonce_bytes = os.urandom(12)
        ciphertext = AESGCM(kek).encrypt(nonce_bytes, bytes(key), commitment)
        key[:] = bytes(len(key))
        delivered_at_ms = int(time.time() * 1000)
        signature = self.signer.sign(delivery_transcript(
            self.chain_id, commitment, payment.tx_hash, request.length, ephemeral_public,
            kem_ciphertext, nonce_bytes, ciphertext, sources, delivered_at_ms))
        return {
            "commitment": commitment.hex(), "tx_hash": payment.tx_hash.hex(),
            "length": request.length,
            "x25519_ephemeral_public_key": base64.b64encode(ephemeral_public).decode(),
            "mlkem768_ciphertext": base64.b64encode(kem_ciphertext).decode(),
            "nonce": base64.b64encode(nonce_bytes).decode(),
            "ciphertext": base64.b64encode(ciphertext).decode(),
            "sources": list(sources), "delivered_at_ms": delivered_at_ms,
            "gateway_key": self.public_key,
            "signature": base64.b64encode(signature).decode(),
        }
