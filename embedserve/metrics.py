"""Every Prometheus collector, with its buckets, in one place.

One :class:`Metrics` per application (its own ``CollectorRegistry``, so several apps in one process, as in the
tests, never share counts). Requests are recorded by the HTTP edge, batches by the backend thread, and the gauges
read the runtimes when scraped.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from embedserve import __version__
from embedserve.core.batching import Batch
from embedserve.core.embedding_cache import Source
from embedserve.core.priority import LANES, Priority
from embedserve.core.results import Timings
from embedserve.core.runtime import ModelRuntime

SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Latency buckets: from a cached short input on a GPU (1 ms) to long batches on a CPU under overload (30 s)."""
BATCH_INPUTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
BATCH_TOKENS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    """The collectors. Names follow Prometheus conventions: ``embedserve_<noun>_<unit>``, counters ``_total``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "embedserve_requests", "Requests answered, by route, model and HTTP status.",
            ["route", "model", "status"], registry=r,
        )  # fmt: skip
        self.rejected = Counter(
            "embedserve_rejected_requests", "Requests refused, by reason (overloaded, rate_limited, validation, ...).",
            ["reason"], registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "embedserve_request_duration_seconds", "Time from the request's arrival to its response, by route.",
            ["route", "model"], buckets=SECONDS, registry=r,
        )  # fmt: skip

        def seconds(name: str, documentation: str) -> Histogram:
            return Histogram(name, documentation, ["model"], buckets=SECONDS, registry=r)

        self.parse_seconds = seconds(
            "embedserve_parse_duration_seconds",
            "Time from a request's arrival to its admission: key, rate limit, reading and validating the body.",
        )
        self.tokenization_seconds = seconds(
            "embedserve_tokenization_duration_seconds", "Time a request spent tokenizing."
        )
        self.queue_seconds = seconds(
            "embedserve_queue_duration_seconds", "Time a request's inputs waited for their first batch."
        )
        self.inference_seconds = seconds(
            "embedserve_inference_duration_seconds", "Forward-pass time of the batches a request's inputs ran in."
        )
        self.serialization_seconds = seconds(
            "embedserve_serialization_duration_seconds",
            "Time from a request's results being back on the event loop to its response built (JSON, base64).",
        )
        self.batch_seconds = seconds(
            "embedserve_batch_duration_seconds", "Time of one forward pass (pad, compute, copy back)."
        )
        self.batch_inputs = Histogram(
            "embedserve_batch_size_inputs", "Inputs per forward pass.",
            ["model"], buckets=BATCH_INPUTS, registry=r,
        )  # fmt: skip
        self.batch_tokens = Histogram(
            "embedserve_batch_tokens", "Padded tokens per forward pass (inputs x longest input).",
            ["model"], buckets=BATCH_TOKENS, registry=r,
        )  # fmt: skip
        self.padding_tokens = Counter(
            "embedserve_padding_tokens", "Padded tokens minus real tokens: compute spent on padding.",
            ["model"], registry=r,
        )  # fmt: skip
        self.embedded_inputs = Counter("embedserve_embedded_inputs", "Inputs computed.", ["model"], registry=r)
        self.embedded_tokens = Counter(
            "embedserve_embedded_tokens", "Real (unpadded) tokens computed.", ["model"], registry=r
        )
        self.queue_size = Gauge("embedserve_queue_size_inputs", "Inputs waiting for a batch.", ["model"], registry=r)
        self.lane_queue_size = Gauge(
            "embedserve_priority_queue_size_inputs", "Inputs waiting for a batch, by priority lane.",
            ["model", "priority"], registry=r,
        )  # fmt: skip
        self.lane_requests = Counter(
            "embedserve_priority_requests", "Requests by priority lane that admission let in (admitted) or refused "
            "with 429 (refused); refusals from the request head are counted only in embedserve_requests_total.",
            ["model", "priority", "outcome"], registry=r,
        )  # fmt: skip
        self.inflight = Gauge(
            "embedserve_inflight_inputs", "Inputs admitted and not yet answered (queued, tokenizing or running).",
            ["model"], registry=r,
        )  # fmt: skip
        self.predicted_wait = Gauge(
            "embedserve_predicted_wait_seconds",
            "Predicted wait of a request arriving now for its first forward pass (admission's figure).",
            ["model"], registry=r,
        )  # fmt: skip
        self.throughput = Gauge(
            "embedserve_throughput_tokens_per_second",
            "Measured real tokens per second of forward-pass time, as admission predicts with.", ["model"], registry=r,
        )  # fmt: skip
        self.cache_hit_inputs = Counter(
            "embedserve_cache_hits", "Inputs answered without computing them, by where the vector came from: local "
            "(in-process cache), shared (--cache-url), flight (an identical input being computed at the time).",
            ["model", "source"], registry=r,
        )  # fmt: skip
        self.cache_miss_inputs = Counter(
            "embedserve_cache_misses", "Inputs no cache held, computed by the model.", ["model"], registry=r
        )
        self.cache_evicted = Counter(
            "embedserve_cache_evictions", "Entries dropped from the in-process cache to make room.", registry=r
        )
        self.cache_bytes = Gauge(
            "embedserve_cache_bytes", "Bytes the in-process cache holds (vectors and bookkeeping).", registry=r
        )
        self.shared_cache_failures = Counter(
            "embedserve_shared_cache_errors", "Shared-cache (--cache-url) calls that failed or timed out, by "
            "operation (read, write, decode); the inputs were computed instead.", ["operation"], registry=r,
        )  # fmt: skip
        self.load_seconds = Gauge(
            "embedserve_model_load_seconds", "Time to load and warm up the model.", ["model"], registry=r
        )
        self.build_info = Gauge(
            "embedserve_build_info", "Always 1; labels say what runs.", ["version", "python"], registry=r
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)

    def watch(self, runtimes: Iterable[ModelRuntime]) -> None:
        """Gauges that read each runtime when scraped."""
        for runtime in runtimes:

            def queued(rt: ModelRuntime = runtime) -> float:
                return rt.queued

            def inflight(rt: ModelRuntime = runtime) -> float:
                return rt.admission.in_use

            def wait(rt: ModelRuntime = runtime) -> float:
                return rt.predicted_wait

            def speed(rt: ModelRuntime = runtime) -> float:
                return rt.admission.throughput.tokens_per_second or 0.0

            self.predicted_wait.labels(runtime.name).set_function(wait)
            self.throughput.labels(runtime.name).set_function(speed)
            self.queue_size.labels(runtime.name).set_function(queued)
            self.inflight.labels(runtime.name).set_function(inflight)
            for lane in LANES:
                self.lane_queue_size.labels(runtime.name, lane.value).set_function(
                    functools.partial(runtime.queued_in, lane)
                )
            if runtime.cache is not None:  # one cache for every model: hooked up again, to the same collectors
                runtime.cache.observer = self
                self.cache_bytes.set_function(functools.partial(getattr, runtime.cache, "held_bytes"))

    def observe_request(
        self, route: str, model: str, status: int, started: float, ended: float, timings: Timings | None
    ) -> None:
        """One answered request, from its arrival at ``started`` to its response at ``ended`` (``perf_counter``);
        the stage times only for requests that ran the pipeline."""
        self.requests.labels(route, model, str(status)).inc()
        self.request_seconds.labels(route, model).observe(ended - started)
        if timings is not None:
            self.parse_seconds.labels(model).observe(max(0.0, timings.started - started))
            self.serialization_seconds.labels(model).observe(max(0.0, ended - timings.finished))
            self.tokenization_seconds.labels(model).observe(timings.tokenization)
            self.queue_seconds.labels(model).observe(timings.queue)
            self.inference_seconds.labels(model).observe(timings.inference)

    def observe_lane(self, model: str, lane: Priority, admitted: bool) -> None:
        """A request of priority ``lane`` that admission let in, or refused."""
        self.lane_requests.labels(model, lane.value, "admitted" if admitted else "refused").inc()

    def observe_batch(self, model: str, batch: Batch) -> None:
        """One forward pass (called on the backend thread; the client library is thread-safe)."""
        padded, real = batch.padded_tokens, batch.real_tokens
        self.batch_seconds.labels(model).observe(batch.t_end - batch.t_start)
        self.batch_inputs.labels(model).observe(len(batch.entries))
        self.batch_tokens.labels(model).observe(padded)
        self.padding_tokens.labels(model).inc(padded - real)
        self.embedded_inputs.labels(model).inc(len(batch.entries))
        self.embedded_tokens.labels(model).inc(real)

    def cache_hits(self, model: str, source: Source, n: int) -> None:
        """``n`` inputs answered from a cache or a flight (the embedding cache's observer)."""
        self.cache_hit_inputs.labels(model, source.value).inc(n)

    def cache_misses(self, model: str, n: int) -> None:
        """``n`` inputs computed after every cache missed."""
        self.cache_miss_inputs.labels(model).inc(n)

    def cache_evictions(self, n: int) -> None:
        """``n`` entries evicted from the in-process cache."""
        self.cache_evicted.inc(n)

    def shared_cache_error(self, operation: str) -> None:
        """A failed or timed-out shared-cache call."""
        self.shared_cache_failures.labels(operation).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
