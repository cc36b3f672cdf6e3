"""The gateway's own Prometheus metrics, on its ``/metrics``: what it answered, how long it took, which workers live.

The workers keep their own metrics (queue, batches, predicted wait); these cover the edge in front of them, so that a
scrape of the gateway shows what clients saw, including the answers no worker gave (401, 404, 429 from a governor,
503 for a model with no live worker).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from embedserve.gateway.workers import Pool, Workers

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _counter(pool: Pool) -> Callable[[], float]:
    return lambda: float(len(pool.live))


class GatewayMetrics:
    """One registry per gateway (tests build several in one process)."""

    def __init__(self, workers: Workers) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "embedserve_gateway_requests", "Requests the gateway answered, by route, model and status.",
            ["route", "model", "status"], registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "embedserve_gateway_request_duration_seconds", "Arrival at the gateway to its response.",
            ["route", "model"], buckets=_BUCKETS, registry=r,
        )  # fmt: skip
        live = Gauge("embedserve_gateway_live_workers", "Workers of each model whose /health answers 200.",
                     ["model"], registry=r)  # fmt: skip
        for name, pool in workers.pools.items():
            live.labels(name).set_function(_counter(pool))

    def observe(self, route: str, model: str, status: int, seconds: float) -> None:
        """One answered request."""
        self.requests.labels(route, model, str(status)).inc()
        self.duration.labels(route, model).observe(seconds)

    def render(self) -> bytes:
        """The text exposition."""
        return generate_latest(self.registry)
