"""OpenTelemetry setup: tracer and meter providers, Prometheus scraping, Kafka header context.

``setup_telemetry`` is called once by a service's entry point (never at import). Metrics are
exposed for Prometheus on loopback by default; traces go to an OTLP collector only when an
exporter is configured by the deployment (OTEL_EXPORTER_OTLP_ENDPOINT), otherwise they stay in
process. Trace context crosses Kafka in message headers (W3C traceparent), so a request traced
at the gateway continues in every consumer of what it produced.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableSequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

Headers = MutableSequence[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Telemetry:
    tracer: trace.Tracer
    meter: metrics.Meter
    metrics_port: int | None


_installed: Telemetry | None = None


def setup_telemetry(
    service_name: str, *, metrics_port: int | None = None, metrics_host: str = "127.0.0.1"
) -> Telemetry:
    """Install providers once per process and return the service's tracer and meter.

    With ``metrics_port`` set, a Prometheus endpoint serves ``/metrics`` on that port (0 picks a
    free one; the chosen port is returned).
    """
    global _installed
    if _installed is not None:
        return _installed
    resource = Resource.create({"service.name": service_name, "service.namespace": "qustream"})
    readers: list[Any] = []
    port: int | None = None
    if metrics_port is not None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        readers.append(PrometheusMetricReader())
        server, _thread = start_http_server(metrics_port, addr=metrics_host)
        port = server.server_port
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))
    tracer_provider = TracerProvider(resource=resource)
    _add_otlp_exporter(tracer_provider)
    trace.set_tracer_provider(tracer_provider)
    _installed = Telemetry(trace.get_tracer(service_name), metrics.get_meter(service_name), port)
    return _installed


def _add_otlp_exporter(provider: TracerProvider) -> None:
    import os

    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return
    try:  # the OTLP exporter is an optional extra of a deployment's image
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        return
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))


class _HeaderSetter:
    def set(self, carrier: Headers, key: str, value: str) -> None:
        carrier.append((key, value.encode("ascii")))


class _HeaderGetter:
    def get(self, carrier: Iterable[tuple[str, bytes]], key: str) -> list[str] | None:
        values = [v.decode("ascii", "replace") for k, v in carrier if k == key and v is not None]
        return values or None

    def keys(self, carrier: Iterable[tuple[str, bytes]]) -> list[str]:
        return [k for k, _ in carrier]


def inject_context(headers: Headers | None = None) -> Headers:
    """Headers carrying the current trace context, for ``Producer.produce(headers=...)``."""
    carrier: Headers = headers if headers is not None else []
    propagate.inject(carrier, setter=_HeaderSetter())  # type: ignore[arg-type]
    return carrier


def extract_context(headers: Iterable[tuple[str, bytes]] | None) -> Context:
    """The trace context a consumed message carried (empty context when none)."""
    return propagate.extract(
        list(headers or []), getter=_HeaderGetter()  # type: ignore[arg-type]
    )
