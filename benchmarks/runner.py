"""The benchmark run: ceilings, then each server variant in turn, then the report.

Every server is started alone, health-checked, measured cell by cell and stopped before the next one starts, so no
two of them share the CPU. The ceiling engines run first, each in a subprocess, with no server up.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import json
import math
import multiprocessing
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import psutil
except ModuleNotFoundError:  # the bench extra is missing; every command checks with benchmarks.cli.require first
    psutil = None

from benchmarks import references, report, servers, stages, variants
from benchmarks.launch import Target, started
from benchmarks.loadgen import LoadResult, LoadSpec, ping, run_worker
from benchmarks.plan import FULL, QUICK, SEED, Cell, Profile, Workload, build_workload
from benchmarks.stats import downsample, summarize
from benchmarks.texts import LENGTH_MIXES, model_max_length

SERVER_NAMES = tuple(v.name for v in variants.VARIANTS)
ALL_PARTS = ("ceiling", *SERVER_NAMES)
# One load worker process is enough below this rate; above it a second one shares the arrivals.
RATE_PER_WORKER = 1500.0
# Under overload embedserve admits up to --max-concurrent-requests inputs; the last of them may wait that many
# forward passes, so their answers get more time than a normal cell's before they count as unfinished.
OVERLOAD_GRACE_S = 20.0


@dataclass
class Options:
    """What the command line asked for."""

    out: Path
    model: Path
    quick: bool
    only: tuple[str, ...]
    embedserve_args: list[str]
    device: str = "auto"
    command: str = ""
    ceiling_engines: tuple[str, ...] = variants.CEILING_ENGINES
    infinity_flavor: str = variants.DEFAULT_INFINITY_OPTIMUM_FLAVOR


@dataclass
class Run:
    """Everything a run carries between phases."""

    options: Options
    profile: Profile
    workload: Workload
    pool: concurrent.futures.ProcessPoolExecutor
    workdir: Path  # scratch for the run: the ceilings' inputs and outputs, the reference vectors
    began: float = field(default_factory=time.monotonic)
    results: dict[str, Any] = field(default_factory=dict)
    # embedserve's vector for the smoke inputs: every other server's is compared with it (cosine) as a sanity check.
    reference_vector: list[float] | None = None

    def progress(self, line: str) -> None:
        """One progress line with the elapsed time."""
        sys.stdout.write(f"[{time.monotonic() - self.began:6.1f}s] {line}\n")
        sys.stdout.flush()

    def scrubbed(self) -> dict[str, Any]:
        """The results with local paths replaced by placeholders (``<site-packages>``, ``<repo>``), as the standalone
        benchmarks write theirs: what results.json and summary.md show."""
        from benchmarks.overload import scrub  # overload imports this module

        scrubbed: dict[str, Any] = scrub(self.results)
        return scrubbed

    def save(self) -> Path:
        """Write results.json (scrubbed) atomically (a .tmp file renamed), so a crash never leaves half a file."""
        return write_json(self.options.out / "results.json", self.scrubbed())


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as JSON atomically (a .tmp file renamed), so a crash never leaves half a file."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(finite(data), indent=1) + "\n")
    tmp.replace(path)
    return path


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None: JSON has no NaN (an empty cell's latencies)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def hardware() -> dict[str, Any]:
    """CPU model, cores and RAM of this machine."""
    cpu_model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": cpu_model,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def torch_facts() -> dict[str, Any]:
    """torch's version and its default intra-op threads, asked of a fresh interpreter (the orchestrator itself never
    imports torch)."""
    code = "import json,torch;print(json.dumps([torch.__version__,torch.get_num_threads()]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    version, threads = json.loads(out)
    return {"torch_version": version, "torch_threads": threads}


def idle_check(seconds: float = 1.0) -> float:
    """CPU busy on the whole machine over a short wait, in percent of one core (before anything starts)."""
    began, busy = time.monotonic(), servers.system_busy_seconds()
    time.sleep(seconds)
    return 100.0 * (servers.system_busy_seconds() - busy) / (time.monotonic() - began)


# --- servers ---------------------------------------------------------------------------------------------------


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@dataclass
class LoadRun:
    """The raw outcome of one cell's load."""

    results: list[LoadResult]
    t0: float
    t1: float
    peak_rss: int
    server_cpu_pct: float
    system_cpu_pct: float

    def cpu(self) -> dict[str, float]:
        """CPU use during the timed window, in percent of one core, including what other processes took."""
        loadgen = 100.0 * sum(r.cpu_s for r in self.results) / (self.t1 - self.t0)
        return {
            "server_cpu_pct": self.server_cpu_pct,
            "system_cpu_pct": self.system_cpu_pct,
            # Neither the server nor the load generator: other work on the machine, i.e. measurement noise.
            "other_cpu_pct": max(0.0, self.system_cpu_pct - self.server_cpu_pct - loadgen),
        }


