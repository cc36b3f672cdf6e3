"""The benchmark run: ceiling, then each server in turn, then the report.

Every server is started alone, health-checked, measured cell by cell and stopped before the next one starts, so no
two of them share the CPU. The ceiling runs first, in a subprocess, with no server up.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import importlib.metadata
import json
import math
import multiprocessing
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchmarks import report, servers, stages
from benchmarks.loadgen import LoadResult, LoadSpec, build_request, ping, run_worker
from benchmarks.stats import downsample, summarize
from benchmarks.texts import LENGTH_MIXES, TokenCounter, make_texts, model_max_length

SERVER_NAMES = ("embedserve", "naive", "infinity")
ALL_PARTS = ("ceiling", *SERVER_NAMES)
SEED = 20240611
POOL_SIZE = 1024  # distinct texts per mix; 32-text requests take consecutive slices of them
BATCH = 32  # texts in a "batch" request
# One load worker process is enough below this rate; above it a second one shares the arrivals.
RATE_PER_WORKER = 1500.0
# Under overload embedserve admits up to --max-concurrent-requests inputs; the last of them may wait that many
# forward passes, so their answers get more time than a normal cell's before they count as unfinished.
OVERLOAD_GRACE_S = 20.0


@dataclass(frozen=True)
class Profile:
    """Durations and the cell matrix of a run mode."""

    name: str
    warmup_s: float
    duration_s: float
    grace_s: float
    settle_s: float
    # (mix, texts per request, concurrency) of the closed-loop cells, in run order.
    closed: tuple[tuple[str, int, int], ...]
    # Open loop (single text, mixed lengths): fractions of embedserve's closed-loop capacity, and fixed rates.
    open_fractions: tuple[float, ...]
    open_fixed: tuple[float, ...]
    overload_s: float
    ceiling_texts: dict[str, int]
    direct_reps: int


_SWEEP = tuple(("mixed", 1, c) for c in (1, 8, 32, 128))

FULL = Profile(
    name="full",
    # Long enough for the slowest closed-loop cells (c=128, 32-text requests: over a second per request on 2 cores)
    # to be past their first wave of requests when the window opens.
    warmup_s=2.0,
    duration_s=6.0,
    grace_s=8.0,
    settle_s=15.0,
    closed=(
        *_SWEEP,
        ("short", 1, 1),
        ("short", 1, 32),
        ("long", 1, 32),
        ("short", BATCH, 8),
        ("mixed", BATCH, 1),
        ("mixed", BATCH, 8),
        ("long", BATCH, 1),
    ),
    open_fractions=(0.25, 0.5, 0.9),
    open_fixed=(20.0, 60.0),
    overload_s=60.0,  # long enough that a leak of a few MiB/s shows between the middle and last thirds
    ceiling_texts={"short": 512, "mixed": 256, "long": 64},
    direct_reps=50,
)

QUICK = Profile(
    name="quick",
    warmup_s=0.5,
    duration_s=2.0,
    grace_s=4.0,
    settle_s=6.0,
    closed=(*_SWEEP, ("short", 1, 1), ("mixed", BATCH, 1)),
    open_fractions=(0.5, 0.9),
    open_fixed=(20.0,),
    overload_s=5.0,
    ceiling_texts={"mixed": 128},
    direct_reps=50,
)


@dataclass(frozen=True)
class Cell:
    """One measurement: a load shape against one server."""

    mix: str
    texts_per_request: int
    concurrency: int = 0  # > 0: closed loop with this many users
    rate: float = 0.0  # open loop: mean requests/s (Poisson)
    rate_note: str = ""

    @property
    def mode(self) -> str:
        """'closed' or 'open'."""
        return "closed" if self.concurrency > 0 else "open"

    @property
    def label(self) -> str:
        """Short human description."""
        shape = "single" if self.texts_per_request == 1 else f"{self.texts_per_request}-text"
        load = f"c={self.concurrency}" if self.concurrency else f"{self.rate:.1f} req/s ({self.rate_note})"
        return f"{self.mode} {load} {shape} {self.mix}"


@dataclass
class Workload:
    """The texts of every mix and their token counts (counted once, truncated to the model's maximum)."""

    texts: dict[str, list[str]]
    tokens: dict[str, list[int]]
    untruncated: dict[str, list[int]]

    def plan(self, mix: str, per_request: int) -> list[list[int]]:
        """Text indices of each distinct request of a shape."""
        count = len(self.texts[mix])
        return [list(range(i, i + per_request)) for i in range(0, count - per_request + 1, per_request)]

    def describe(self) -> dict[str, Any]:
        """Per-mix word and token statistics for results.json."""
        out: dict[str, Any] = {}
        for mix, texts in self.texts.items():
            words = [len(t.split()) for t in texts]
            tokens = self.tokens[mix]
            out[mix] = {
                "texts": len(texts),
                "words": [min(words), max(words)],
                "tokens_mean": sum(tokens) / len(tokens),
                "tokens": [min(tokens), max(tokens)],
                "untruncated_tokens": [min(self.untruncated[mix]), max(self.untruncated[mix])],
            }
        return out


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


@dataclass
class Run:
    """Everything a run carries between phases."""

    options: Options
    profile: Profile
    workload: Workload
    pool: concurrent.futures.ProcessPoolExecutor
    began: float = field(default_factory=time.monotonic)
    results: dict[str, Any] = field(default_factory=dict)
    # embedserve's vector for the smoke inputs: every other server's is compared with it (cosine) as a sanity check.
    reference_vector: list[float] | None = None

    def progress(self, line: str) -> None:
        """One progress line with the elapsed time."""
        sys.stdout.write(f"[{time.monotonic() - self.began:6.1f}s] {line}\n")
        sys.stdout.flush()

    def save(self) -> Path:
        """Write results.json atomically (a .tmp file renamed), so a crash never leaves half a file."""
        path = self.options.out / "results.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(_finite(self.results), indent=1) + "\n")
        tmp.replace(path)
        return path


def _finite(value: Any) -> Any:
    # JSON has no NaN: an empty cell's latencies become null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def build_workload(model: Path, mixes: Sequence[str]) -> Workload:
    """Generate the texts of each mix from the fixed seed and count their tokens."""
    counter = TokenCounter(model_max_length(model), model / "tokenizer.json")
    texts: dict[str, list[str]] = {}
    tokens: dict[str, list[int]] = {}
    untruncated: dict[str, list[int]] = {}
    for mix in mixes:
        texts[mix] = make_texts(mix, POOL_SIZE, SEED)
        tokens[mix], untruncated[mix] = counter.count(texts[mix])
    return Workload(texts, tokens, untruncated)


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


def _torch_facts() -> dict[str, Any]:
    # Asked of a fresh interpreter: the orchestrator itself never imports torch.
    code = "import json,torch;print(json.dumps([torch.__version__,torch.get_num_threads()]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    version, threads = json.loads(out)
    return {"torch_version": version, "torch_threads": threads}


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def idle_check(seconds: float = 1.0) -> float:
    """CPU busy on the whole machine over a short wait, in percent of one core (before anything starts)."""
    began, busy = time.monotonic(), servers.system_busy_seconds()
    time.sleep(seconds)
    return 100.0 * (servers.system_busy_seconds() - busy) / (time.monotonic() - began)


# --- ceiling ---------------------------------------------------------------------------------------------------


def run_ceiling(run: Run) -> None:
    """The in-process ceiling, in a subprocess with nothing else running."""
    profile, workload = run.profile, run.workload
    inputs = {
        "mixes": {mix: workload.texts[mix][:n] for mix, n in profile.ceiling_texts.items()},
        "direct_texts": workload.texts["short"][:50],
        "direct_reps": profile.direct_reps,
    }
    with tempfile.TemporaryDirectory(prefix="embedserve-bench-") as tmp:
        in_path, out_path = Path(tmp) / "in.json", Path(tmp) / "out.json"
        in_path.write_text(json.dumps(inputs))
        argv = [sys.executable, "-m", "benchmarks.ceiling", "--model", str(run.options.model)]
        argv += ["--inputs", str(in_path), "--out", str(out_path), "--device", run.options.device]
        began, system0, child0 = time.monotonic(), servers.system_busy_seconds(), _children_cpu_seconds()
        subprocess.run(argv, check=True, env={**os.environ, **servers.SERVER_ENV}, cwd=servers.BENCH_DIR.parent)
        wall = time.monotonic() - began
        system, child = servers.system_busy_seconds() - system0, _children_cpu_seconds() - child0
        ceiling = json.loads(out_path.read_text())
    ceiling["wall_s"] = wall
    # CPU that other processes used meanwhile (percent of one core): the ceiling is only as clean as this is low.
    ceiling["other_cpu_pct"] = max(0.0, 100.0 * (system - child) / wall)
    run.results["ceiling"] = ceiling
    for mix, numbers in ceiling["mixes"].items():
        run.progress(
            f"ceiling {mix}: best {numbers['best_texts_per_s']:.1f} texts/s at batch {numbers['best_batch_size']}"
        )
    run.progress(f"ceiling direct forward (1 short input): p50 {ceiling['direct']['p50_ms']:.2f} ms")


# --- servers ---------------------------------------------------------------------------------------------------


@dataclass
class Target:
    """A started server and the pre-serialized requests for it."""

    server: servers.RunningServer
    model_name: str
    cache: dict[tuple[str, int], tuple[list[bytes], list[int], list[int]]] = field(default_factory=dict)

    def requests(self, workload: Workload, mix: str, per_request: int) -> tuple[list[bytes], list[int], list[int]]:
        """(request bytes, texts per request, tokens per request) of a shape, built once per server."""
        key = (mix, per_request)
        if key not in self.cache:
            port = self.server.spec.port
            texts, tokens = workload.texts[mix], workload.tokens[mix]
            bodies, n_texts, n_tokens = [], [], []
            for indices in workload.plan(mix, per_request):
                body = json.dumps({"input": [texts[i] for i in indices], "model": self.model_name}).encode()
                bodies.append(build_request(servers.HOST, port, "/v1/embeddings", body))
                n_texts.append(len(indices))
                n_tokens.append(sum(tokens[i] for i in indices))
            self.cache[key] = (bodies, n_texts, n_tokens)
        return self.cache[key]


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


def _load(run: Run, target: Target, cell: Cell, phases: tuple[float, float, float], workers: int) -> LoadRun:
    """Run one cell's load in the worker processes while sampling the server's RSS and CPU.

    ``phases`` is (warm-up, timed window, grace after it) in seconds.
    """
    warmup_s, duration_s, grace_s = phases
    bodies, _, _ = target.requests(run.workload, cell.mix, cell.texts_per_request)
    # Workers need a moment to unpickle the requests and (closed loop) connect before the shared start.
    start_at = time.monotonic() + 0.5 + 0.002 * max(cell.concurrency, 0)
    shares = _split(cell.concurrency, workers) if cell.concurrency else [0] * workers
    specs = [
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
    server, t0, t1 = target.server, specs[0].t0, specs[0].t1
    with servers.RssSampler(server, 0.25) as rss:
        futures = [run.pool.submit(run_worker, spec) for spec in specs]
        _sleep_until(t0)
        server0, system0 = server.cpu_seconds(), servers.system_busy_seconds()
        _sleep_until(t1)
        server1, system1 = server.cpu_seconds(), servers.system_busy_seconds()
        results = [f.result() for f in futures]
    return LoadRun(
        results, t0, t1, rss.peak, 100.0 * (server1 - server0) / (t1 - t0), 100.0 * (system1 - system0) / (t1 - t0)
    )


def run_cell(run: Run, target: Target, cell: Cell) -> dict[str, Any]:
    """Measure one cell and let the server go idle afterwards."""
    workers = 1 if cell.concurrency or cell.rate <= RATE_PER_WORKER else 2
    profile = run.profile
    instrumented = target.server.spec.name == "embedserve"
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


def capacity_of(cells: Sequence[dict[str, Any]]) -> float:
    """Closed-loop capacity in requests/s: the best single-text mixed-length cell."""
    rates = [
        c["requests_per_s"]
        for c in cells
        if c["mode"] == "closed" and c["mix"] == "mixed" and c["texts_per_request"] == 1 and c["error_rate"] < 0.01
    ]
    return max(rates, default=0.0)


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
    t0, t1 = load.t0, load.t1
    series = [(round(t - t0, 2), round(rss / 2**20, 1)) for t, rss in sampler.series]
    inside = [mib for t, mib in series if 0.0 <= t <= t1 - t0]
    third = max(1, len(inside) // 3)
    first = sum(inside[:third]) / third
    middle = sum(inside[third : 2 * third]) / max(1, len(inside[third : 2 * third]))
    last = sum(inside[-third:]) / third
    # The first third includes the admission queue filling up (and the allocator growing with it), which a bounded
    # server does once; what must not happen is growth after that, so the verdict compares the last third with the
    # middle one. Allocator noise is a few percent: more than 10% (or 32 MiB on a small server) is growth.
    allowed = max(0.10 * middle, 32.0)
    overload = {
        "rate": rate,
        "duration_s": run.profile.overload_s,
        **stats,
        **load.cpu(),
        "rss_series": series,
        "rss_idle_mib": series[0][1] if series else None,
        "rss_first_third_mib": first,
        "rss_middle_third_mib": middle,
        "rss_last_third_mib": last,
        "rss_max_mib": max(inside, default=0.0),
        "rss_growth_mib": last - middle,
        "rss_growth_allowed_mib": allowed,
        "rss_bounded": last - middle <= allowed,
        "settle_s": servers.settle(server, run.profile.settle_s),
    }
    run.progress(
        f"embedserve overload {rate:.0f} req/s for {run.profile.overload_s:.0f} s: "
        f"429 {100 * stats['rate_429']:.1f}%, err {100 * stats['error_rate']:.1f}%, "
        f"{stats['embeddings_per_s']:.1f} emb/s served, RSS thirds {first:.0f} / {middle:.0f} / {last:.0f} MiB "
        f"({'bounded' if overload['rss_bounded'] else 'GREW'})"
    )
    return overload


def _spec_for(name: str, options: Options, port: int) -> servers.ServerSpec:
    if name == "embedserve":
        return servers.embedserve_spec(options.model, port, options.embedserve_args)
    if name == "naive":
        return servers.naive_spec(options.model, port)
    if not servers.infinity_installed():
        sys.stdout.write(f"creating Infinity's venv in {servers.INFINITY_VENV} (once; about a minute)\n")
        sys.stdout.flush()
    servers.ensure_infinity()
    return servers.infinity_spec(options.model, port)


def _smoke(name: str, port: int) -> tuple[str, list[float]]:
    """The served model name, after checking one real request returns two vectors."""
    status, models = servers.http_json(port, "/v1/models")
    model_name = "bench"
    if name == "infinity" and status == 200:
        # Infinity names the model after the last two components of its path.
        model_name = models["data"][0]["id"]
    status, body = servers.http_json(port, "/v1/embeddings", {"input": ["hello world", "a b c"], "model": model_name})
    if status != 200 or len(body.get("data", [])) != 2:
        raise servers.ServerError(f"{name}: smoke request got {status}: {str(body)[:300]}")
    return model_name, body["data"][0]["embedding"]


def _server_version(name: str) -> str:
    if name == "infinity":
        python = servers.INFINITY_VENV / "bin" / "python"
        code = "import importlib.metadata as m;print(m.version('infinity-emb'))"
        version = subprocess.run([str(python), "-c", code], capture_output=True, text=True).stdout.strip()
        return f"infinity-emb {version}"
    package = "embedserve" if name == "embedserve" else "sentence-transformers"
    return f"{package} {importlib.metadata.version(package)}"


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def run_server(run: Run, name: str) -> None:
    """Start one server, run its cells (plus the overload phase for embedserve), stop it."""
    spec = _spec_for(name, run.options, servers.free_port())
    log = run.options.out / "server-logs.tmp" / f"{name}.log"
    entry: dict[str, Any] = {"argv": spec.argv, "version": _server_version(name)}
    run.results["servers"][name] = entry
    with servers.running(spec, log) as server:
        entry["startup_s"] = server.started_s
        entry["idle_rss_mib"] = server.rss() / 2**20
        model_name, vector = _smoke(name, spec.port)
        entry["served_model"], entry["dims"] = model_name, len(vector)
        if name == "embedserve":
            run.reference_vector = vector
        reference = run.reference_vector
        entry["smoke_cosine_vs_embedserve"] = _cosine(vector, reference) if reference else None
        run.progress(f"{name} up in {server.started_s:.1f} s (model {model_name!r}, {len(vector)} dims)")
        target = Target(server, model_name)
        cells = [run_cell(run, target, Cell(m, n, concurrency=c)) for m, n, c in run.profile.closed]
        entry["cells"] = cells
        capacity = run.results.get("capacity_rps") or capacity_of(cells)
        run.results.setdefault("capacity_rps", capacity)
        entry["cells"] += [run_cell(run, target, cell) for cell in _open_cells(run, capacity)]
        if name == "embedserve":
            run.results["overload"] = run_overload(run, target, capacity)
    run.save()


# --- the whole run ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _worker_pool() -> Iterator[concurrent.futures.ProcessPoolExecutor]:
    # spawn, not fork: workers start clean (no inherited threads or tokenizer state) and only import the loadgen.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        # Start both processes now, so their start-up is never inside a timed window.
        list(pool.map(_delay_ping, [0.3, 0.3]))
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
    with _worker_pool() as pool:
        run = Run(options, profile, workload, pool)
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
            run.results["hardware"].update(_torch_facts())
        else:
            ceiling = run.results["ceiling"]
            run.results["hardware"].update(
                torch_version=ceiling["torch_version"], torch_threads=ceiling["torch_threads"]
            )
        run.results["wall_s"] = time.monotonic() - began_wall
        run.results["targets"] = report.targets(run.results)
        run.save()
        report.write(run.results, options.out)
        run.progress(f"done in {run.results['wall_s']:.0f} s: {options.out / 'summary.md'}")
    return options.out


def _run_part(run: Run, part: str) -> None:
    # One failing part (a baseline that will not start) is recorded and the run goes on with the others.
    try:
        if part == "ceiling":
            run_ceiling(run)
        else:
            run_server(run, part)
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
