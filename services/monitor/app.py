"""The monitor's Faust app, built by ``make_app`` from settings (nothing connects at import).

- one agent over every watched topic (``decode.INPUTS``, with the configured prefix), taking
  records in batches: each batch is folded by the core and every changed piece of state is
  re-assigned in the table ``state`` (changelog ``monitor.state``);
- a timer that judges the rules every ``evaluate_interval_s``, writes ``AlertRaised`` /
  ``AlertResolved`` to ``alerts`` (waiting for the acknowledgement) and hands them to the
  Alertmanager webhook when one is configured;
- Prometheus metrics computed from the state at scrape time.

Faust on Kafka 4 (aiokafka 0.14, faust-streaming 0.15): the client speaks to a 4.x broker with
the classic consumer group protocol, which Kafka 4 still serves. What needed settings:
``topic_allow_declare=False`` and ``topic_disable_leader=True`` (every topic comes from the
catalogue, so ACLs can stay literal; Faust would otherwise create ``<id>-__assignor-__leader``),
``web_enabled=False`` (Faust's web server would listen on all interfaces), ``store=memory://``
(the changelog is the store; no RocksDB), and a read_committed consumer: Faust reads
``read_uncommitted`` unless it runs its own transactions, which would count records of aborted
transactions (the tally and the user handler write in transactions). Faust's exactly-once mode
is not used: see runtime.py for how the state and alerts stay exact without it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from services.monitor import alert_log
from services.monitor.alertmanager import AlertmanagerClient, batch
from services.monitor.core.alerts import AlertRaised, AlertResolved
from services.monitor.decode import Record
from services.monitor.runtime import MonitorRuntime
from streams.settings import Settings

log = logging.getLogger(__name__)


class _ReadCommittedThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka keeps the level until start(); Faust hard-codes read_uncommitted outside
        # its exactly-once mode.
        consumer._isolation_level = "read_committed"
        return consumer


class _ReadCommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ReadCommittedThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer: ClassVar[type] = _ReadCommittedConsumer


class _StateTable(faust.Table):
    """The monitor's table: one changelog partition, written from the agent and the timer.

    Faust picks a changelog partition from the current event's partition (it expects a table
    co-partitioned with one source topic) or, with ``use_partitioner``, from producer metadata
    that aiokafka has not fetched for a topic never produced to. Every key lives in partition 0
    of ``monitor.state`` here, whatever input changed it."""

    # Faust commits input offsets after ``producer.flush()``, but its buffer's flush returns
    # when no message left the buffer for 0.1 s (``ProducerBuffer.flush_atmost``), so under
    # load a commit can overtake the changelog writes of the records it covers; a kill -9 then
    # loses those records from the restored windows. The agent awaits its own writes instead:
    # a batch is acknowledged only once every piece it changed is on the changelog.
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unsent: list[Any] = []

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        future = super().send_changelog(*args, **kwargs)
        self._unsent.append(future)
        return future

    async def written(self) -> None:
        """Wait until every changelog write sent so far is acknowledged (raises if one failed)."""
        pending, self._unsent = self._unsent, []
        for future in pending:
            await future

    def partition_for_key(self, key: Any) -> int:
        return 0


class MonitorApp(faust.App):
    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


def _credentials(settings: Settings) -> Any:
    kafka = settings.kafka
    context: ssl.SSLContext | None = None
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=kafka.ssl_ca_location)
        if kafka.ssl_certificate_location:
            context.load_cert_chain(kafka.ssl_certificate_location, kafka.ssl_key_location)
    if kafka.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=kafka.sasl_username, password=kafka.sasl_password,
            mechanism=kafka.sasl_mechanism or "PLAIN", ssl_context=context)
    if context is not None:
        return faust.SSLCredentials(context)
    return None


@dataclass
class MonitorService:
    """The app and what its agent and timer share."""

    app: faust.App
    runtime: MonitorRuntime
    webhook: AlertmanagerClient | None
    on_alert: Callable[[AlertRaised | AlertResolved], None] | None = None
    started: asyncio.Lock = field(default_factory=asyncio.Lock)
    deliveries: asyncio.Queue[list[dict[str, Any]]] = field(
        default_factory=lambda: asyncio.Queue(maxsize=100))
    last_resend: float = 0.0


def make_app(settings: Settings, runtime: MonitorRuntime,
             on_alert: Callable[[AlertRaised | AlertResolved], None] | None = None
             ) -> MonitorService:
    """The monitor as a Faust app (not started: run it with ``faust.Worker``)."""
    options = runtime.options
    servers = [f"kafka://{host.strip()}" for host in settings.kafka_bootstrap().split(",")]
    settings.state_dir.mkdir(parents=True, exist_ok=True)  # Faust makes datadir, not parents
    app = MonitorApp(
        options.app_id or settings.topic("monitor"),  # app id = group, under the ACL prefix
        broker=servers,
        broker_credentials=_credentials(settings),
        store="memory://",
        autodiscover=False,
        web_enabled=False,
        topic_allow_declare=False,
        topic_disable_leader=True,
        topic_replication_factor=settings.kafka.replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        consumer_max_fetch_size=16 * 1024 * 1024,
        producer_max_request_size=9 * 1024 * 1024,
        producer_acks=-1,
        stream_recovery_delay=0.0,
        stream_buffer_maxsize=options.batch_size * 4,
        broker_commit_interval=1.0,
        # A static member: a restarted monitor takes its predecessor's place at once instead
        # of waiting out the dead member's session (and a second instance fences the first).
        consumer_group_instance_id=options.instance_id,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        broker_max_poll_records=options.batch_size,
        worker_redirect_stdouts=False,
        datadir=str(settings.state_dir / "monitor"),
    )
    webhook = AlertmanagerClient(options.alertmanager_url) if options.alertmanager_url else None
    service = MonitorService(app, runtime, webhook, on_alert)
    inputs = app.topic(*runtime.decoder.topics(), key_type=bytes, value_type=bytes)
    changelog = app.topic(settings.topic("monitor.state"), partitions=1, key_type=bytes,
                          value_type=bytes, compacting=True, deleting=False)
    table = _StateTable(app, name="state", default=None, partitions=1,
                        beacon=app.tables.beacon, changelog_topic=changelog,
                        key_type=bytes, value_type=bytes)
    app.tables.add(table)
    alerts_topic = app.topic(settings.topic("alerts"), key_type=bytes, value_type=bytes)

    async def ensure_started() -> bool:
        """Restore the state and the open alerts once the table is recovered."""
        if runtime.restored and runtime.alerts_loaded:
            return True
        if not app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]
            return False
        async with service.started:
            if not runtime.restored:
                runtime.restore(list(table.items()))  # type: ignore[attr-defined]
                await asyncio.to_thread(runtime.catch_up_ledger)
                await asyncio.to_thread(runtime.measure_ends)
                # what the group committed past the restored pieces, folded before anything
                # Faust delivers (runtime.py, guarantee 3)
                for key in await asyncio.to_thread(runtime.fill_gaps):
                    table[key.encode()] = runtime.piece(key)  # type: ignore[index]
                await table.written()
            if not runtime.alerts_loaded:
                await asyncio.to_thread(runtime.load_alerts)
                if service.webhook is not None:  # tell a fresh Alertmanager what is open
                    service.last_resend = 0.0
        return True

    @app.agent(inputs)
    async def watch(stream: Any) -> None:
        async for events in stream.take_events(options.batch_size, within=options.batch_wait_s):
            while not await ensure_started():
                await asyncio.sleep(0.1)
            records = [Record(e.message.topic, e.message.partition, e.message.offset,
                              int(e.message.timestamp * 1000), e.message.value) for e in events]
            # Offsets Faust skipped are read back from Kafka in here, blocking the loop as
            # nothing may be folded past them (runtime.py, guarantee 4); rare, logged.
            for key in runtime.apply(records):
                # Re-assigned, never mutated: only an assignment reaches the changelog.
                table[key.encode()] = runtime.piece(key)  # type: ignore[index]
            await table.written()  # before Faust acknowledges (and may commit) this batch

    @app.timer(options.evaluate_interval_s)
    async def judge() -> None:
        if not await ensure_started():
            return
        # The ends are measured again here, and only here (the timer never overlaps itself),
        # after a read-back or a catch-up round that reached its ends late (runtime.py,
        # guarantee 6); nothing is judged until they are read up to.
        if runtime.needs_ends:
            await asyncio.to_thread(runtime.measure_ends)
        before = runtime.open_alerts
        decided = runtime.evaluate()
        for event in decided:
            future = await alerts_topic.send(key=alert_log.key(event),
                                             value=alert_log.encode(event))
            await future  # acknowledged before the next decision builds on it
            if on_alert is not None:
                on_alert(event)
        if service.webhook is not None:
            _queue_delivery(service, before, decided)

    if service.webhook is not None:
        webhook = service.webhook

        @app.task
        async def deliver() -> None:
            """Posts in decision order, one request at a time (a raise before its resolve)."""
            while True:
                await webhook.post(await service.deliveries.get())

    return service


def _queue_delivery(service: MonitorService, before: Any,
                    decided: tuple[AlertRaised | AlertResolved, ...]) -> None:
    runtime = service.runtime
    now_ms = time.time_ns() // 1_000_000
    resend_ms = round(runtime.options.alertmanager_resend_s * 1000)
    resolved = [(e, before.alerts[e.key]) for e in decided
                if isinstance(e, AlertResolved) and e.key in before.alerts]
    if time.monotonic() - service.last_resend >= runtime.options.alertmanager_resend_s:
        firing = list(runtime.open_alerts.alerts.values())
        service.last_resend = time.monotonic()
    else:
        firing = [e for e in decided if isinstance(e, AlertRaised)]
    payload = batch(firing, resolved, now_ms, resend_ms, runtime.options.generator_url)
    if payload:
        try:
            service.deliveries.put_nowait(payload)
        except asyncio.QueueFull:  # the receiver is down; the next resend carries what fires
            log.warning("alertmanager unreachable: dropped %d alert updates", len(payload))
