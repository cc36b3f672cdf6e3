"""The ceiling's engines: tokenize + forward + pool + normalize with torch, ONNX Runtime or OpenVINO.

Every engine uses the same tokenizer (transformers' fast tokenizer, padded to the longest input of the batch and
truncated at the model's maximum length: the ``tokenizer.json`` of all-MiniLM-L6-v2 has truncation 128 and fixed
padding baked in, which this call overrides), the same pooling (the model's sentence-transformers pooling, in
float32) and L2 normalization, and returns float32 vectors on the host. Only the forward pass differs.

| engine | forward pass |
|---|---|
| torch | eager PyTorch, float32 on CPU (float16 on CUDA, as embedserve's torch engine there) |
| torch-bf16 | eager PyTorch with the model in bfloat16 (CPU), pooling in float32 |
| torch-script | PyTorch float32 on a CPU, the model's call traced and frozen (embedserve's torch engine on a CPU) |
| onnx | ONNX Runtime on the exported graph (its own default graph optimizations) |
| onnx-optimized | ONNX Runtime on the graph fused by onnxruntime.transformers.optimizer |
| onnx-int8 | ONNX Runtime on the optimized graph, dynamic int8 quantized per channel |
| openvino | OpenVINO on the exported graph, inference precision forced to f32 |
| openvino-bf16 | OpenVINO with bf16 inference precision |
| openvino-bf16-streams | bf16, as many batches at once as OpenVINO's throughput hint has streams (2 on 2 cores) |

The streams variant is what embedserve's parallel passes run; its single-input time is the one-stream model's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from transformers import AutoTokenizer

from benchmarks import onnx_files
from benchmarks.texts import model_max_length
from benchmarks.variants import CEILING_ENGINES as ENGINES

# The ONNX file each graph engine reads.
_ONNX_VARIANT = {
    "onnx": "fp32",
    "onnx-optimized": "optimized",
    "onnx-int8": "int8",
    "openvino": "fp32",
    "openvino-bf16": "fp32",
    "openvino-bf16-streams": "fp32",
}


class EngineUnavailableError(RuntimeError):
    """This engine cannot run meaningfully here (e.g. bf16 without native bf16 instructions)."""


class Encoder(Protocol):
    """What the ceiling measures."""

    max_length: int
    pooling: str

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token count of each text after truncation."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Normalized float32 embeddings on the host, one row per text."""
        ...

    def describe(self) -> dict[str, Any]:
        """Engine facts for results.json (versions, precision, threads, file)."""
        ...


def pooling_mode(model_dir: Path) -> str:
    """cls or mean, from the model's sentence-transformers pooling config (mean without one)."""
    config = model_dir / "1_Pooling" / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("pooling_mode_cls_token"):
        return "cls"
    return "mean"


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX-512 BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return "avx512_bf16" in flags or "amx_bf16" in flags


