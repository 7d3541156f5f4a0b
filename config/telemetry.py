"""OpenTelemetry set-up for the web process and the Celery workers.

Traces are always produced so that every ledger entry and every call to a target system
carries a trace id (``traceparent``). Spans are exported only when
``OTEL_EXPORTER_CONSOLE=1``; an OTLP exporter can be added by the deployment.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

_done = False


def setup_tracing(*, instrument_celery: bool = False, instrument_django: bool = False) -> None:
    global _done
    if _done:
        return
    _done = True
    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "unwind")})
    )
    if os.environ.get("OTEL_EXPORTER_CONSOLE") == "1":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    if instrument_django:
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        DjangoInstrumentor().instrument()
    if instrument_celery:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument()


def current_trace_id() -> str:
    """The 32-hex trace id of the active span, or '' when there is none."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""