def _sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


def cell_specs(
    run: Run,
    target: Target,
    cell: Cell,
    phases: tuple[float, float, float],
    workers: int,
    start_at: float | None = None,
) -> list[LoadSpec]:
    """The worker specs of one cell's load; ``phases`` is (warm-up, timed window, grace after it) in seconds."""
    warmup_s, duration_s, grace_s = phases
    bodies, _, _ = target.requests(run.workload, cell.mix, cell.texts_per_request)
    if start_at is None:
        # Workers need a moment to unpickle the requests and (closed loop) connect before the shared start.
        start_at = time.monotonic() + 0.5 + 0.002 * max(cell.concurrency, 0)
    shares = _split(cell.concurrency, workers) if cell.concurrency else [0] * workers
    return [
        LoadSpec(
            host=servers.HOST,
            port=target.server.spec.port,
            requests=bodies,
            start_at=start_at,
            warmup_s=warmup_s,
            duration_s=duration_s,
            grace_s=grace_s,
            concurrency=shares[w],
            rate=cell.rate / workers,
            seed=SEED + 7919 * w,
            offset=w * len(bodies) // workers,
        )
        for w in range(workers)
    ]


def drive(
    run: Run,
    server: servers.RunningServer,
    specs: Sequence[LoadSpec],
    window: tuple[float, float],
    tick: Callable[[], None] | None = None,
) -> LoadRun:
    """Run load specs in the worker processes (one each) while sampling the server's RSS, and its CPU and the
    machine's over ``window`` (the timed phase); ``tick`` is called every minute of it (progress of a long load)."""
    t0, t1 = window
    with servers.RssSampler(server, 0.25) as rss:
        futures = [run.pool.submit(run_worker, spec) for spec in specs]
        _sleep_until(t0)
        server0, system0 = server.cpu_seconds(), servers.system_busy_seconds()
        while tick is not None and time.monotonic() + 60.0 < t1:
            time.sleep(60.0)
            tick()
        _sleep_until(t1)
        server1, system1 = server.cpu_seconds(), servers.system_busy_seconds()
        results = [f.result() for f in futures]
    return LoadRun(
        results, t0, t1, rss.peak, 100.0 * (server1 - server0) / (t1 - t0), 100.0 * (system1 - system0) / (t1 - t0)
    )


def _load(run: Run, target: Target, cell: Cell, phases: tuple[float, float, float], workers: int) -> LoadRun:
    """Run one cell's load in the worker processes while sampling the server's RSS and CPU."""
    specs = cell_specs(run, target, cell, phases, workers)
    return drive(run, target.server, specs, (specs[0].t0, specs[0].t1))