class _Tokenizing:
    """The part every engine shares: the tokenizer, the maximum length and pooling in numpy."""

    def __init__(self, model_dir: Path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
        self.max_length = model_max_length(model_dir)
        self.pooling = pooling_mode(model_dir)

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Token count of each text after truncation."""
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        return [len(ids) for ids in encoded["input_ids"]]

    def tokenize(self, texts: Sequence[str], tensors: str) -> Any:
        """One padded batch (to its longest text), truncated at the model's maximum."""
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors=tensors
        )

    def pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Pooled, L2-normalized float32 rows."""
        hidden = hidden.astype(np.float32, copy=False)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.astype(np.float32)
            pooled = np.einsum("bth,bt->bh", hidden, weights) / np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return np.asarray(pooled / norms, dtype=np.float32)


class TorchEncoder(_Tokenizing):
    """Eager PyTorch (what embedserve's torch engine runs); pooling on the device, in float32 for bf16."""

    def __init__(self, model_dir: Path, device: str, threads: int, bf16: bool = False, script: bool = False) -> None:
        import torch
        from transformers import AutoModel

        super().__init__(model_dir)
        self.torch = torch
        self.device = torch.device(device)
        if threads > 0 and self.device.type == "cpu":
            torch.set_num_threads(threads)
        # Mirrors embedserve's torch defaults: float16 on CUDA, float32 on CPU (half precision on CPU is slow).
        if bf16:
            self.dtype = torch.bfloat16
        else:
            self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        model = AutoModel.from_pretrained(str(model_dir), dtype=self.dtype)
        self.model = model.to(self.device).eval()
        self.script = script
        if script:
            self.model = _traced(self.model, self.tokenize(["a traced example", "another, longer example text"], "pt"))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Normalized float32 embeddings on the host, one row per text."""
        torch = self.torch
        with torch.inference_mode():
            batch = self.tokenize(texts, "pt").to(self.device)
            if self.script:
                hidden = self.model(batch["input_ids"], batch["attention_mask"])
            else:
                hidden = self.model(**batch).last_hidden_state
            if self.dtype == torch.bfloat16:
                hidden = hidden.float()
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            # .cpu() waits for the device, so the time of a call covers the whole computation on a GPU too.
            vectors = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu()
        return np.asarray(vectors.numpy(), dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        """Engine facts for results.json."""
        torch = self.torch
        return {
            "runtime": f"torch {torch.__version__}",
            "dtype": str(self.dtype).removeprefix("torch."),
            "graph": "torchscript" if self.script else "eager",
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None,
        }


class _GraphEncoder(_Tokenizing):
    """Common feeding of an exported graph: int64 numpy inputs, the ones the graph takes."""

    def __init__(self, model_dir: Path, onnx_path: Path, input_names: Sequence[str]) -> None:
        super().__init__(model_dir)
        self.onnx_path = onnx_path
        self.input_names = list(input_names)

    def feed(self, texts: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The graph's inputs for a batch, and its attention mask."""
        batch = self.tokenize(texts, "np")
        ids = batch["input_ids"].astype(np.int64)
        inputs = {"input_ids": ids, "attention_mask": batch["attention_mask"].astype(np.int64)}
        if "token_type_ids" in self.input_names:
            types = batch.get("token_type_ids")
            inputs["token_type_ids"] = np.zeros_like(ids) if types is None else types.astype(np.int64)
        return {name: inputs[name] for name in self.input_names}, inputs["attention_mask"]


class OnnxRuntimeEncoder(_GraphEncoder):
    """ONNX Runtime's CPU provider, sequential execution, ``threads`` intra-op threads."""

    def __init__(self, model_dir: Path, onnx_path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.version = ort.__version__
        self.threads = threads
        super().__init__(model_dir, onnx_path, [i.name for i in self.session.get_inputs()])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Normalized float32 embeddings on the host, one row per text."""
        inputs, mask = self.feed(texts)
        (hidden,) = self.session.run(["last_hidden_state"], inputs)
        return self.pool(hidden, mask)

    def describe(self) -> dict[str, Any]:
        """Engine facts for results.json."""
        return {"runtime": f"onnxruntime {self.version}", "threads": self.threads, "onnx": self.onnx_path.name}


class OpenVinoEncoder(_GraphEncoder):
    """OpenVINO's CPU plugin on the exported graph (dynamic shapes), latency hint, one stream."""

    def __init__(self, model_dir: Path, onnx_path: Path, threads: int, precision: str, streams: bool = False) -> None:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(onnx_path))
        config = {
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
            "INFERENCE_NUM_THREADS": str(threads),
        }
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.version = ov.__version__.split("-")[0]
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type: f32 or bf16
        self.precision = str(hint.to_string() if hasattr(hint, "to_string") else hint)
        self.threads = threads
        self.streams = 1
        self.queue: Any = None
        if streams:
            throughput = {**config, "PERFORMANCE_HINT": "THROUGHPUT"}
            del throughput["NUM_STREAMS"]
            streamed = core.compile_model(model, "CPU", throughput)
            self.streams = int(streamed.get_property("NUM_STREAMS"))
            self.queue = ov.AsyncInferQueue(streamed, self.streams)
        super().__init__(model_dir, onnx_path, [next(iter(p.get_names())) for p in model.inputs])

    def embed_batches(self, batches: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Every batch's vectors, computed on the streams (as many batches at once as there are streams); the next
        batch is tokenized while the others compute. Only for an encoder built with streams."""
        assert self.queue is not None, "built without streams: embed one batch after another"
        out: list[np.ndarray] = [np.zeros(0)] * len(batches)

        def done(request: Any, slot: tuple[int, np.ndarray]) -> None:
            out[slot[0]] = self.pool(request.get_output_tensor(0).data, slot[1])

        self.queue.set_callback(done)
        for i, batch in enumerate(batches):
            inputs, mask = self.feed(batch)
            self.queue.start_async(inputs, (i, mask))
        self.queue.wait_all()
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Normalized float32 embeddings on the host, one row per text."""
        inputs, mask = self.feed(texts)
        self.request.infer(inputs)
        # The output tensor's memory is reused by the next inference: pooled (copied) before that.
        return self.pool(self.request.get_output_tensor(0).data, mask)

    def describe(self) -> dict[str, Any]:
        """Engine facts for results.json."""
        return {
            "runtime": f"openvino {self.version}",
            "precision": self.precision,
            "threads": self.threads,
            "streams": self.streams,
            "onnx": self.onnx_path.name,
        }


def _traced(model: Any, example: Any) -> Any:
    """``model`` on (input ids, attention mask) -> last hidden state, traced and frozen with TorchScript."""
    import warnings

    import torch

    class Call(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: Any, mask: Any) -> Any:
            return self.model(input_ids=ids, attention_mask=mask).last_hidden_state

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on constants it records
        return torch.jit.freeze(torch.jit.trace(Call().eval(), (example["input_ids"], example["attention_mask"])))


def create(engine: str, model_dir: Path, device: str, threads: int) -> Encoder:
    """Build one engine; raises EngineUnavailableError when it cannot run meaningfully on this machine."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r} (choose from {', '.join(ENGINES)})")
    if engine != "torch" and device != "cpu":
        raise EngineUnavailableError(f"{engine} is a CPU engine; the ceiling's device is {device}")
    if engine.endswith("bf16") and not cpu_has_native_bf16():
        raise EngineUnavailableError(
            "the CPU has neither avx512_bf16 nor amx_bf16 (/proc/cpuinfo): bf16 would be emulated, so slow"
        )
    if engine.startswith("torch"):
        return TorchEncoder(model_dir, device, threads, bf16=engine == "torch-bf16", script=engine == "torch-script")
    onnx_path = onnx_files.ensure(model_dir, _ONNX_VARIANT[engine])
    if engine.startswith("onnx"):
        return OnnxRuntimeEncoder(model_dir, onnx_path, threads)
    precision = "bf16" if "bf16" in engine else "f32"
    return OpenVinoEncoder(model_dir, onnx_path, threads, precision, streams=engine.endswith("streams"))
