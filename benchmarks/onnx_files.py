"""ONNX files of a model for the benchmark's ceiling engines and the Infinity-optimum baseline.

Exported here, not by embedserve, so the baselines never depend on the code under test:

- ``model.onnx``: ``torch.onnx.export(dynamo=False)``, opset 17, dynamic batch and sequence axes, inputs
  ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the config has a type vocabulary of more than one
  entry), output ``last_hidden_state``;
- ``model_optimized.onnx``: ``onnxruntime.transformers.optimizer`` (bert fusions: attention, skip-layernorm, gelu);
- ``model_int8.onnx``: dynamic int8 quantization of the optimized file, per channel, signed weights, full range.

Files are cached in ``benchmarks/.work/onnx/<model name>-<key>/``; the key covers the model directory's path and the
size and modification time of its files, so a changed model is exported again. Run as a module it prints the paths:

    python -m benchmarks.onnx_files --model PATH [--variant fp32|optimized|int8]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

WORK_DIR = Path(__file__).resolve().parent / ".work"
OPSET = 17
# Part of the cache key: bump it when the export, optimization or quantization recipe changes.
RECIPE = "opset17-eager-fused-attention-int8pc-1"
VARIANTS = {"fp32": "model.onnx", "optimized": "model_optimized.onnx", "int8": "model_int8.onnx"}


def cache_dir(model_dir: Path, work_dir: Path = WORK_DIR) -> Path:
    """Where the ONNX files of ``model_dir`` are kept."""
    model_dir = model_dir.resolve()
    digest = hashlib.sha256(f"{RECIPE}:{model_dir}".encode())
    for path in sorted(model_dir.rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(model_dir)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return work_dir / "onnx" / f"{model_dir.name}-{digest.hexdigest()[:12]}"


def uses_token_types(model_dir: Path) -> bool:
    """Whether the exported graph takes ``token_type_ids`` (a type vocabulary of more than one entry)."""
    config = json.loads((model_dir / "config.json").read_text())
    return int(config.get("type_vocab_size", 0) or 0) > 1


def _export(model_dir: Path, out: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    with_types = uses_token_types(model_dir)
    # Eager attention traces into plain MatMul/Softmax nodes, which the ORT optimizer fuses and every runtime reads.
    model = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
    sample = tokenizer(["a short one", "a somewhat longer sentence to export with"], padding=True, return_tensors="pt")

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            names = ("input_ids", "attention_mask", "token_type_ids")
            return self.inner(**dict(zip(names, inputs, strict=False))).last_hidden_state  # type: ignore[no-any-return]

    names = ["input_ids", "attention_mask", *(["token_type_ids"] if with_types else [])]
    args = tuple(sample[name] if name in sample else torch.zeros_like(sample["input_ids"]) for name in names)
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        torch.onnx.export(
            LastHidden(),
            args,
            str(out),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _optimize(model_dir: Path, src: Path, out: Path) -> None:
    from onnxruntime.transformers.optimizer import optimize_model

    # Heads and width from the config: with 0 (detect from the graph) the optimizer finds neither in this export
    # and fuses no attention at all, only the layer norms and gelu.
    config = json.loads((model_dir / "config.json").read_text())
    heads, hidden = int(config.get("num_attention_heads", 0)), int(config.get("hidden_size", 0))
    optimized = optimize_model(str(src), model_type="bert", num_heads=heads, hidden_size=hidden)
    optimized.save_model_to_file(str(out))
    stats = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    out.with_name("fusions.json").write_text(json.dumps(stats, indent=1) + "\n")


def _quantize(src: Path, out: Path) -> None:
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel signed int8 at full range: per-tensor or reduce_range=True lose far more (mean cosine 0.76-0.96
    # against fp32 on a VNNI CPU, see the project's research notes).
    # The fused contrib ops (FastGelu, SkipLayerNormalization) defeat ONNX shape inference: their outputs are float.
    options = {"DefaultTensorType": TensorProto.FLOAT}
    quantize_dynamic(
        str(src), str(out), per_channel=True, reduce_range=False, weight_type=QuantType.QInt8, extra_options=options
    )


def ensure(model_dir: Path, variant: str = "fp32", work_dir: Path = WORK_DIR) -> Path:
    """The path of one ONNX variant of the model, building it (and what it is built from) when missing."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown ONNX variant {variant!r} (choose from {', '.join(VARIANTS)})")
    folder = cache_dir(model_dir, work_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / VARIANTS[variant]
    if target.is_file():
        return target
    steps: dict[str, Any] = {
        "fp32": lambda out: _export(model_dir, out),
        "optimized": lambda out: _optimize(model_dir, ensure(model_dir, "fp32", work_dir), out),
        "int8": lambda out: _quantize(ensure(model_dir, "optimized", work_dir), out),
    }
    # Written under a temporary name and renamed, so an interrupted build never leaves a truncated file behind.
    partial = folder / f"partial-{os.getpid()}-{target.name}"
    try:
        steps[variant](partial)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    (folder / "source.txt").write_text(f"{model_dir.resolve()}\n")
    return target


def main() -> None:
    """Build (or find) the requested ONNX variants and print one path a line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--variant", choices=sorted(VARIANTS), action="append", help="default: fp32")
    args = parser.parse_args()
    for variant in args.variant or ["fp32"]:
        sys.stdout.write(f"{ensure(args.model, variant)}\n")


if __name__ == "__main__":
    main()
