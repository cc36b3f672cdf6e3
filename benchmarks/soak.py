"""The soak of ``python -m benchmarks overload``: minutes of mixed routes and sizes at 70% of the capacity, with a
slice of malformed requests, while RSS is sampled; the slope of a line fitted to RSS after a warm-up says whether
memory creeps.

The requests are built once, before the load: a deterministic shuffle of ``SOAK_LIST`` requests in the shares of
``KINDS`` (the load generator cycles through them), sent open loop with Poisson arrivals. The rate is set in tokens:
70% of the capacity's tokens/s divided by the mean tokens a request asks the model to compute (a 32-text request of
long inputs weighs as much as a hundred short single ones; tokenize and malformed requests count as none).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks import servers
from benchmarks.launch import Target
from benchmarks.loadgen import LoadResult, LoadSpec, build_request
from benchmarks.plan import SEED, Workload
from benchmarks.runner import Run, drive
from benchmarks.stats import latency_summary, server_errors, summarize

SOAK_FRACTION = 0.7
DEFAULT_PAYLOAD_LIMIT = 2_000_000  # embedserve's --payload-limit default
SOAK_LIST = 2000  # distinct requests, cycled
RSS_WARMUP_MAX_S = 120.0  # RSS samples before this (or a fifth of a shorter soak) are left out of the fitted line
MIXES = (("short", 40), ("mixed", 45), ("long", 15))  # length mix of a request's texts, weighted

# kind -> (percent of the requests, what a correct server answers: 200, or the 4xx of that mistake).
KINDS: dict[str, tuple[float, int]] = {
    "embeddings": (44.0, 200),  # POST /v1/embeddings, 1 to 32 texts
    "embed": (33.0, 200),  # POST /embed (TEI), 1 to 32 texts, a bare string now and then
    "tokenize": (16.0, 200),  # POST /tokenize, 1 to 8 texts
    "bad-json": (2.0, 400),  # a valid body cut in half
    "wrong-type": (1.5, 422),  # a number, token ids, an object, a null where texts belong
    "empty": (1.5, 400),  # [] or ""
    "too-many": (0.75, 422),  # one text over --max-client-batch-size
    "unknown-model": (0.75, 404),  # /v1/embeddings naming a model that is not served
    "oversize": (0.5, 413),  # a body over --payload-limit
}


@dataclass(frozen=True)
class SoakRequest:
    """One pre-built request of the soak."""

    kind: str
    data: bytes  # the whole HTTP request
    texts: int  # embeddings it asks for (0: tokenize, malformed)
    tokens: int  # tokens it asks the model to compute (0: tokenize, malformed)


class _Builder:
    """Builds the soak's requests from the workload's texts, deterministically from a seed."""

    def __init__(self, workload: Workload, target: Target, limits: dict[str, Any]) -> None:
        self.rng = random.Random(SEED + 101)
        self.workload = workload
        self.model = target.model_name
        self.port = target.server.spec.port
        self.max_batch = int(limits["max_client_batch_size"])
        # One oversize body for all: the list holds the same bytes object, pickled once for the load worker.
        words = "word " * ((int(limits["payload_limit"]) + 65536) // 5)
        self.oversize = self._request("/embed", {"inputs": [words]})

    def _request(self, path: str, body: Any) -> bytes:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return build_request(servers.HOST, self.port, path, raw)

    def _texts(self, count: int) -> tuple[list[str], int]:
        mix = self.rng.choices([m for m, _ in MIXES], weights=[w for _, w in MIXES])[0]
        pool, tokens = self.workload.texts[mix], self.workload.tokens[mix]
        start = self.rng.randrange(len(pool))
        picked = [(start + i) % len(pool) for i in range(count)]
        return [pool[i] for i in picked], sum(tokens[i] for i in picked)

    def _size(self) -> int:
        # Half single texts (search queries), half batches of 2 to the client limit (indexing jobs).
        return 1 if self.rng.random() < 0.5 else self.rng.randint(2, self.max_batch)

    def build(self, kind: str) -> SoakRequest:
        """One request of a kind."""
        if kind in ("embeddings", "embed"):
            texts, tokens = self._texts(self._size())
            if kind == "embeddings":
                data = self._request("/v1/embeddings", {"input": texts, "model": self.model})
            else:
                bare = len(texts) == 1 and self.rng.random() < 0.5
                data = self._request("/embed", {"inputs": texts[0] if bare else texts})
            return SoakRequest(kind, data, len(texts), tokens)
        if kind == "tokenize":
            texts, _ = self._texts(self.rng.randint(1, 8))
            return SoakRequest(kind, self._request("/tokenize", {"inputs": texts}), 0, 0)
        if kind == "oversize":
            return SoakRequest(kind, self.oversize, 0, 0)
        path, body = self._malformed(kind)
        return SoakRequest(kind, self._request(path, body), 0, 0)

    def _malformed(self, kind: str) -> tuple[str, Any]:
        texts, _ = self._texts(self.max_batch + 1 if kind == "too-many" else 2)
        choices: dict[str, list[tuple[str, Any]]] = {
            "bad-json": [
                ("/v1/embeddings", json.dumps({"input": texts, "model": self.model}).encode()[:40]),
                ("/embed", json.dumps({"inputs": texts}).encode()[:25]),
            ],
            "wrong-type": [
                ("/v1/embeddings", {"input": 5, "model": self.model}),
                ("/embed", {"inputs": [101, 2023, 102]}),
                ("/v1/embeddings", {"input": {"text": texts[0]}, "model": self.model}),
                ("/embed", {"inputs": [texts[0], None]}),
            ],
            "empty": [
                ("/v1/embeddings", {"input": [], "model": self.model}),
                ("/embed", {"inputs": []}),
                ("/embed", {"inputs": ""}),
                ("/tokenize", {"inputs": []}),
            ],
            "too-many": [("/v1/embeddings", {"input": texts, "model": self.model}), ("/embed", {"inputs": texts})],
            "unknown-model": [("/v1/embeddings", {"input": texts[:1], "model": "no-such-model"})],
        }
        return self.rng.choice(choices[kind])


def build_requests(workload: Workload, target: Target, limits: dict[str, Any]) -> list[SoakRequest]:
    """``SOAK_LIST`` requests in the shares of ``KINDS``, shuffled (deterministic)."""
    builder = _Builder(workload, target, limits)
    kinds = [kind for kind, (share, _) in KINDS.items() for _ in range(round(SOAK_LIST * share / 100.0))]
    builder.rng.shuffle(kinds)
    return [builder.build(kind) for kind in kinds]


def run_soak(
    run: Run, target: Target, capacity: dict[str, Any], limits: dict[str, Any], timing: tuple[float, float]
) -> dict[str, Any]:
    """The soak for ``timing[0]`` minutes, sampling RSS every ``timing[1]`` seconds; its numbers."""
    minutes, interval_s = timing
    requests = build_requests(run.workload, target, limits)
    tokens = [r.tokens for r in requests]
    mean_tokens = sum(tokens) / len(tokens)
    rate = SOAK_FRACTION * capacity["tokens_per_s"] / mean_tokens
    spec = LoadSpec(servers.HOST, target.server.spec.port, [r.data for r in requests], start_at=time.monotonic() + 1.0,
                    warmup_s=0.0, duration_s=60.0 * minutes, grace_s=30.0, rate=rate, seed=SEED + 57)  # fmt: skip
    window = (spec.t0, spec.t1)
    run.progress(f"soak: {minutes:g} min at {rate:.1f} req/s ({rate * mean_tokens:.0f} tokens/s offered)")
    with servers.RssSampler(target.server, interval_s, keep_series=True) as sampler:
        load = drive(run, target.server, [spec], window, tick=_ticker(run, sampler, spec.t0))
    stats, _ = summarize(load.results, [r.texts for r in requests], tokens, window, spread=False)
    series = sampler.mib_series(spec.t0)
    by_kind = per_kind(load.results[0], requests, window)
    record = {
        "minutes": minutes,
        "fraction_of_capacity": SOAK_FRACTION,
        "rate": rate,
        "offered_tokens_per_s": rate * mean_tokens,
        "offered_embeddings_per_s": rate * sum(r.texts for r in requests) / len(requests),
        "kinds": {kind: {"percent": share, "expected": status} for kind, (share, status) in KINDS.items()},
        **stats,
        **load.cpu(),
        "status_5xx": server_errors(stats["status_counts"]),
        "by_kind": by_kind,
        "unexpected": sum(k["unexpected"] for k in by_kind.values()),
        "rss": rss_slope(series, (min(RSS_WARMUP_MAX_S, 60.0 * minutes / 5.0), 60.0 * minutes)),
    }
    rss = record["rss"]
    run.progress(
        f"soak: {stats['requests']} requests, statuses {stats['status_counts']}, 5xx {record['status_5xx']}, "
        f"unexpected {record['unexpected']}; RSS {rss['start_mib']:.0f} -> {rss['end_mib']:.0f} MiB, slope after "
        f"{rss['warmup_s']:.0f} s {rss['slope_mib_per_min']:+.2f} MiB/min"
    )
    return record


def _ticker(run: Run, sampler: servers.RssSampler, t0: float) -> Callable[[], None]:
    def tick() -> None:
        rss = sampler.series[-1][1] / 2**20 if sampler.series else float("nan")
        run.progress(f"soak: {(time.monotonic() - t0) / 60.0:.1f} min, RSS {rss:.0f} MiB")

    return tick


def per_kind(result: LoadResult, requests: list[SoakRequest], window: tuple[float, float]) -> dict[str, Any]:
    """Per kind of request sent inside the window: statuses; shed (429: admission may refuse any request, malformed
    or not, before reading it); unexpected (neither 429 nor the kind's answer: 200 for a valid request, a 4xx for a
    malformed one, whose exact status is in the counts); the 200s' latency."""
    t0, t1 = window
    statuses: dict[str, Counter[int]] = {kind: Counter() for kind in KINDS}
    latencies: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for sent, done, status, plan in zip(result.sent, result.done, result.status, result.plan, strict=True):
        if t0 <= sent < t1:
            kind = requests[plan].kind
            statuses[kind][status] += 1
            if status == 200:
                latencies[kind].append((done - sent) * 1000.0)
    out = {}
    for kind, counts in statuses.items():
        valid = KINDS[kind][1] == 200
        answered = counts[200] if valid else sum(n for s, n in counts.items() if 400 <= s < 500 and s != 429)
        out[kind] = {
            "requests": sum(counts.values()),
            "status_counts": {str(s): n for s, n in sorted(counts.items())},
            "shed": counts[429],
            "unexpected": sum(counts.values()) - answered - counts[429],
            "latency_ms": latency_summary(sorted(latencies[kind])),
        }
    return out


def rss_slope(series: list[tuple[float, float]], span: tuple[float, float]) -> dict[str, Any]:
    """A least-squares line through the RSS samples (seconds since the load started, MiB) from the end of the
    warm-up to the end of the load (``span``): its slope in MiB per minute."""
    warmup_s, end_s = span
    points = [(t, mib) for t, mib in series if warmup_s <= t <= end_s]
    inside = [mib for t, mib in series if 0 <= t <= end_s]
    slope = float("nan")
    if len(points) >= 2:
        mean_t = sum(t for t, _ in points) / len(points)
        mean_m = sum(m for _, m in points) / len(points)
        spread = sum((t - mean_t) ** 2 for t, _ in points)
        slope = 60.0 * sum((t - mean_t) * (m - mean_m) for t, m in points) / spread if spread else float("nan")
    return {
        "series": series,
        "warmup_s": warmup_s,
        "end_s": end_s,
        "samples_fitted": len(points),
        "slope_mib_per_min": slope,
        "start_mib": inside[0] if inside else float("nan"),
        "after_warmup_mib": points[0][1] if points else float("nan"),
        "end_mib": inside[-1] if inside else float("nan"),
        "max_mib": max(inside, default=float("nan")),
    }
