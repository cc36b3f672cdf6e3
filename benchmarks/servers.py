"""Starting, checking, measuring and stopping the servers under test, one at a time."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import psutil
except ModuleNotFoundError:  # the bench extra is missing; every command checks with benchmarks.cli.require first
    psutil = None

HOST = "127.0.0.1"
SERVED = "bench"
"""The model name every benchmarked embedserve serves (``--served-model-name``)."""
BENCH_DIR = Path(__file__).resolve().parent
# Infinity's private venvs, one per flavor of benchmarks/setup_infinity.sh: its torch engine, and its optimum engine on
# ONNX Runtime's CPU provider or on ORT's OpenVINO provider (onnxruntime-openvino).
INFINITY_VENVS = {
    "torch": BENCH_DIR / ".infinity-venv",
    "optimum": BENCH_DIR / ".infinity-optimum-venv",
    "openvino": BENCH_DIR / ".infinity-openvino-venv",
}
INFINITY_VENV = INFINITY_VENVS["torch"]

# Offline and quiet: no hub access, no telemetry, for every server alike.
SERVER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "INFINITY_ANONYMOUS_USAGE_STATS": "0",
}


class ServerError(RuntimeError):
    """A server did not start, did not become healthy, or answered a smoke request wrongly."""


class UsageError(ServerError):
    """The server exited at start with a usage error: it does not know a flag it was given (yet)."""


@dataclass(frozen=True)
class ServerSpec:
    """How to launch one server under test."""

    name: str
    argv: list[str]
    port: int
    health_path: str
    startup_timeout_s: float = 240.0
    kind: str = ""  # embedserve, naive, infinity: what the server is, whatever the variant's name
    env: dict[str, str] = field(default_factory=dict)  # on top of SERVER_ENV


def free_port() -> int:
    """A TCP port on the loopback that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def embedserve_spec(model: Path, port: int, extra_args: list[str], name: str = "embedserve") -> ServerSpec:
    """embedserve from this venv, with the benchmark's served name and any passthrough flags."""
    script = Path(sys.executable).with_name("embedserve")
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "embedserve"]
    argv = [*launcher, "--model-id", str(model), "--served-model-name", SERVED, "--port", str(port)]
    # One load generator address sends far more than the default per-address limit (80 req/s): the benchmark
    # measures the server, so the governor is off, as it would be behind a gateway that limits per key.
    # The load generators cycle through a fixed set of texts, and the benchmarks measure computing them: the embedding
    # cache (on by default) would answer the repeats without running the model. A variant may turn it back on.
    argv += ["--hostname", HOST, "--log-level", "warning", "--rate-limit-rps", "0", "--cache-bytes", "0", *extra_args]
    return ServerSpec(name, argv, port, "/health", kind="embedserve")


def naive_spec(model: Path, port: int) -> ServerSpec:
    """The naive sentence-transformers + Starlette server from this directory."""
    argv = [sys.executable, str(BENCH_DIR / "naive_server.py"), "--model", str(model), "--port", str(port)]
    return ServerSpec("naive", [*argv, "--host", HOST], port, "/health", kind="naive")


def infinity_spec(model: Path, port: int, venv: Path = INFINITY_VENV) -> ServerSpec:
    """Infinity's v2 CLI from its private venv; ``--url-prefix /v1`` puts its OpenAI route at /v1/embeddings."""
    argv = [str(venv / "bin" / "infinity_emb"), "v2", "--model-id", str(model), "--engine", "torch"]
    argv += ["--port", str(port), "--host", HOST, "--url-prefix", "/v1", "--log-level", "warning"]
    # Its health route stays at /health whatever the prefix.
    return ServerSpec("infinity", argv, port, "/health", kind="infinity")


def infinity_optimum_spec(model_farm: Path, port: int, flavor: str, name: str = "infinity-optimum") -> ServerSpec:
    """Infinity's optimum engine (ONNX) on a model folder that holds ``model.onnx`` (see ``variants.model_farm``).

    ``--pooling-method mean`` is required for mean-pooled sentence-transformers models: the engine ignores
    ``1_Pooling`` and would pool CLS. ``--device cpu`` picks ORT's OpenVINO provider when it is installed (the
    openvino flavor), else the CPU provider. The optimized graph it writes on start lands in the farm folder.
    """
    venv = INFINITY_VENVS[flavor]
    argv = [str(venv / "bin" / "infinity_emb"), "v2", "--model-id", str(model_farm), "--engine", "optimum"]
    argv += ["--pooling-method", "mean", "--device", "cpu"]
    argv += ["--port", str(port), "--host", HOST, "--url-prefix", "/v1", "--log-level", "warning"]
    # Everything the hub client might cache goes to the farm's folder too, never to ~/.cache.
    env = {"HF_HOME": str(model_farm.parent / "hf-home")}
    return ServerSpec(name, argv, port, "/health", kind="infinity", env=env)


def infinity_installed(venv: Path = INFINITY_VENV) -> bool:
    """Whether Infinity's venv has been created."""
    return (venv / "bin" / "infinity_emb").exists()


