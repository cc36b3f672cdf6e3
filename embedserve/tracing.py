"""OpenTelemetry traces over OTLP/gRPC, off unless ``--otlp-endpoint`` is set.

Each request gets a server span (continuing the client's W3C ``traceparent``) with three children, tokenize, queue
and inference, built afterwards from the pipeline's own timestamps, so tracing adds no work to the hot path. Each
forward pass gets its own ``batch`` span, and every request's inference span links to the batches its inputs ran in.
Spans carry the model, input and token counts, never input text or keys. With no endpoint nothing here runs.

The gateway records its spans live instead (:meth:`Tracing.proxy_span`): a server span per request, continuing the
client's trace, and a client span per worker attempt whose context is sent to that worker as its ``traceparent``,
so a retried request shows both attempts and each worker's spans sit under the attempt that reached it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from embedserve.settings import EdgeSettings

if TYPE_CHECKING:  # the gateway uses this module too, and imports nothing of the core
    from embedserve.core.batching import Batch
    from embedserve.core.results import Timings

_EPOCH_OFFSET_NS = time.time_ns() - time.perf_counter_ns()


def request_attributes(
    method: str, route: str, status: int, request_id: str, model: str, inputs: int, tokens: int, key_id: str
) -> dict[str, Any]:
    """The attributes of a request's server span, on a worker and on the gateway alike (never text or a key)."""
    return {
        "http.request.method": method,
        "http.route": route,
        "http.response.status_code": status,
        "embedserve.request_id": request_id,
        "embedserve.model": model,
        "embedserve.inputs": inputs,
        "embedserve.tokens": tokens,
        "embedserve.key_id": key_id,
    }


def _parent(headers: Mapping[str, str]) -> Any:
    """The client's trace context, from its W3C ``traceparent``/``tracestate`` headers."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract(carrier=dict(headers))


def _ns(perf_seconds: float) -> int:
    """perf_counter seconds -> Unix epoch nanoseconds, what span timestamps are."""
    return _EPOCH_OFFSET_NS + int(perf_seconds * 1e9)


class Tracing:
    """The tracer provider and exporter, when an OTLP endpoint is configured."""

    def __init__(self, settings: EdgeSettings) -> None:
        self.enabled = settings.otlp_endpoint is not None
        self._provider: Any = None
        self._tracer: Any = None
        if not self.enabled:
            return
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        endpoint = settings.otlp_endpoint or ""
        self._provider = TracerProvider(resource=Resource.create({"service.name": settings.otlp_service_name}))
        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("embedserve")

    def batch_span(self, model: str, batch: Batch) -> Any:
        """Record one forward pass (backend thread); returns its span context for the requests to link to."""
        span = self._tracer.start_span(
            "inference batch",
            start_time=_ns(batch.t_start),
            attributes={
                "embedserve.model": model,
                "embedserve.batch.inputs": len(batch.entries),
                "embedserve.batch.tokens": batch.real_tokens,
                "embedserve.batch.padded_tokens": batch.padded_tokens,
            },
        )
        span.end(end_time=_ns(batch.t_end))
        return span.get_span_context()

    def request_span(
        self,
        name: str,
        headers: Mapping[str, str],
        started: float,
        ended: float,
        attributes: dict[str, Any],
        timings: Timings | None,
        batch_links: Sequence[Any],
    ) -> None:
        """Record a whole request after the fact: its span and the tokenize/queue/inference children."""
        from opentelemetry import trace
        from opentelemetry.trace import Link, SpanKind

        span = self._tracer.start_span(
            name, context=_parent(headers), kind=SpanKind.SERVER, start_time=_ns(started), attributes=attributes
        )
        if timings is not None:
            inner = trace.set_span_in_context(span)
            stages = (
                ("tokenize", timings.started, timings.enqueued, ()),
                ("queue", timings.enqueued, timings.first_batch, ()),
                ("inference", timings.first_batch, timings.computed, [Link(c) for c in batch_links]),
            )
            for stage, begin, end, links in stages:
                child = self._tracer.start_span(stage, context=inner, start_time=_ns(begin), links=links)
                child.end(end_time=_ns(max(begin, end)))
        span.end(end_time=_ns(ended))

    def proxy_span(self, name: str, headers: Mapping[str, str], started: float) -> ProxySpan:
        """A gateway request's server span, open from ``started`` until :meth:`ProxySpan.end`."""
        from opentelemetry.trace import SpanKind

        span = self._tracer.start_span(name, context=_parent(headers), kind=SpanKind.SERVER, start_time=_ns(started))
        return ProxySpan(self._tracer, span)

    def shutdown(self) -> None:
        """Flush what is buffered and stop the exporter."""
        if self._provider is not None:
            self._provider.shutdown()


class ProxySpan:
    """One gateway request: its server span and a client span per worker attempt."""

    def __init__(self, tracer: Any, span: Any) -> None:
        self._tracer = tracer
        self._span = span

    def attempt(self, worker: str, model: str) -> WorkerCall:
        """Open the span of one call to ``worker``; its ``headers`` carry the call's trace context."""
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        span = self._tracer.start_span(
            "worker call",
            context=trace.set_span_in_context(self._span),
            kind=SpanKind.CLIENT,
            attributes={"embedserve.worker": worker, "embedserve.model": model},
        )
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
        return WorkerCall(span, carrier)

    def end(self, attributes: dict[str, Any], ended: float) -> None:
        """Close the request's span with what is known at the end (status, model, counts; never text or keys)."""
        from opentelemetry.trace import Status, StatusCode

        self._span.set_attributes(attributes)
        if attributes.get("http.response.status_code", 200) >= 500:
            self._span.set_status(Status(StatusCode.ERROR))
        self._span.end(end_time=_ns(ended))


class WorkerCall:
    """The span of one call from the gateway to a worker; ``headers`` (``traceparent``, ``tracestate``) go with it."""

    def __init__(self, span: Any, headers: dict[str, str]) -> None:
        self._span = span
        self.headers = headers

    def end(self, outcome: int | str) -> None:
        """Close it with the worker's status, or the name of the error that ended the call without one."""
        from opentelemetry.trace import Status, StatusCode

        if isinstance(outcome, int):
            self._span.set_attribute("http.response.status_code", outcome)
        else:
            self._span.set_attribute("error.type", outcome)
            self._span.set_status(Status(StatusCode.ERROR, outcome))
        self._span.end()
