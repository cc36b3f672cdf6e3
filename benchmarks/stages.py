"""Where embedserve's time goes, per request: its own stage histograms, scraped before and after a cell.

embedserve measures every request's stages (parse, tokenize, queue, inference, serialization) into Prometheus
histograms. The difference of their ``_sum`` and ``_count`` between two scrapes is the mean per request over exactly
the requests of one cell (its warm-up and grace included), with no extra instrumentation in the load path.
"""

from __future__ import annotations

import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

STAGES = ("parse", "tokenization", "queue", "inference", "serialization")
ROUTE = "/v1/embeddings"

Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(host: str, port: int, timeout: float = 10.0) -> Scrape:
    """Every sample of ``GET /metrics``, keyed by (sample name, sorted labels)."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as response:
        text = response.read().decode()
    found: Scrape = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    """How much one sample grew between two scrapes (0 where it is absent)."""
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def breakdown(before: Scrape, after: Scrape, model: str) -> dict[str, Any] | None:
    """Mean milliseconds per answered request in each stage, what the stages leave of the server's time, and the
    batches of the same requests. None when no request ran the pipeline between the scrapes."""
    count = delta(before, after, "embedserve_tokenization_duration_seconds_count", model=model)
    if count <= 0:
        return None
    per_request = {
        stage: 1000.0 * delta(before, after, f"embedserve_{stage}_duration_seconds_sum", model=model) / count
        for stage in STAGES
    }
    served = delta(before, after, "embedserve_request_duration_seconds_count", route=ROUTE, model=model)
    server_ms = 1000.0 * delta(before, after, "embedserve_request_duration_seconds_sum", route=ROUTE, model=model)
    server_ms = server_ms / served if served > 0 else float("nan")
    batches = delta(before, after, "embedserve_batch_duration_seconds_count", model=model)
    padded = delta(before, after, "embedserve_batch_tokens_sum", model=model)
    inputs = delta(before, after, "embedserve_batch_size_inputs_sum", model=model)
    forward_s = delta(before, after, "embedserve_batch_duration_seconds_sum", model=model)
    padding = delta(before, after, "embedserve_padding_tokens_total", model=model)
    return {
        "requests": int(count),
        "stages_ms": per_request,
        "server_ms": server_ms,
        # Waiting between a request's batches when its inputs span several, and the event loop's own scheduling.
        "other_in_server_ms": server_ms - sum(per_request.values()),
        "batches": int(batches),
        "batch_inputs_mean": inputs / batches if batches else None,
        "forward_ms_mean": 1000.0 * forward_s / batches if batches else None,
        "padding_ratio": padding / padded if padded else None,
    }


def longest_batch_bucket(before: Scrape, after: Scrape, model: str) -> tuple[float, float] | None:
    """The histogram bucket (lower, upper edge in seconds) that holds the longest forward pass run between the
    scrapes, from ``embedserve_batch_duration_seconds``; None when no batch ran. The upper edge bounds it."""
    name = "embedserve_batch_duration_seconds_bucket"
    edges = sorted(
        (float(dict(labels)["le"]), count - before.get((sample, labels), 0.0))
        for (sample, labels), count in after.items()
        if sample == name and dict(labels).get("model") == model
    )
    lower, below = 0.0, 0.0
    found = None
    for edge, cumulative in edges:
        if cumulative > below:
            found = (lower, edge)
        lower, below = edge, cumulative
    return found
