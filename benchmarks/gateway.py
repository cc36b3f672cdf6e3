"""What the fleet's gateway costs: the same worker called directly and through ``embedserve gateway``.

``python -m benchmarks.gateway [--seconds S] [--out DIR]`` starts one embedserve worker (default flags but
``--cache-bytes 0``, all-MiniLM-L6-v2: the cells repeat their texts, and cache hits would measure the transport
alone) and a gateway whose fleet file routes to it, then runs the same closed-loop cells against each,
alternating so that a drift of the machine hits both alike: one short text at concurrency 1 (the added latency) and
single mixed texts at concurrency 32 (whether the gateway becomes the bottleneck). Writes ``gateway.json`` and
``gateway.md``. Everything shares this machine's cores: the worker, the gateway and the load generator.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.cli import DEFAULT_OUT, default_model, require
from benchmarks.loadgen import LoadSpec, build_request, run_worker
from benchmarks.runner import hardware
from benchmarks.servers import HOST, free_port
from benchmarks.texts import make_texts

CELLS = (("c=1 short", 1, "short"), ("c=32 mixed", 32, "mixed"))
TARGET_ADDED_MS = 1.0


def _start(argv: list[str], log: Path, url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{argv[0]} exited; see {log}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise TimeoutError(f"{url} never became healthy; see {log}")


def _cell(port: int, concurrency: int, mix: str, seconds: float) -> dict[str, Any]:
    texts = make_texts(mix, 2000, 11)
    requests = [build_request(HOST, port, "/embed", json.dumps({"inputs": t}).encode()) for t in texts]
    spec = LoadSpec(HOST, port, requests, time.monotonic() + 0.2, 2.0, seconds, 10.0, concurrency=concurrency)
    result = run_worker(spec)
    latencies = sorted(
        (done - sent) * 1000
        for sent, done, status in zip(result.sent, result.done, result.status, strict=True)
        if status == 200 and spec.t0 <= sent <= spec.t1
    )
    errors = sum(1 for s, st in zip(result.sent, result.status, strict=True) if st != 200 and spec.t0 <= s <= spec.t1)
    return {
        "requests": len(latencies),
        "errors": errors,
        "per_s": len(latencies) / seconds,
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


def measure(seconds: float, rounds: int, work: Path) -> dict[str, Any]:
    """Both paths, every cell, ``rounds`` times alternating; medians over the rounds."""
    worker_port, gateway_port = free_port(), free_port()
    worker_url, gateway_url = f"http://{HOST}:{worker_port}", f"http://{HOST}:{gateway_port}"
    fleet = work / "fleet.yaml"
    fleet.write_text(
        f"gateway: {{port: {gateway_port}, hostname: {HOST}, rate_limit_rps: 0}}\n"
        f"models:\n  - {{name: bench, model_id: {default_model()}, urls: [{worker_url}]}}\n"
    )
    cmd = str(Path(sys.executable).with_name("embedserve"))
    worker = _start([cmd, "--model-id", str(default_model()), "--served-model-name", "bench", "--port",
                     str(worker_port), "--rate-limit-rps", "0", "--cache-bytes", "0", "--log-level", "warning"],
                    work / "worker.log",
                    worker_url)  # fmt: skip
    gateway = _start([cmd, "gateway", "--fleet", str(fleet), "--log-level", "warning"], work / "gateway.log",
                     gateway_url)  # fmt: skip
    try:
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {name: {"direct": [], "gateway": []} for name, *_ in CELLS}
        for _ in range(rounds):
            for name, concurrency, mix in CELLS:
                for path, port in (("direct", worker_port), ("gateway", gateway_port)):
                    cell = _cell(port, concurrency, mix, seconds)
                    runs[name][path].append(cell)
                    sys.stdout.write(f"{name:11s} {path:8s} {cell['per_s']:7.1f}/s p50 {cell['p50_ms']:7.2f} ms "
                                     f"p99 {cell['p99_ms']:8.2f} ms errors {cell['errors']}\n")  # fmt: skip
                    sys.stdout.flush()
    finally:
        for process in (gateway, worker):
            process.terminate()
            process.wait(30)
    return {name: {path: _median(cells) for path, cells in paths.items()} for name, paths in runs.items()}


def _median(cells: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: statistics.median(c[key] for c in cells) for key in cells[0]} | {"rounds": cells}


def report(results: dict[str, Any]) -> str:
    """gateway.md's text."""
    hw = results["hardware"]
    c1, c32 = results["cells"]["c=1 short"], results["cells"]["c=32 mixed"]
    added = c1["gateway"]["p50_ms"] - c1["direct"]["p50_ms"]
    ratio = c32["gateway"]["per_s"] / c32["direct"]["per_s"]
    lines = [
        "# The gateway's cost",
        "",
        f"- date: {results['date']}, command: `python -m benchmarks.gateway --seconds {results['seconds']:g} "
        f"--rounds {results['rounds']}`",
        f"- hardware: {hw['cpu_model']}, {hw['logical_cores']} logical cores, {hw['ram_gib']} GiB RAM; worker, gateway "
        "and load generator on the same cores",
        "- one worker (default flags but `--cache-bytes 0`: every text is computed; all-MiniLM-L6-v2) called directly "
        "and through `embedserve gateway`; medians of "
        "the rounds, which alternate the two paths",
        "",
        "| target | measured | required | result |",
        "|---|---|---|---|",
        f"| added latency at concurrency 1, one short text, p50 | {added:+.2f} ms ({c1['direct']['p50_ms']:.2f} -> "
        f"{c1['gateway']['p50_ms']:.2f} ms) | <= {TARGET_ADDED_MS:g} ms | "
        f"{'met' if added <= TARGET_ADDED_MS else '**not met**'} |",
        f"| 32 clients, mixed texts: through the gateway vs direct | {ratio:.2f}x ({c32['gateway']['per_s']:.1f} vs "
        f"{c32['direct']['per_s']:.1f} emb/s) | the gateway never the bottleneck (>= 0.95x here, one worker) | "
        f"{'met' if ratio >= 0.95 else '**not met**'} |",
        "",
        "| cell | path | emb/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for name, paths in results["cells"].items():
        for path, cell in paths.items():
            lines.append(f"| {name} | {path} | {cell['per_s']:.1f} | {cell['p50_ms']:.2f} | {cell['p99_ms']:.2f} | "
                         f"{cell['errors']:.0f} |")  # fmt: skip
    lines += [
        "",
        "On two cores the gateway is a second Python process on the same CPUs as the worker's forward passes and the",
        "load generator: its own CPU per request shows up both as added latency and as compute taken from the worker.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gateway", description=__doc__)
    parser.add_argument("--seconds", type=float, default=15.0, help="timed seconds per cell (default 15)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every cell on both paths (default 2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default benchmarks/results)")
    args = parser.parse_args(argv)
    require("python -m benchmarks.gateway", "psutil")
    with tempfile.TemporaryDirectory(prefix="embedserve-gateway-bench-") as work:
        cells = measure(args.seconds, args.rounds, Path(work))
    results = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "hardware": hardware(),
        "cells": cells,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gateway.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "gateway.md").write_text(report(results))
    sys.stdout.write(report(results))


if __name__ == "__main__":
    main()
