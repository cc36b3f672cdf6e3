"""The in-process references of a run: every ceiling engine, the one the new targets use, and the agreement of
every engine and server with torch float32 on the same texts.

Each ceiling engine runs in its own subprocess (``benchmarks.ceiling``) with no server up, torch first: its vectors
of the ceiling's texts are the reference the other engines (and later the servers) are compared with.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks import agreement, servers
from benchmarks.variants import CEILING_ENGINES as ENGINES

if TYPE_CHECKING:
    from benchmarks.runner import Run

# Texts per request when a server's vectors are fetched for the agreement check.
AGREEMENT_REQUEST_TEXTS = 32


def _children_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _inputs(run: Run) -> dict[str, Any]:
    profile, workload = run.profile, run.workload
    return {
        "mixes": {mix: workload.texts[mix][:n] for mix, n in profile.ceiling_texts.items()},
        "direct_texts": workload.texts["short"][:50],
        "direct_reps": profile.direct_reps,
    }


def _ceiling(run: Run, engine: str, extra: list[str]) -> dict[str, Any]:
    """One engine's ceiling subprocess; its OUT.json plus the wall time and the CPU others took meanwhile."""
    work = run.workdir
    in_path, out_path = work / "ceiling-in.json", work / f"ceiling-{engine}.json"
    if not in_path.exists():
        in_path.write_text(json.dumps(_inputs(run)))
    argv = [sys.executable, "-m", "benchmarks.ceiling", "--model", str(run.options.model), "--engine", engine]
    argv += ["--inputs", str(in_path), "--out", str(out_path), "--device", run.options.device, *extra]
    began, system0, child0 = time.monotonic(), servers.system_busy_seconds(), _children_cpu_seconds()
    subprocess.run(argv, check=True, env={**os.environ, **servers.SERVER_ENV}, cwd=servers.BENCH_DIR.parent)
    wall = time.monotonic() - began
    system, child = servers.system_busy_seconds() - system0, _children_cpu_seconds() - child0
    result: dict[str, Any] = json.loads(out_path.read_text())
    result["wall_s"] = wall
    # CPU that other processes used meanwhile (percent of one core): the ceiling is only as clean as this is low.
    result["other_cpu_pct"] = max(0.0, 100.0 * (system - child) / wall)
    return result


def reference_path(run: Run) -> Path:
    """torch float32's vectors of the ceiling's texts, computed without timing when the ceiling part did not run."""
    path = run.workdir / "reference.npz"
    if not path.exists():
        run.progress("torch float32 reference vectors (no timing; the ceiling part is not in this run)")
        _ceiling(run, "torch", ["--vectors-only", "--vectors-out", str(path)])
    return path


def choose(ceilings: dict[str, dict[str, Any]], mix: str = "mixed") -> dict[str, Any] | None:
    """The fastest near-lossless engine on ``mix`` (mean cosine to torch float32 >= 0.9999): the new targets'
    ceiling. None when no engine measured that mix."""
    measured = {name: c for name, c in ceilings.items() if mix in c.get("mixes", {}) and not c.get("skipped")}
    lossless = {name: c for name, c in measured.items() if agreement.near_lossless(c)}
    if not lossless:
        return None
    name = max(lossless, key=lambda n: lossless[n]["mixes"][mix]["best_texts_per_s"])
    fastest = max(measured, key=lambda n: measured[n]["mixes"][mix]["best_texts_per_s"])
    chosen = lossless[name]
    return {
        "engine": name,
        "mix": mix,
        "best_texts_per_s": chosen["mixes"][mix]["best_texts_per_s"],
        "best_batch_size": chosen["mixes"][mix]["best_batch_size"],
        "direct_p50_ms": chosen.get("direct", {}).get("p50_ms"),
        "agreement": chosen.get("agreement"),
        "near_lossless_mean_cosine": agreement.NEAR_LOSSLESS_MEAN_COSINE,
        "fastest_any_engine": fastest,
        "fastest_any_texts_per_s": measured[fastest]["mixes"][mix]["best_texts_per_s"],
    }


