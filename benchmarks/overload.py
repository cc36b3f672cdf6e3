"""``python -m benchmarks overload``: embedserve flooded at 10x its capacity, with and without admission by predicted
wait, then soaked with mixed routes and malformed requests (issue 10). It writes overload.json, overload.md and the
overload_*.png plots next to, and apart from, the main run's results.

The flood, per server variant (``variants.OVERLOAD_VARIANTS``): closed-loop cells measure the capacity (the first
server's sets the rate for both); then a steady prober sends one short input at a fixed rate, alone for a few
seconds (its median there is the idle latency), through an open-loop flood of single mixed-length texts at 10x the
capacity, and for some seconds after the flood's last arrival (the recovery). Every response's ``Retry-After`` and
``x-inference-time`` (the forward pass its input ran in) are recorded, and the server's metrics are scraped around it.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import os
import re
import shlex
import site
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks import overload_report, servers, soak, stages
from benchmarks.launch import Target, started
from benchmarks.loadgen import LoadResult, LoadSpec
from benchmarks.plan import FULL, QUICK, SEED, Cell, build_workload
from benchmarks.runner import (
    OVERLOAD_GRACE_S,
    Options,
    Run,
    capacity_cell,
    cell_specs,
    drive,
    guarded,
    hardware,
    idle_check,
    rss_verdict,
    run_cell,
    torch_facts,
    worker_pool,
    write_json,
)
from benchmarks.stats import latencies_of, latency_summary, percentile, server_errors, summarize
from benchmarks.variants import OVERLOAD_VARIANTS, Variant

# The documented default of --max-queue-time, for a server that does not report its own in /info: the bound the
# admitted requests' p99 is judged against (also for the variant that turns the prediction off, as the reference).
DEFAULT_MAX_QUEUE_TIME_S = 1.0
FLOOD_CAPTURE = ("retry-after", "x-inference-time")
# The load generator keeps its connections under the server's --max-connections (default 1024; over it a connection's
# first request gets 503), like a client pool sized to the server: arrivals that find every connection busy are
# client drops, reported, not requests. The headroom is for the prober and the metrics scrapes.
DEFAULT_MAX_CONNECTIONS = 1024
CONNECTION_HEADROOM = 16


@dataclass(frozen=True)
class Plan:
    """Durations of the overload command."""

    name: str
    capacity_concurrency: tuple[int, ...]  # closed-loop cells (single mixed texts) that measure the capacity
    flood_s: float  # open loop at 10x the capacity; 0 skips the flood
    idle_s: float  # the prober alone before the flood: its median is the idle latency
    after_s: float  # the prober after the flood's last arrival: the recovery
    probe_rate: float  # prober requests per second (evenly spaced)
    soak_minutes: float  # 0 skips the soak
    rss_interval_s: float


FULL_PLAN = Plan("full", (32, 128), flood_s=60.0, idle_s=5.0, after_s=10.0, probe_rate=20.0, soak_minutes=10.0,
                 rss_interval_s=1.0)  # fmt: skip
QUICK_PLAN = Plan("quick", (32,), flood_s=10.0, idle_s=3.0, after_s=4.0, probe_rate=20.0, soak_minutes=0.75,
                  rss_interval_s=0.5)  # fmt: skip


def execute(options: Options, plan: Plan) -> Path:
    """The flood on every overload variant, then the soak; overload.json, overload.md and the plots."""
    options.out.mkdir(parents=True, exist_ok=True)
    workload = build_workload(options.model, ("short", "mixed", "long"))
    began = time.monotonic()
    # Three load processes: two for the flood's arrivals, one for the prober.
    with worker_pool(3) as pool, tempfile.TemporaryDirectory(prefix="embedserve-overload-") as workdir:
        run = Run(options, QUICK if options.quick else FULL, workload, pool, Path(workdir))
        run.results = _header(options, plan)
        run.progress(f"overload ({plan.name}): flood {plan.flood_s:.0f} s, soak {plan.soak_minutes:g} min")
        run.results["idle_check_cpu_pct"] = busy = idle_check()
        if busy > 25.0:
            run.progress(f"WARNING: the machine is busy before the run ({busy:.0f}% of a core): numbers will be noisy")
        if plan.flood_s > 0:
            for variant in OVERLOAD_VARIANTS:
                guarded(run, variant.name, functools.partial(_flood, run, variant, plan), section="flood")
                _save(run)
        if plan.soak_minutes > 0:
            guarded(run, "soak", functools.partial(_soak, run, plan), section=None)
        run.results["hardware"].update(torch_facts())
        run.results["wall_s"] = time.monotonic() - began
        path = _save(run)
        run.progress(f"done in {run.results['wall_s']:.0f} s: {path.with_suffix('.md')}")
    return path


def render(out: Path) -> Path:
    """Recompute the targets and rewrite overload.md and the plots from an existing overload.json."""
    path = out / "overload.json"
    results = json.loads(path.read_text())
    results["targets"] = overload_report.targets(results)
    write_json(path, results)
    overload_report.write(results, out)
    return path.with_suffix(".md")


def _save(run: Run) -> Path:
    """overload.json (no local paths in it), with the targets as measured so far, and the report."""
    run.results["targets"] = overload_report.targets(run.results)
    path = write_json(run.options.out / "overload.json", scrub(run.results))
    overload_report.write(scrub(run.results), run.options.out)
    return path


def _header(options: Options, plan: Plan) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": plan.name,
        "command": options.command,
        "model": str(options.model),
        "embedserve_args": shlex.join(options.embedserve_args),
        "hardware": hardware(),
        "plan": {k: v for k, v in vars(plan).items() if k != "name"},
        "flood": {},
    }


# --- capacity and the flood ---------------------------------------------------------------------------------------


def _flood(run: Run, variant: Variant, plan: Plan) -> None:
    """One server variant: its capacity cells, then the flood with the prober."""
    with started(run.options, variant, log_name=f"overload-{variant.name}") as up:
        entry, target = up.entry, up.target
        run.results["flood"][variant.name] = entry
        run.progress(f"{variant.name} up in {entry['startup_s']:.1f} s: {variant.description}")
        entry["limits"] = _limits(target)
        capacity = _measure_capacity(run, target, plan, variant.name)
        entry["capacity_cells"] = capacity.pop("cells")
        entry["own_capacity"] = capacity
        shared = run.results.setdefault("capacity", capacity)
        entry.update(measure_flood(run, target, 10.0 * shared["requests_per_s"], plan, entry["limits"]))


def _measure_capacity(run: Run, target: Target, plan: Plan, name: str) -> dict[str, Any]:
    cells = [run_cell(run, target, Cell("mixed", 1, concurrency=c)) for c in plan.capacity_concurrency]
    best = capacity_cell(cells)
    if best is None or best["requests_per_s"] <= 0:
        raise servers.ServerError(f"{name}: no capacity cell ran without errors")
    return {
        "requests_per_s": best["requests_per_s"],
        "embeddings_per_s": best["embeddings_per_s"],
        "tokens_per_s": best["tokens_per_s"],
        "concurrency": best["concurrency"],
        "measured_on": name,
        "cells": cells,
    }


def _limits(target: Target) -> dict[str, Any]:
    """The admission limits the server runs with: /info's own figures, else its command line, else the defaults."""
    _, info = servers.http_json(target.server.spec.port, "/info")
    info = info if isinstance(info, dict) else {}
    argv = target.server.spec.argv
    queue_time = info.get("max_queue_time", flag_value(argv, "--max-queue-time"))
    return {
        "max_queue_time_s": DEFAULT_MAX_QUEUE_TIME_S if queue_time is None else float(queue_time),
        "max_concurrent_requests": info.get("max_concurrent_requests", flag_value(argv, "--max-concurrent-requests")),
        "max_connections": int(flag_value(argv, "--max-connections") or DEFAULT_MAX_CONNECTIONS),
        "max_batch_tokens": info.get("max_batch_tokens"),
        "max_client_batch_size": info.get("max_client_batch_size", 32),
        "payload_limit": int(flag_value(argv, "--payload-limit") or soak.DEFAULT_PAYLOAD_LIMIT),
        "engine": (info.get("engine") or {}).get("name"),
        "dtype": info.get("model_dtype"),
    }


def flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value of the last ``flag VALUE`` or ``flag=VALUE`` on a command line, or None."""
    found = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith(flag + "="):
            found = arg.split("=", 1)[1]
    return found


def measure_flood(run: Run, target: Target, rate: float, plan: Plan, limits: dict[str, Any]) -> dict[str, Any]:
    """The prober alone, the flood with the prober, the prober after it; the numbers of each part."""
    server, port = target.server, target.server.spec.port
    _, n_texts, n_tokens = target.requests(run.workload, "mixed", 1)
    probe_bodies, _, _ = target.requests(run.workload, "short", 1)
    probe_at = time.monotonic() + 1.0
    flood_at = probe_at + plan.idle_s
    cell = Cell("mixed", 1, rate=rate, rate_note="10x capacity")
    flood = cell_specs(run, target, cell, (0.0, plan.flood_s, OVERLOAD_GRACE_S), 2, start_at=flood_at)
    per_worker = flood[0].max_connections
    if limits["max_connections"] > 0:  # 0: the server's cap is off
        per_worker = max(1, min(per_worker, (limits["max_connections"] - CONNECTION_HEADROOM) // len(flood)))
    flood = [replace(spec, capture=FLOOD_CAPTURE, max_connections=per_worker) for spec in flood]
    probe = LoadSpec(servers.HOST, port, probe_bodies, start_at=probe_at, warmup_s=0.0,
                     duration_s=plan.idle_s + plan.flood_s + plan.after_s, grace_s=OVERLOAD_GRACE_S,
                     rate=plan.probe_rate, seed=SEED + 31, steady=True, capture=("retry-after",))  # fmt: skip
    window = (flood[0].t0, flood[0].t1)
    before = stages.scrape(servers.HOST, port)
    with servers.RssSampler(server, plan.rss_interval_s, keep_series=True) as sampler:
        load = drive(run, server, [*flood, probe], window)
    after = stages.scrape(servers.HOST, port)
    flood_results, probe_result = load.results[:-1], load.results[-1]
    stats, _ = summarize(flood_results, n_texts, n_tokens, window, spread=False)
    series = sampler.mib_series(window[0])
    record: dict[str, Any] = {
        "rate": rate,
        "duration_s": plan.flood_s,
        "client_connections_max": sum(spec.max_connections for spec in flood),
        **stats,
        **load.cpu(),
        "latency_429_ms": latency_summary(latencies_of(flood_results, window, 429)),
        "status_5xx": server_errors(stats["status_counts"]),
        "retry_after_s": retry_after(flood_results, window),
        "longest_forward": _longest_forward(
            flood_results, window, stages.longest_batch_bucket(before, after, target.model_name)
        ),
        "batches": stages.breakdown(before, after, target.model_name),
        "probe": probe_summary(probe_result, window, (plan.idle_s, plan.after_s)),
        "timeline": timeline(flood_results, window, (plan.idle_s, plan.after_s)),
        **rss_verdict(series, plan.flood_s),
        "settle_s": servers.settle(server, run.profile.settle_s),
    }
    _progress(run, server.spec.name, record)
    return record


def _progress(run: Run, name: str, r: dict[str, Any]) -> None:
    lat, l429, probe = r["latency_ms"], r["latency_429_ms"], r["probe"]
    recovery = probe["recovery_s"]
    run.progress(
        f"{name:14s} flood {r['rate']:.0f} req/s: 200 {r['ok']} 429 {r['status_429']} other {r['errors']} "
        f"(5xx {r['status_5xx']}); goodput {r['embeddings_per_s']:.1f} emb/s; 200 p50/p99 {lat['p50']:.0f}/"
        f"{lat['p99']:.0f} ms; 429 p99 {l429['p99']:.1f} ms; longest forward {r['longest_forward']['bound_s']:.3f} s; "
        f"Retry-After {r['retry_after_s']['counts']}; recovery "
        f"{'none' if recovery is None else f'{recovery:.2f} s'} (idle p50 {probe['idle_p50_ms']:.1f} ms); "
        f"RSS thirds {r['rss_first_third_mib']:.0f}/{r['rss_middle_third_mib']:.0f}/{r['rss_last_third_mib']:.0f} MiB"
    )


# --- what the records say -----------------------------------------------------------------------------------------


def _records(results: Iterable[LoadResult]) -> Iterator[tuple[float, float, int, dict[str, str]]]:
    """(sent, done, status, captured headers) of every request."""
    for result in results:
        for i, (sent, done, status) in enumerate(zip(result.sent, result.done, result.status, strict=True)):
            yield sent, done, status, result.headers.get(i, {})


def retry_after(results: Sequence[LoadResult], window: tuple[float, float]) -> dict[str, Any]:
    """The ``Retry-After`` values of the 429s sent inside the window: how often each, and their range."""
    t0, t1 = window
    counts = Counter(h.get("retry-after", "none") for sent, _, status, h in _records(results)
                     if status == 429 and t0 <= sent < t1)  # fmt: skip
    numbers = sorted(float(v) for v, n in counts.items() for _ in range(n) if _is_number(v))
    return {
        "counts": dict(sorted(counts.items(), key=lambda kv: (not _is_number(kv[0]), _sort_key(kv[0])))),
        "min": numbers[0] if numbers else None,
        "p50": percentile(numbers, 50) if numbers else None,
        "max": numbers[-1] if numbers else None,
    }


def _is_number(text: str) -> bool:
    return re.fullmatch(r"\d+(\.\d+)?", text) is not None


def _sort_key(text: str) -> float:
    return float(text) if _is_number(text) else math.inf


def _longest_forward(
    results: Sequence[LoadResult], window: tuple[float, float], bucket: tuple[float, float] | None
) -> dict[str, Any]:
    """The longest forward pass of the flood: the largest ``x-inference-time`` (whole ms, the forward pass that a
    single-text request's input ran in) of the admitted requests, to within its rounding; else the upper edge of the
    server's histogram bucket that holds its longest batch."""
    t0, t1 = window
    header_ms = [int(h["x-inference-time"]) for sent, _, status, h in _records(results)
                 if status == 200 and t0 <= sent < t1 and h.get("x-inference-time", "").isdigit()]  # fmt: skip
    client_s = (max(header_ms) + 0.5) / 1000.0 if header_ms else None
    bound = client_s if client_s is not None else (bucket[1] if bucket else None)
    return {
        "client_max_s": client_s,
        "client_p99_s": percentile(sorted(header_ms), 99) / 1000.0 if header_ms else None,
        "histogram_bucket_s": list(bucket) if bucket else None,
        "bound_s": bound if bound is not None else math.nan,
        "source": "x-inference-time" if client_s is not None else "histogram bucket",
    }


def probe_summary(result: LoadResult, window: tuple[float, float], margins: tuple[float, float]) -> dict[str, Any]:
    """The prober's idle median (over ``margins[0]`` seconds before the flood), and how long after the flood's last
    arrival its first answer of normal latency (200 within twice the idle median) came back."""
    t0, t1 = window
    idle_s, after_s = margins
    points = [(sent - t0, (done - sent) * 1000.0, status) for sent, done, status, _ in _records([result])]
    idle = sorted(ms for t, ms, status in points if status == 200 and -idle_s <= t < 0)
    idle_p50 = percentile(idle, 50)
    threshold = overload_report.NORMAL_FACTOR * idle_p50
    flood_end = t1 - t0
    normal = [t + ms / 1000.0 for t, ms, status in points if t >= flood_end and status == 200 and ms <= threshold]
    first_done = min(normal, default=None)
    return {
        "requests": len(points),
        "after_s": after_s,
        "idle_samples": len(idle),
        "idle_p50_ms": idle_p50,
        "normal_threshold_ms": threshold,
        "recovery_s": None if first_done is None else first_done - flood_end,
        "statuses": dict(Counter(str(status) for _, _, status in points)),
        "points": [(round(t, 3), round(ms, 2) if math.isfinite(ms) else None, status) for t, ms, status in points],
    }


def timeline(
    results: Sequence[LoadResult], window: tuple[float, float], margins: tuple[float, float]
) -> dict[str, Any]:
    """The flood second by second (half-seconds for short floods), from ``margins[0]`` before it to ``margins[1]``
    after its end: requests sent, answered 200 / 429 / otherwise (by send time), the admitted requests' p50 and p99
    (by send time), and goodput (200s completed in the bin, per second)."""
    t0, t1 = window
    bin_s = 1.0 if t1 - t0 >= 30 else 0.5
    first = -math.ceil(margins[0] / bin_s)
    count = math.ceil((t1 - t0 + margins[1]) / bin_s) - first
    sent_n, ok_n, n429, other, done_ok = ([0] * count for _ in range(5))
    latencies: list[list[float]] = [[] for _ in range(count)]
    for sent, done, status, _ in _records(results):
        i = math.floor((sent - t0) / bin_s) - first
        if 0 <= i < count:
            sent_n[i] += 1
            (ok_n if status == 200 else n429 if status == 429 else other)[i] += 1
            if status == 200:
                latencies[i].append((done - sent) * 1000.0)
        j = math.floor((done - t0) / bin_s) - first if status == 200 else -1
        if 0 <= j < count:
            done_ok[j] += 1
    for bucket in latencies:
        bucket.sort()
    return {
        "bin_s": bin_s,
        "t": [round((first + i) * bin_s, 3) for i in range(count)],
        "sent": sent_n,
        "ok": ok_n,
        "status_429": n429,
        "other": other,
        "p50_ms": [percentile(b, 50) if b else None for b in latencies],
        "p99_ms": [percentile(b, 99) if b else None for b in latencies],
        "goodput": [n / bin_s for n in done_ok],
    }


# --- the soak ---------------------------------------------------------------------------------------------------


def _soak(run: Run, plan: Plan) -> None:
    """A fresh server with default flags, 70% of the capacity in mixed routes and sizes for ``soak_minutes``."""
    variant = OVERLOAD_VARIANTS[0]
    with started(run.options, variant, log_name="overload-soak") as up:
        limits = _limits(up.target)
        capacity = run.results.get("capacity")
        if capacity is None:
            capacity = run.results["capacity"] = _measure_capacity(run, up.target, plan, variant.name)
            capacity.pop("cells")
        run.results["soak"] = {
            **{k: v for k, v in up.entry.items() if k in ("description", "argv", "version", "startup_s")},
            "limits": limits,
            **soak.run_soak(run, up.target, capacity, limits, (plan.soak_minutes, plan.rss_interval_s)),
        }


# --- no local paths in what is committed ----------------------------------------------------------------------------


def _path_marks() -> list[tuple[str, str]]:
    marks = [(p, "<site-packages>") for p in (*site.getsitepackages(), site.getusersitepackages())]
    marks += [(sys.prefix, "<venv>"), (str(servers.BENCH_DIR.parent), "<repo>")]
    marks += [(tempfile.gettempdir(), "<tmp>"), (os.path.expanduser("~"), "~")]
    both = {(spelling, mark) for path, mark in marks for spelling in (path, os.path.realpath(path))}
    # Longest first: site-packages lies inside the venv, the venv may lie inside the repository.
    return sorted(((p, mark) for p, mark in both if len(p) > 1), key=lambda m: -len(m[0]))


def scrub(value: Any, marks: list[tuple[str, str]] | None = None) -> Any:
    """``value`` with every local path prefix (site-packages, the venv, the repository, the temp dir, the home
    directory) replaced by a placeholder such as ``<site-packages>``."""
    marks = _path_marks() if marks is None else marks
    if isinstance(value, str):
        for path, mark in marks:
            value = value.replace(path, mark)
        return value
    if isinstance(value, dict):
        return {k: scrub(v, marks) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, marks) for v in value]
    return value