def run_cell(run: Run, target: Target, cell: Cell) -> dict[str, Any]:
    """Measure one cell and let the server go idle afterwards."""
    workers = 1 if cell.concurrency or cell.rate <= RATE_PER_WORKER else 2
    profile = run.profile
    instrumented = target.server.spec.kind == "embedserve"
    before = stages.scrape(servers.HOST, target.server.spec.port) if instrumented else {}
    load = _load(run, target, cell, (profile.warmup_s, profile.duration_s, profile.grace_s), workers)
    after = stages.scrape(servers.HOST, target.server.spec.port) if instrumented else {}
    _, n_texts, n_tokens = target.requests(run.workload, cell.mix, cell.texts_per_request)
    stats, latencies = summarize(load.results, n_texts, n_tokens, (load.t0, load.t1), spread=cell.mode == "closed")
    record: dict[str, Any] = {
        "mode": cell.mode,
        "mix": cell.mix,
        "texts_per_request": cell.texts_per_request,
        "concurrency": cell.concurrency or None,
        "rate": cell.rate or None,
        "rate_note": cell.rate_note or None,
        "duration_s": run.profile.duration_s,
        "load_workers": workers,
        **stats,
        **load.cpu(),
        "peak_rss_mib": load.peak_rss / 2**20,
    }
    if stats["requests_per_s"]:
        # CPU seconds of the server's processes per request answered (psutil, the timed window).
        record["server_cpu_ms_per_request"] = 10.0 * load.server_cpu_pct / stats["requests_per_s"]
    where = stages.breakdown(before, after, target.model_name) if instrumented else None
    if where is not None:
        # The client's mean latency (timed window) minus the server's (whole cell): HTTP framing, sockets, the
        # load generator. Approximate: the two means cover slightly different sets of requests.
        where["outside_server_ms"] = stats["latency_ms"]["mean"] - where["server_ms"]
        record["stages"] = where
    if cell.mode == "closed" and cell.mix == "mixed" and cell.texts_per_request == 1:
        # Kept for the latency CDF plot.
        record["latency_quantiles_ms"] = downsample(latencies)
    record["settle_s"] = servers.settle(target.server, run.profile.settle_s)
    lat = stats["latency_ms"]
    run.progress(
        f"{target.server.spec.name:10s} {cell.label:42s} {stats['embeddings_per_s']:8.1f} emb/s "
        f"{stats['requests_per_s']:7.1f} req/s  p50 {lat['p50']:7.1f} p99 {lat['p99']:8.1f} ms  "
        f"429 {100 * stats['rate_429']:4.1f}%  err {100 * stats['error_rate']:4.1f}%  "
        f"rss {record['peak_rss_mib']:.0f} MiB  other cpu {record['other_cpu_pct']:.0f}%"
    )
    return record


def _open_cells(run: Run, capacity: float) -> list[Cell]:
    cells = [
        Cell("mixed", 1, rate=f * capacity, rate_note=f"{100 * f:.0f}% of capacity") for f in run.profile.open_fractions
    ]
    cells += [Cell("mixed", 1, rate=r, rate_note="fixed") for r in run.profile.open_fixed]
    return cells