def run_ceilings(run: Run) -> None:
    """Every requested ceiling engine in turn; torch float32 first (always), as the reference of the others."""
    others = [e for e in ENGINES if e in run.options.ceiling_engines and e != "torch"]
    reference = run.workdir / "reference.npz"
    torch = _ceiling(run, "torch", ["--vectors-out", str(reference)])
    run.results["ceiling"] = torch  # the torch ceiling, as every run has had it: the torch engine's targets use it
    ceilings: dict[str, dict[str, Any]] = {"torch": torch}
    run.results["ceilings"] = ceilings
    _progress(run, "torch", torch)
    if others and not str(torch["device"]).startswith("cuda"):
        # Built before any timing, so an export is never inside an engine's wall time.
        subprocess.run(
            [sys.executable, "-m", "benchmarks.onnx_files", "--model", str(run.options.model)]
            + ["--variant", "fp32", "--variant", "optimized", "--variant", "int8"],
            check=True,
            env={**os.environ, **servers.SERVER_ENV},
            cwd=servers.BENCH_DIR.parent,
            stdout=subprocess.DEVNULL,
        )
    for engine in others:
        if str(torch["device"]).startswith("cuda"):
            ceilings[engine] = {"engine": engine, "skipped": "a CPU engine; the ceiling runs on CUDA in this run"}
        else:
            ceilings[engine] = _ceiling(run, engine, ["--reference", str(reference)])
        _progress(run, engine, ceilings[engine])
    run.results["ceiling_choice"] = choose(ceilings)
    choice = run.results["ceiling_choice"]
    if choice:
        run.progress(
            f"near-lossless ceiling: {choice['engine']}, {choice['best_texts_per_s']:.1f} texts/s mixed, "
            f"single input p50 {choice['direct_p50_ms']:.2f} ms"
        )


def _progress(run: Run, engine: str, result: dict[str, Any]) -> None:
    if result.get("skipped"):
        run.progress(f"ceiling {engine}: skipped ({result['skipped']})")
        return
    best = ", ".join(
        f"{mix} {m['best_texts_per_s']:.1f}/s (bs {m['best_batch_size']})" for mix, m in result["mixes"].items()
    )
    cosine = cosine_note(result.get("agreement"))
    run.progress(f"ceiling {engine}: {best}; single input p50 {result['direct']['p50_ms']:.2f} ms{cosine}")


def cosine_note(agree: dict[str, Any] | None) -> str:
    """The cosine figures for progress lines (empty without agreement figures)."""
    if not agree:
        return ""
    return f", cosine to torch fp32 mean {agree['mean_cosine']:.5f} min {agree['min_cosine']:.5f}"


def server_agreement(run: Run, port: int, model_name: str, mix: str = "mixed") -> dict[str, Any] | None:
    """Mean and minimum cosine of a server's vectors against torch float32's, on the ceiling's texts of ``mix``."""
    if mix not in run.profile.ceiling_texts:
        return None
    reference = agreement.load(reference_path(run))[mix]
    texts = run.workload.texts[mix][: run.profile.ceiling_texts[mix]]
    rows: list[list[float]] = []
    for start in range(0, len(texts), AGREEMENT_REQUEST_TEXTS):
        body = {"input": texts[start : start + AGREEMENT_REQUEST_TEXTS], "model": model_name}
        status, answer = servers.http_json(port, "/v1/embeddings", body, timeout=120.0)
        if status != 200:
            raise servers.ServerError(f"agreement request got {status}: {str(answer)[:300]}")
        rows += [item["embedding"] for item in sorted(answer["data"], key=lambda d: d["index"])]
    values = agreement.cosines(np.asarray(rows), reference)
    return {"mix": mix, **agreement.summary(values)}
