"""The ceiling: the model's own forward passes in-process, with no server around them.

Run as a subprocess by the runner, with nothing else running, so that it owns the CPU:

    python -m benchmarks.ceiling --model PATH --inputs IN.json --out OUT.json [--device auto]

IN.json holds ``{"mixes": {name: [texts]}, "direct_texts": [texts], "direct_reps": N}``. For each mix the texts are
sorted by token length and cut into batches of each size in ``--batch-sizes``; the time covers tokenization (the
transformers fast tokenizer), the forward pass, pooling and normalization, as a server's work would. The best
texts/s over batch sizes is the ceiling. "Direct" is the latency of one short input done the same way, one at a time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional
from transformers import AutoModel, AutoTokenizer

from benchmarks.texts import model_max_length

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


class Encoder:
    """Tokenize + forward + pool + normalize, the minimum work of one embedding request."""

    def __init__(self, model_dir: Path, device: str) -> None:
        self.device = torch.device(device)
        # Mirrors embedserve's defaults: float16 on CUDA, float32 on CPU (half precision on CPU is slow).
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
        model = AutoModel.from_pretrained(str(model_dir), dtype=self.dtype)
        self.model = model.to(self.device).eval()
        self.max_length = model_max_length(model_dir)
        self.pooling = _pooling_mode(model_dir)

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token count of each text after truncation."""
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        return [len(ids) for ids in encoded["input_ids"]]

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalized float32 embeddings on the host, one row per text."""
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**batch).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        # .cpu() waits for the device, so the time of a call covers the whole computation on a GPU too.
        return functional.normalize(pooled.float(), dim=-1).cpu()


def _pooling_mode(model_dir: Path) -> str:
    config = model_dir / "1_Pooling" / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("pooling_mode_cls_token"):
        return "cls"
    return "mean"


def throughput(encoder: Encoder, texts: Sequence[str], batch_sizes: Sequence[int]) -> dict[str, Any]:
    """texts/s (and tokens/s) of length-sorted batches for each batch size, and the best of them."""
    lengths = encoder.token_lengths(texts)
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    ordered = [texts[i] for i in order]
    total_tokens = sum(lengths)
    by_size: dict[str, float] = {}
    for size in batch_sizes:
        batches = [ordered[i : i + size] for i in range(0, len(ordered), size)]
        encoder.embed(batches[-1])  # warm-up on the longest batch, so allocations are not timed
        began = time.perf_counter()
        for batch in batches:
            encoder.embed(batch)
        by_size[str(size)] = len(texts) / (time.perf_counter() - began)
    best = max(by_size, key=lambda k: by_size[k])
    return {
        "n_texts": len(texts),
        "by_batch_size": by_size,
        "best_batch_size": int(best),
        "best_texts_per_s": by_size[best],
        "best_tokens_per_s": by_size[best] * total_tokens / len(texts),
    }


def direct_latency(encoder: Encoder, texts: Sequence[str], reps: int) -> dict[str, float]:
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


def main() -> None:
    """Run the ceiling measurements described in IN.json and write OUT.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    parser.add_argument(
        "--batch-sizes", default=None, help="comma-separated (default 1-64 on CPU, 1-256 on a GPU, doubling)"
    )
    args = parser.parse_args()
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    spec = json.loads(args.inputs.read_text())
    if args.batch_sizes:
        batch_sizes = [int(s) for s in args.batch_sizes.split(",")]
    else:  # a GPU keeps gaining from larger batches long after a CPU has stopped
        batch_sizes = [*DEFAULT_BATCH_SIZES, *((128, 256) if device.startswith("cuda") else ())]
    encoder = Encoder(args.model, device)
    result: dict[str, Any] = {
        "device": device,
        "dtype": str(encoder.dtype).removeprefix("torch."),
        "pooling": encoder.pooling,
        "max_length": encoder.max_length,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(encoder.device) if encoder.device.type == "cuda" else None,
        "mixes": {},
    }
    for mix, texts in spec["mixes"].items():
        result["mixes"][mix] = throughput(encoder, texts, batch_sizes)
    result["direct"] = direct_latency(encoder, spec["direct_texts"], int(spec.get("direct_reps", 50)))
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
