"""OpenTelemetry for every service through one call: ``setup(service_name)``.

- OTLP over HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (batched, off the hot path;
  a collector that is down costs dropped spans, never a failed request);
- a JSON-lines span file when ``LMESH_SPANS_DIR`` is set (what ``lmesh trace`` reads);
- otherwise no exporter at all: spans are still created so that trace context
  propagates through Kafka headers and HTTP, but nothing is exported.
W3C trace context is the propagator (``traceparent`` in Kafka headers and HTTP).
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from libs.telemetry.spanfile import JsonLinesSpanExporter

__all__ = [
    "current_trace_id",
    "exporting",
    "instrument_fastapi",
    "instrument_httpx",
    "instrument_sqlalchemy",
    "setup",
    "tracer",
]

_provider: TracerProvider | None = None
_exporting = False


def setup(
    service_name: str,
    *,
    exporters: list[SpanExporter] | None = None,
    version: str | None = None,
) -> TracerProvider:
    """Configure the process-wide tracer provider once; later calls return the same one."""
    global _provider
    if _provider is not None:
        return _provider
    resource = Resource.create(
        {
            "service.name": service_name,
            "service.namespace": "lepton-mesh",
            "service.version": version or _package_version(),
        }
    )
    provider = TracerProvider(resource=resource)
    global _exporting
    for exporter in [*_exporters_from_env(service_name), *(exporters or [])]:
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
        _exporting = True
    trace.set_tracer_provider(provider)
    propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator()]))
    _provider = provider
    return provider


def shutdown() -> None:
    """Flush and stop exporters (call on service shutdown)."""
    if _provider is not None:
        _provider.shutdown()


def exporting() -> bool:
    """Whether spans go anywhere. Hot paths skip optional spans when they do not."""
    return _exporting


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def _exporters_from_env(service_name: str) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporters.append(OTLPSpanExporter(timeout=2))
    spans_dir = os.environ.get("LMESH_SPANS_DIR")
    if spans_dir:
        exporters.append(JsonLinesSpanExporter(os.path.join(spans_dir, f"{service_name}.jsonl")))
    return exporters


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lepton-mesh")
    except PackageNotFoundError:
        return "0+unknown"


def instrument_fastapi(app: Any) -> None:
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=_provider,
        excluded_urls="/metrics,/healthz,/v2/health/.*",
        exclude_spans=["receive", "send"],  # one span per request, not one per body chunk
    )


def instrument_httpx() -> None:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    instrumentor = HTTPXClientInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=_provider)


def instrument_sqlalchemy(engine: Any) -> None:
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    SQLAlchemyInstrumentor().instrument(engine=engine, tracer_provider=_provider)
