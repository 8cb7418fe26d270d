"""Tracing set-up shared by the services: OTLP export configured by the standard variables.

Export is on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the traces-specific variable) is set and
``OTEL_SDK_DISABLED`` is not ``true``; otherwise spans cost next to nothing (a no-op tracer).
``OTEL_EXPORTER_OTLP_PROTOCOL`` picks ``grpc`` (default) or ``http/protobuf``;
``OTEL_SERVICE_NAME`` overrides the service's default name.

The bus carries trace context with the global propagators (``OTEL_PROPAGATORS``); apiserver
requests carry it with :data:`APISERVER_PROPAGATOR`, the one format the apiserver reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import CarrierT, Getter, Setter, default_setter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "APISERVER_PROPAGATOR",
    "HeaderGetter",
    "HeaderSetter",
    "Level1TraceContext",
    "setup_tracing",
    "shutdown_tracing",
]


def setup_tracing(
    default_service_name: str, environ: Mapping[str, str] | None = None
) -> Tracer | None:
    """The service's tracer, or None when nothing would receive its spans.

    None lets hot paths skip span bookkeeping entirely instead of feeding a no-op tracer.
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true" or not (
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return None

    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

    service_name = env.get("OTEL_SERVICE_NAME") or default_service_name
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
    )
    exporter: SpanExporter
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as OTLPHttpSpanExporter,
        )

        exporter = OTLPHttpSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return trace.get_tracer(default_service_name)


def shutdown_tracing() -> None:
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if shutdown is not None:
        shutdown()


class HeaderSetter(Setter[dict[str, str]]):
    def set(self, carrier: dict[str, str], key: str, value: str) -> None:
        carrier[key] = value


class HeaderGetter(Getter[Mapping[str, str]]):
    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key)
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


class Level1TraceContext(TraceContextTextMapPropagator):
    """W3C ``traceparent`` whose only flag is ``sampled`` (Trace Context Level 1).

    The SDK also sets the Level 2 flag ``random`` (``0x02``) on the trace ids it generates, so
    its spans go out as ``...-03``. Go OpenTelemetry before v1.42 (kube-apiserver v1.36 is
    built with v1.41) discards a version-00 ``traceparent`` whose flags byte is above ``02``:
    the request arrives without a parent, and the apiserver samples it at its own rate
    instead (never, at the dev stack's 0 per million).
    """

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        span_context = trace.get_current_span(context).get_span_context()
        if not span_context.is_valid:
            return
        level1 = SpanContext(
            span_context.trace_id,
            span_context.span_id,
            is_remote=span_context.is_remote,
            trace_flags=TraceFlags(span_context.trace_flags & TraceFlags.SAMPLED),
            trace_state=span_context.trace_state,
        )
        super().inject(
            carrier, trace.set_span_in_context(NonRecordingSpan(level1), context), setter
        )


# What the apiserver extracts (component-base's tracing.Propagators(): trace context and
# baggage), independent of OTEL_PROPAGATORS, which may name formats the apiserver never reads.
APISERVER_PROPAGATOR: Final = CompositePropagator([Level1TraceContext(), W3CBaggagePropagator()])