def capacity_cell(cells: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The cell that sets the closed-loop capacity: the best single-text mixed-length one (by requests/s)."""
    candidates = [
        c
        for c in cells
        if c["mode"] == "closed" and c["mix"] == "mixed" and c["texts_per_request"] == 1 and c["error_rate"] < 0.01
    ]
    return max(candidates, key=lambda c: c["requests_per_s"], default=None)


def capacity_of(cells: Sequence[dict[str, Any]]) -> float:
    """Closed-loop capacity in requests/s: the best single-text mixed-length cell."""
    best = capacity_cell(cells)
    return 0.0 if best is None else float(best["requests_per_s"])


def rss_verdict(series: Sequence[tuple[float, float]], duration_s: float) -> dict[str, Any]:
    """Is memory flat under a sustained load? ``series``: (seconds since the load started, RSS MiB) samples, the
    first of them taken before it started (the idle baseline)."""
    inside = [mib for t, mib in series if 0.0 <= t <= duration_s]
    third = max(1, len(inside) // 3)
    first = sum(inside[:third]) / third
    middle = sum(inside[third : 2 * third]) / max(1, len(inside[third : 2 * third]))
    last = sum(inside[-third:]) / third
    # The first third includes the admission queue filling up (and the allocator growing with it), which a bounded
    # server does once; what must not happen is growth after that, so the verdict compares the last third with the
    # middle one. Allocator noise is a few percent: more than 10% (or 32 MiB on a small server) is growth.
    allowed = max(0.10 * middle, 32.0)
    return {
        "rss_series": list(series),
        "rss_idle_mib": series[0][1] if series else None,
        "rss_first_third_mib": first,
        "rss_middle_third_mib": middle,
        "rss_last_third_mib": last,
        "rss_max_mib": max(inside, default=0.0),
        "rss_growth_mib": last - middle,
        "rss_growth_allowed_mib": allowed,
        "rss_bounded": last - middle <= allowed,
    }


def run_overload(run: Run, target: Target, capacity: float) -> dict[str, Any]:
    """Open loop at 10x capacity, sampling RSS every 0.5 s: does memory stay bounded when the server must shed?"""
    rate = 10.0 * capacity
    cell = Cell("mixed", 1, rate=rate, rate_note="10x capacity")
    bodies, n_texts, n_tokens = target.requests(run.workload, "mixed", 1)
    server = target.server
    with servers.RssSampler(server, 0.5, keep_series=True) as sampler:
        time.sleep(1.0)  # a second of idle samples before the load, as the baseline
        load = _load(run, target, cell, (0.0, run.profile.overload_s, OVERLOAD_GRACE_S), 2)
    stats, _ = summarize(load.results, n_texts, n_tokens, (load.t0, load.t1), spread=False)
    series = sampler.mib_series(load.t0)
    overload = {
        "rate": rate,
        "duration_s": run.profile.overload_s,
        **stats,
        **load.cpu(),
        **rss_verdict(series, load.t1 - load.t0),
        "settle_s": servers.settle(server, run.profile.settle_s),
    }
    run.progress(
        f"embedserve overload {rate:.0f} req/s for {run.profile.overload_s:.0f} s: "
        f"429 {100 * stats['rate_429']:.1f}%, err {100 * stats['error_rate']:.1f}%, "
        f"{stats['embeddings_per_s']:.1f} emb/s served, RSS thirds {overload['rss_first_third_mib']:.0f} / "
        f"{overload['rss_middle_third_mib']:.0f} / {overload['rss_last_third_mib']:.0f} MiB "
        f"({'bounded' if overload['rss_bounded'] else 'GREW'})"
    )
    return overload


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def run_server(run: Run, name: str) -> None:
    """Start one server variant, run its cells (plus the overload phase where asked), stop it."""
    variant = variants.BY_NAME[name]
    with started(run.options, variant) as up:
        entry, target = up.entry, up.target
        run.results["servers"][name] = entry
        if run.reference_vector is None and variant.kind == "embedserve":
            run.reference_vector = up.vector
        reference = run.reference_vector
        entry["smoke_cosine_vs_embedserve"] = _cosine(up.vector, reference) if reference else None
        # Against torch float32 in-process, on the ceiling's mixed texts (all under the maximum length).
        entry["agreement"] = references.server_agreement(run, target.server.spec.port, target.model_name)
        cosine = references.cosine_note(entry["agreement"])
        run.progress(
            f"{name} up in {entry['startup_s']:.1f} s (model {target.model_name!r}, {entry['dims']} dims{cosine})"
        )
        cells = [run_cell(run, target, Cell(m, n, concurrency=c)) for m, n, c in run.profile.closed]
        entry["cells"] = cells
        capacity = run.results.get("capacity_rps") or capacity_of(cells)
        run.results.setdefault("capacity_rps", capacity)
        if not variant.closed_only:
            entry["cells"] += [run_cell(run, target, cell) for cell in _open_cells(run, capacity)]
        if variant.overload:
            run.results["overload"] = run_overload(run, target, capacity)
    run.save()


# --- the whole run ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def worker_pool(workers: int = 2) -> Iterator[concurrent.futures.ProcessPoolExecutor]:
    """The load generator's worker processes, started before anything is timed."""
    # spawn, not fork: workers start clean (no inherited threads or tokenizer state) and only import the loadgen.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        # Start every process now (each ping holds its worker a moment), so no start-up lands in a timed window.
        list(pool.map(_delay_ping, [0.3] * workers))
        yield pool


def _delay_ping(delay: float) -> float:
    time.sleep(delay)
    return ping()


def execute(options: Options) -> Path:
    """Run everything the options ask for and write results.json, the plots and summary.md."""
    profile = QUICK if options.quick else FULL
    options.out.mkdir(parents=True, exist_ok=True)
    began_wall = time.monotonic()
    mixes = sorted(
        {m for m, _, _ in profile.closed} | set(profile.ceiling_texts) | {"short"}, key=list(LENGTH_MIXES).index
    )
    workload = build_workload(options.model, mixes)
    with worker_pool() as pool, tempfile.TemporaryDirectory(prefix="embedserve-bench-") as workdir:
        run = Run(options, profile, workload, pool, Path(workdir))
        run.results = _header(options, profile, workload)
        run.progress(f"{profile.name} run, model {options.model}, parts {', '.join(options.only)}")
        busy = idle_check()
        run.results["idle_check_cpu_pct"] = busy
        if busy > 25.0:
            run.progress(f"WARNING: the machine is busy before the run ({busy:.0f}% of a core): numbers will be noisy")
        for part in ALL_PARTS:
            if part in options.only:
                _run_part(run, part)
        if "ceiling" not in run.results:
            run.results["hardware"].update(torch_facts())
        else:
            ceiling = run.results["ceiling"]
            run.results["hardware"].update(
                torch_version=ceiling["torch_version"], torch_threads=ceiling["torch_threads"]
            )
        run.results["wall_s"] = time.monotonic() - began_wall
        run.results["targets"] = report.targets(run.results)
        run.save()
        report.write(run.scrubbed(), options.out)
        run.progress(f"done in {run.results['wall_s']:.0f} s: {options.out / 'summary.md'}")
    return options.out


def _run_part(run: Run, part: str) -> None:
    if part == "ceiling":
        guarded(run, part, lambda: references.run_ceilings(run))
    else:
        guarded(run, part, lambda: run_server(run, part))


def guarded(run: Run, part: str, action: Callable[[], object], section: str | None = "servers") -> None:
    """Run one part; a failing one (a baseline that will not start) is recorded and the run goes on with the
    others. A variant whose flags the server rejects is skipped (its entry in ``results[section]`` dropped)."""
    try:
        action()
    except servers.UsageError as exc:
        # A flag the server does not have yet: not a failure of the run, a variant that cannot be measured today.
        if section is not None:
            run.results.get(section, {}).pop(part, None)
        run.results.setdefault("skipped", {})[part] = str(exc)
        run.progress(f"{part} SKIPPED: {exc}")
    except (servers.ServerError, subprocess.CalledProcessError, OSError, KeyError, ValueError) as exc:
        run.results.setdefault("failures", {})[part] = f"{type(exc).__name__}: {exc}"
        run.progress(f"{part} FAILED: {exc}")


def _header(options: Options, profile: Profile, workload: Workload) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": profile.name,
        "command": options.command,
        "model": str(options.model),
        "max_length": model_max_length(options.model),
        "embedserve_args": shlex.join(options.embedserve_args),
        "parts": list(options.only),
        "ceiling_engines": list(options.ceiling_engines),
        "infinity_optimum_flavor": options.infinity_flavor,
        "hardware": hardware(),
        "profile": {
            "warmup_s": profile.warmup_s,
            "duration_s": profile.duration_s,
            "grace_s": profile.grace_s,
            "open_fractions": list(profile.open_fractions),
            "open_fixed_rates": list(profile.open_fixed),
            "overload_s": profile.overload_s,
        },
        "workload": workload.describe(),
        "servers": {},
    }
