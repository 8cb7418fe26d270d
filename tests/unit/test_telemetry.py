"""The trace context kubus sends to the apiserver, as the apiserver's parser needs it."""

from __future__ import annotations

import re

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from kubus.telemetry import APISERVER_PROPAGATOR, HeaderSetter

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def headers_of(span: trace.Span, *, for_the_bus: bool = False) -> dict[str, str]:
    headers: dict[str, str] = {}
    context = trace.set_span_in_context(span)
    inject = propagate.inject if for_the_bus else APISERVER_PROPAGATOR.inject
    inject(headers, context=context, setter=HeaderSetter())
    return headers


def test_a_sampled_sdk_span_goes_out_with_the_sampled_flag_only() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("PUT /apis/apps/v1/...") as span:
        context = span.get_span_context()
        sent = headers_of(span)
    match = TRACEPARENT.match(sent["traceparent"])
    assert match, sent
    # Not "-03" (sampled + the SDK's Level 2 "random"), which kube-apiserver v1.36 discards.
    assert match.groups() == (f"{context.trace_id:032x}", f"{context.span_id:016x}", "01")


def test_an_unsampled_span_stays_unsampled() -> None:
    tracer = TracerProvider(sampler=ALWAYS_OFF).get_tracer("test")
    with tracer.start_as_current_span("PUT") as span:
        sent = headers_of(span)
    assert sent["traceparent"].endswith("-00")


def test_the_trace_state_and_ids_pass_unchanged() -> None:
    span = NonRecordingSpan(
        SpanContext(
            trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
            span_id=0x00F067AA0BA902B7,
            is_remote=False,
            trace_flags=TraceFlags(0x03),
            trace_state=TraceState([("vendor", "value")]),
        )
    )
    assert headers_of(span) == {
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "tracestate": "vendor=value",
    }
    # The bus keeps the flags as the SDK set them: only Python reads them there.
    assert headers_of(span, for_the_bus=True)["traceparent"].endswith("-03")


def test_no_span_no_header() -> None:
    assert headers_of(trace.INVALID_SPAN) == {}
