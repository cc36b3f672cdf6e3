"""The ceiling: the model's own forward passes in-process, with no server around them, on one engine.

Run as a subprocess by the runner, one engine at a time, with nothing else running, so that it owns the CPU:

    python -m benchmarks.ceiling --model PATH --inputs IN.json --out OUT.json [--engine torch] [--device auto]
                                 [--threads N] [--vectors-out V.npz] [--reference REF.npz] [--vectors-only]

IN.json holds ``{"mixes": {name: [texts]}, "direct_texts": [texts], "direct_reps": N}``. For each mix the texts are
sorted by token length and cut into batches of each size in ``--batch-sizes``; each size gets an untimed pass, then
a timed one, which covers tokenization (the transformers fast tokenizer), the forward pass, pooling and
normalization, as a server's work would. The best
texts/s over batch sizes is the ceiling. "Direct" is the latency of one short input done the same way, one at a time.

Agreement: every mix's texts are embedded once more (length-sorted batches of 16) and written to ``--vectors-out``;
with ``--reference`` (torch float32's file) the mean and minimum cosine against it go into OUT.json. An engine that
cannot run meaningfully here (bf16 without native bf16 instructions) writes ``{"skipped": reason}`` and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from benchmarks import agreement, engines

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
AGREEMENT_BATCH = 16


def throughput(encoder: engines.Encoder, texts: Sequence[str], batch_sizes: Sequence[int]) -> dict[str, Any]:
    """texts/s (and tokens/s) of length-sorted batches for each batch size, and the best of them."""
    lengths = encoder.token_lengths(texts)
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    ordered = [texts[i] for i in order]
    total_tokens = sum(lengths)
    by_size: dict[str, float] = {}
    for size in batch_sizes:
        batches = [ordered[i : i + size] for i in range(0, len(ordered), size)]
        # One untimed pass first: oneDNN and OpenVINO build kernels per input shape, and a server sees the same
        # shapes over and over, so the first sight of each shape is not what a steady state costs.
        _embed_all(encoder, batches)
        began = time.perf_counter()
        _embed_all(encoder, batches)
        by_size[str(size)] = len(texts) / (time.perf_counter() - began)
    best = max(by_size, key=lambda k: by_size[k])
    return {
        "n_texts": len(texts),
        "by_batch_size": by_size,
        "best_batch_size": int(best),
        "best_texts_per_s": by_size[best],
        "best_tokens_per_s": by_size[best] * total_tokens / len(texts),
    }


def _embed_all(encoder: engines.Encoder, batches: Sequence[Sequence[str]]) -> None:
    """Every batch: several at once where the engine computes on streams, else one after another."""
    if getattr(encoder, "streams", 1) > 1:
        cast(engines.OpenVinoEncoder, encoder).embed_batches(batches)
        return
    for batch in batches:
        encoder.embed(batch)


def direct_latency(encoder: engines.Encoder, texts: Sequence[str], reps: int) -> dict[str, float]:
    """Latency of one input at a time (tokenize + forward + pool), cycling through ``texts``."""
    for text in texts[:5]:
        encoder.embed([text])
    samples = []
    for i in range(reps):
        began = time.perf_counter()
        encoder.embed([texts[i % len(texts)]])
        samples.append((time.perf_counter() - began) * 1000.0)
    samples.sort()
    return {
        "reps": reps,
        "p50_ms": statistics.median(samples),
        "p90_ms": samples[min(len(samples) - 1, int(0.9 * len(samples)))],
        "mean_ms": statistics.fmean(samples),
    }


def vectors(encoder: engines.Encoder, texts: Sequence[str]) -> np.ndarray:
    """Every text's vector, in input order (computed in length-sorted batches)."""
    lengths = encoder.token_lengths(texts)
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    out = np.zeros((len(texts), 0), dtype=np.float32)
    for start in range(0, len(order), AGREEMENT_BATCH):
        chunk = order[start : start + AGREEMENT_BATCH]
        rows = encoder.embed([texts[i] for i in chunk])
        if out.shape[1] == 0:
            out = np.zeros((len(texts), rows.shape[1]), dtype=np.float32)
        out[chunk] = rows
    return out


def _threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _device(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--engine", choices=engines.ENGINES, default="torch")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (default: the cores available)")
    parser.add_argument(
        "--batch-sizes", default=None, help="comma-separated (default 1-64 on CPU, 1-256 on a GPU, doubling)"
    )
    parser.add_argument("--vectors-out", type=Path, default=None, help="write every mix's vectors here (.npz)")
    parser.add_argument("--reference", type=Path, default=None, help="torch float32's vectors (.npz) to compare with")
    parser.add_argument("--vectors-only", action="store_true", help="no timing: only the vectors and agreement")
    return parser


def main() -> None:
    """Run the ceiling measurements described in IN.json on one engine and write OUT.json."""
    args = _parser().parse_args()
    device = _device(args.device)
    threads = args.threads or _threads()
    spec = json.loads(args.inputs.read_text())
    result: dict[str, Any] = {"engine": args.engine, "device": device, "threads": threads, "mixes": {}}
    try:
        encoder = engines.create(args.engine, args.model, device, threads)
    except engines.EngineUnavailableError as exc:
        args.out.write_text(json.dumps({**result, "skipped": str(exc)}, indent=2))
        return
    facts = encoder.describe()
    result.update(facts, pooling=encoder.pooling, max_length=encoder.max_length)
    dtypes = {"onnx-int8": "int8", "openvino-bf16": "bfloat16", "openvino-bf16-streams": "bfloat16"}
    result.setdefault("dtype", dtypes.get(args.engine, "float32"))
    if facts["runtime"].startswith("torch "):  # the keys the torch ceiling always had
        result.update(torch_version=facts["runtime"].removeprefix("torch "), torch_threads=facts["threads"])
    if args.batch_sizes:
        batch_sizes = [int(s) for s in args.batch_sizes.split(",")]
    else:  # a GPU keeps gaining from larger batches long after a CPU has stopped
        batch_sizes = [*DEFAULT_BATCH_SIZES, *((128, 256) if device.startswith("cuda") else ())]
    if not args.vectors_only:
        for mix, texts in spec["mixes"].items():
            result["mixes"][mix] = throughput(encoder, texts, batch_sizes)
        result["direct"] = direct_latency(encoder, spec["direct_texts"], int(spec.get("direct_reps", 50)))
    if args.vectors_out or args.reference:
        mine = {mix: vectors(encoder, texts) for mix, texts in spec["mixes"].items()}
        if args.vectors_out:
            agreement.save(args.vectors_out, mine)
        if args.reference:
            result["agreement"] = agreement.compare(mine, agreement.load(args.reference))
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
