"""What a run measures, in one place: the ceiling engines and the server variants.

A variant's name is its part in ``--only`` and its key in results.json. The embedserve variants differ only in
their flags; a flag the server does not have yet (it exits at start with a usage error) makes the runner skip that
variant with a message, and the targets that need it read "not measured".

Only the standard library is imported at module level: ``python -m benchmarks run --help`` reads these tables and
must work without the bench extras.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# The in-process ceiling engines (benchmarks/engines.py), in run order; torch float32 first, the reference.
CEILING_ENGINES = (
    "torch",
    "torch-script",
    "torch-bf16",
    "onnx",
    "onnx-optimized",
    "onnx-int8",
    "openvino",
    "openvino-bf16",
    "openvino-bf16-streams",
)


@dataclass(frozen=True)
class Variant:
    """One server configuration under test."""

    name: str
    kind: str  # embedserve, naive, infinity, infinity-optimum
    description: str
    flags: tuple[str, ...] = ()  # embedserve only: on top of the defaults and --embedserve-args
    closed_only: bool = False  # skip the open-loop cells (the variant is only compared at closed-loop shapes)
    overload: bool = False  # run the 10x overload phase after the cells
    # Send texts cut at the model's maximum length (see TokenCounter.clip): for a server that truncates at another
    # limit, so that it computes the same tokens as the others.
    clip_to_max_length: bool = False


VARIANTS = (
    Variant("embedserve", "embedserve", "default flags (--engine auto)", overload=True),
    # torch in float32, what embedserve ran before the CPU engines: the earlier targets and the int8 comparison.
    Variant(
        "embedserve-torch",
        "embedserve",
        "--engine torch --dtype float32",
        flags=("--engine", "torch", "--dtype", "float32"),
        closed_only=True,
    ),
    Variant("embedserve-int8", "embedserve", "--quantize int8", flags=("--quantize", "int8"), closed_only=True),
    Variant("naive", "naive", "sentence-transformers encode behind Starlette"),
    Variant("infinity", "infinity", "Infinity, torch engine"),
    Variant(
        "infinity-optimum",
        "infinity-optimum",
        "Infinity, optimum engine (ONNX), --pooling-method mean",
        clip_to_max_length=True,
    ),
)
BY_NAME = {v.name: v for v in VARIANTS}
# The overload command's side by side (benchmarks/overload.py): admission by predicted wait, and the slots alone.
OVERLOAD_VARIANTS = (
    Variant(
        "predicted-wait",
        "embedserve",
        "default flags: admission by predicted wait (--max-queue-time, default 1 s) within the slots",
    ),
    Variant(
        "slots-only",
        "embedserve",
        "--max-queue-time 0: only the --max-concurrent-requests slots bound admission",
        flags=("--max-queue-time", "0"),
    ),
)
# The flavor of Infinity's optimum engine the runner uses unless told otherwise: the faster of the two set-ups at 32
# single-text clients, mixed lengths, on the 2-core box: ORT's OpenVINO provider served 1.05x the CPU provider
# (56.6 vs 53.9 emb/s, four interleaved rounds each; 1.06x in an earlier measurement). See benchmarks/README.md.
INFINITY_OPTIMUM_FLAVORS = ("openvino", "optimum")
DEFAULT_INFINITY_OPTIMUM_FLAVOR = "openvino"
# Files a model farm leaves out: weights (the ONNX engine reads only the graph) and ONNX or OpenVINO exports that
# came with the model, which Infinity might pick instead of ours.
_FARM_SKIP_SUFFIXES = (".safetensors", ".bin", ".pt", ".h5", ".msgpack", ".ot", ".onnx", ".onnx_data")
_FARM_SKIP_DIRS = ("onnx", "openvino")


def ensure_onnx(model: Path) -> Path:
    """The exported float32 graph of the model (built once, in a subprocess: the runner never imports torch)."""
    from benchmarks import servers

    argv = [sys.executable, "-m", "benchmarks.onnx_files", "--model", str(model), "--variant", "fp32"]
    env = {**os.environ, **servers.SERVER_ENV}
    out = subprocess.run(argv, check=True, capture_output=True, text=True, env=env, cwd=servers.BENCH_DIR.parent)
    return Path(out.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def model_farm(model: Path, onnx_path: Path) -> Iterator[Path]:
    """A temporary copy of the model folder with ``model.onnx`` in it, removed afterwards.

    Copies, not links: Infinity's optimizer writes ``model_optimized.onnx`` (and config files) into the folder it is
    given, and writing through a link would change the installed model.
    """
    with tempfile.TemporaryDirectory(prefix="embedserve-bench-infinity-") as tmp:
        farm = Path(tmp) / model.name
        for path in sorted(model.rglob("*")):
            relative = path.relative_to(model)
            if not path.is_file() or relative.parts[0] in _FARM_SKIP_DIRS or path.name.endswith(_FARM_SKIP_SUFFIXES):
                continue
            (farm / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, farm / relative)
        shutil.copy2(onnx_path, farm / "model.onnx")
        yield farm


def server_version(variant: Variant, flavor: str) -> str:
    """The package version of what a variant runs (Infinity's from its venv, with its ONNX Runtime)."""
    from benchmarks import servers

    if variant.kind.startswith("infinity"):
        venv_flavor = "torch" if variant.kind == "infinity" else flavor
        python = servers.INFINITY_VENVS[venv_flavor] / "bin" / "python"
        code = (
            "import importlib.metadata as m\n"
            "v=[f'infinity-emb {m.version(\"infinity-emb\")}']\n"
            "for p in ('onnxruntime','onnxruntime-openvino','optimum'):\n"
            "    try: v.append(f'{p} {m.version(p)}')\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(', '.join(v))"
        )
        return subprocess.run([str(python), "-c", code], capture_output=True, text=True).stdout.strip()
    import importlib.metadata

    package = "embedserve" if variant.kind == "embedserve" else "sentence-transformers"
    try:
        return f"{package} {importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:  # run from a source tree on PYTHONPATH (the GPU check)
        return f"{package} (source tree, not installed)"