def ensure_infinity(flavor: str = "torch") -> None:
    """Create the venv of an Infinity flavor with setup_infinity.sh unless it already exists."""
    venv = INFINITY_VENVS[flavor]
    if infinity_installed(venv):
        return
    sys.stdout.write(f"creating Infinity's {flavor} venv in {venv} (once; a minute or two)\n")
    sys.stdout.flush()
    subprocess.run(["bash", str(BENCH_DIR / "setup_infinity.sh"), flavor, str(venv)], check=True)


def http_json(port: int, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
    """GET (or POST when ``body`` is given) a JSON route; returns (status, parsed body or None)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{HOST}:{port}{path}", data=data, method="GET" if data is None else "POST")
    request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def tree_rss(proc: psutil.Process) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    total = 0
    for member in _tree(proc):
        with contextlib.suppress(psutil.Error):
            total += member.memory_info().rss
    return total


def tree_cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU time used so far by a process and all its live descendants."""
    total = 0.0
    for member in _tree(proc):
        with contextlib.suppress(psutil.Error):
            times = member.cpu_times()
            total += times.user + times.system
    return total


def system_busy_seconds() -> float:
    """CPU time all cores have spent busy since boot (user, nice, system, interrupts)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


@dataclass
class RunningServer:
    """A started server process (its own session, so the whole group can be stopped)."""

    spec: ServerSpec
    popen: subprocess.Popen[bytes]
    log_path: Path
    started_s: float = 0.0
    process: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self.process = psutil.Process(self.popen.pid)

    def rss(self) -> int:
        """Current resident memory of the server and its children, in bytes."""
        return tree_rss(self.process)

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server and its children, in seconds."""
        return tree_cpu_seconds(self.process)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, wait, then SIGKILL the server's process group."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        # Children (tokenizer pools, multiprocessing helpers) may outlive the parent; the group takes them too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


def start(spec: ServerSpec, log_path: Path) -> RunningServer:
    """Launch a server and wait until its health route answers 200."""
    env = {**os.environ, **SERVER_ENV, **spec.env}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with log_path.open("wb") as log:
        popen = subprocess.Popen(spec.argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = RunningServer(spec, popen, log_path)
    try:
        _wait_healthy(server, began)
    except BaseException:
        server.stop()
        raise
    server.started_s = time.monotonic() - began
    return server


def _wait_healthy(server: RunningServer, began: float) -> None:
    spec = server.spec
    while time.monotonic() - began < spec.startup_timeout_s:
        if server.popen.poll() is not None:
            tail = server.log_tail()
            # argparse's way out: exit status 2 after a "usage:" line, e.g. for a flag this version does not have.
            if server.popen.returncode == 2 and "usage:" in tail:
                last = tail.strip().splitlines()[-1] if tail.strip() else ""
                raise UsageError(f"{spec.name} rejected its command line: {last}")
            raise ServerError(f"{spec.name} exited with {server.popen.returncode}:\n{tail}")
        with contextlib.suppress(OSError):
            status, _ = http_json(spec.port, spec.health_path, timeout=2.0)
            if status == 200:
                return
        time.sleep(0.25)
    raise ServerError(f"{spec.name} not healthy after {spec.startup_timeout_s:.0f} s:\n{server.log_tail()}")


def settle(server: RunningServer, max_wait_s: float, idle_cores: float = 0.15, window_s: float = 0.3) -> float:
    """Wait until the server is idle (under ``idle_cores`` of CPU over a window); returns the seconds waited.

    A server without backpressure keeps computing requests whose clients already gave up, which would otherwise
    steal CPU from the next cell.
    """
    began = time.monotonic()
    last = tree_cpu_seconds(server.process)
    while time.monotonic() - began < max_wait_s:
        time.sleep(window_s)
        now = tree_cpu_seconds(server.process)
        if (now - last) / window_s < idle_cores:
            break
        last = now
    return time.monotonic() - began


class RssSampler:
    """Samples a server's RSS on a background thread; keeps the peak and, when asked, the series."""

    def __init__(self, server: RunningServer, interval_s: float, keep_series: bool = False) -> None:
        self.server = server
        self.interval_s = interval_s
        self.keep_series = keep_series
        self.peak = 0
        self.series: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            rss = self.server.rss()
            self.peak = max(self.peak, rss)
            if self.keep_series:
                self.series.append((time.monotonic(), rss))
            if self._stop.wait(self.interval_s):
                return

    def mib_series(self, t0: float) -> list[tuple[float, float]]:
        """The samples as (seconds since ``t0``, MiB), rounded for results.json."""
        return [(round(t - t0, 2), round(rss / 2**20, 1)) for t, rss in self.series]

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def running(spec: ServerSpec, log_path: Path) -> Iterator[RunningServer]:
    """A started, healthy server that is stopped on exit, whatever happens inside."""
    server = start(spec, log_path)
    try:
        yield server
    finally:
        server.stop()
