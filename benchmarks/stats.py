"""Turning load-generator records into a cell's numbers."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from benchmarks.loadgen import CLIENT_DROPPED, CONNECTION_ERROR, UNFINISHED, LoadResult

_STATUS_NAMES = {CONNECTION_ERROR: "connection_error", UNFINISHED: "unfinished"}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of already sorted values, linearly interpolated; NaN when empty."""
    if not sorted_values:
        return math.nan
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    weight = position - low
    return sorted_values[low] * (1.0 - weight) + sorted_values[high] * weight


def _credit(sent: float, done: float, t0: float, t1: float, spread: bool) -> float:
    """How much of one successful request counts toward the window's throughput (0 to 1)."""
    if not spread:
        return 1.0 if t0 <= done < t1 else 0.0
    if done <= t0 or sent >= t1:
        return 0.0
    if done <= sent:
        return 1.0
    return (min(done, t1) - max(sent, t0)) / (done - sent)


def summarize(
    results: Sequence[LoadResult],
    texts_per_plan: Sequence[int],
    tokens_per_plan: Sequence[int],
    window: tuple[float, float],
    spread: bool,
) -> tuple[dict[str, Any], list[float]]:
    """A cell's numbers and its sorted successful latencies in ms.

    Latency, the 429 rate and the error rate cover the requests sent (open loop: scheduled) inside the timed window
    [t0, t1); requests of the warm-up are left out.

    Throughput counts successful requests completed inside the window, whenever they were sent. With ``spread``
    (closed loop) each request's texts are instead spread evenly over its lifetime [sent, done] and the part inside
    the window counts. With a fixed number of users that is Little's law and matches the completion rate in a steady
    state, without the quantization of whole completions: a cell whose requests take over a second (32 long texts)
    would otherwise gain or lose a whole request's texts depending on where the window edges fall. Open loop counts
    completions, because an overloaded server's growing backlog would get credit it never earned.
    """
    t0, t1 = window
    duration = t1 - t0
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    done_requests = done_texts = done_tokens = 0.0
    for result in results:
        for sent, done, status, plan in zip(result.sent, result.done, result.status, result.plan, strict=True):
            if status == 200:
                share = _credit(sent, done, t0, t1, spread)
                done_requests += share
                done_texts += share * texts_per_plan[plan]
                done_tokens += share * tokens_per_plan[plan]
            if not t0 <= sent < t1:
                continue
            statuses[status] += 1
            if status == 200:
                latencies.append((done - sent) * 1000.0)
    latencies.sort()
    dropped = statuses.pop(CLIENT_DROPPED, 0)
    issued = sum(statuses.values())
    ok, n429 = statuses[200], statuses[429]
    cpu_s = sum(r.cpu_s for r in results)
    stats: dict[str, Any] = {
        "requests": issued,
        "ok": ok,
        "status_429": n429,
        "errors": issued - ok - n429,
        # What the errors were: HTTP statuses, "connection_error", "unfinished" (no answer by the end of the grace).
        "status_counts": {_STATUS_NAMES.get(code, str(code)): n for code, n in sorted(statuses.items())},
        "client_dropped": dropped,
        "rate_429": n429 / issued if issued else 0.0,
        "error_rate": (issued - ok - n429) / issued if issued else 0.0,
        "requests_per_s": done_requests / duration,
        "embeddings_per_s": done_texts / duration,
        "tokens_per_s": done_tokens / duration,
        "sent_per_s": (issued + dropped) / duration,
        "latency_ms": latency_summary(latencies),
        # Percent of one core used by the load generator during the timed window: shows it was not the bottleneck.
        "loadgen_cpu_pct": 100.0 * cpu_s / duration,
        "loadgen_max_lag_ms": 1000.0 * max((r.max_lag_s for r in results), default=0.0),
        "connections": sum(r.connections for r in results),
    }
    return stats, latencies


def latency_summary(sorted_ms: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99, mean and max of sorted latencies (NaN when there are none)."""
    return {
        "p50": percentile(sorted_ms, 50),
        "p90": percentile(sorted_ms, 90),
        "p99": percentile(sorted_ms, 99),
        "mean": sum(sorted_ms) / len(sorted_ms) if sorted_ms else math.nan,
        "max": sorted_ms[-1] if sorted_ms else math.nan,
    }


def latencies_of(results: Sequence[LoadResult], window: tuple[float, float], status: int) -> list[float]:
    """Sorted latencies (ms) of the requests sent inside ``window`` that were answered with ``status``."""
    t0, t1 = window
    found = [
        (done - sent) * 1000.0
        for result in results
        for sent, done, code in zip(result.sent, result.done, result.status, strict=True)
        if code == status and t0 <= sent < t1
    ]
    return sorted(found)


def server_errors(status_counts: dict[str, int]) -> int:
    """How many answers were 5xx, from a ``status_counts`` (keys: HTTP statuses and pseudo-status names)."""
    return sum(n for code, n in status_counts.items() if code.isdigit() and int(code) >= 500)


def downsample(sorted_values: Sequence[float], points: int = 400) -> list[float]:
    """At most ``points`` evenly spaced quantiles of sorted values (always keeping the first and last)."""
    if len(sorted_values) <= points:
        return [round(v, 3) for v in sorted_values]
    step = (len(sorted_values) - 1) / (points - 1)
    return [round(sorted_values[round(i * step)], 3) for i in range(points)]
