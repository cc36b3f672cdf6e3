"""Loading a described model's weights with transformers and torch, and picking its runner.

:func:`load` turns a :class:`~embedserve.engines.describe.ModelDescription` (what the model is: kind, pooling,
limits) into a :class:`~embedserve.engines.base.ModelInfo` and a runner implementing
:class:`~embedserve.engines.base.InferenceModel`; this module adds the device, the precision and the weights.
Every runner method runs on the model's backend thread.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoImageProcessor, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

from embedserve.engines.agreement import batch_run
from embedserve.engines.base import ModelInfo
from embedserve.engines.cache import ArtifactCache, content_key
from embedserve.engines.describe import ModelDescription
from embedserve.engines.precision import cached_agreement, pick_bf16, wants_bf16
from embedserve.engines.torch.clip import DualEncoderRunner
from embedserve.engines.torch.cross import CrossRunner
from embedserve.engines.torch.dense import DenseRunner
from embedserve.engines.torch.runner import Runner
from embedserve.engines.torch.sparse import SpladeRunner
from embedserve.engines.torch.trace import trace
from embedserve.errors import ModelLoadError
from embedserve.settings import ModelSettings

log = logging.getLogger("embedserve.model")

# oneDNN keeps a compiled kernel, with its buffers, for every distinct tensor shape it sees (1024 by default), and
# dynamic batching produces hundreds of shapes: under overload RSS grew from 486 to 1467 MiB in two minutes. A small
# cache keeps it flat (about 650 MiB) at no measured speed cost; no cache at all costs 0.5-1 ms a forward pass.
# oneDNN reads this when it builds its first kernel, so setting it before any forward pass is enough; an operator's
# own value wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
"""Explicit --dtype values; auto is float16 on CUDA and, on a CPU, float32 or a checked bfloat16."""
_MODEL_CLASSES: dict[str, Any] = {
    "embedding": AutoModel,
    "sparse": AutoModelForMaskedLM,
    "rerank": AutoModelForSequenceClassification,
    "classify": AutoModelForSequenceClassification,
    "multimodal": AutoModel,
}


def resolve_device(requested: str) -> torch.device:
    """``auto`` -> the first CUDA device if there is one, else CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {requested} asked for CUDA but torch sees no GPU; use --device cpu or auto")
    return device


def load(desc: ModelDescription, spec: ModelSettings, *, threads: int, cache_root: Path) -> tuple[ModelInfo, Runner]:
    """Load a described model's weights on its device, in the precision ``--dtype`` resolves to there."""
    device = resolve_device(spec.device)
    cpu = device.type == "cpu"
    if cpu:
        torch.set_num_threads(threads)  # this (backend) thread's intra-op pool: it runs every forward pass
    else:
        if device.index is not None:
            torch.cuda.set_device(device)  # this (backend) thread's current device: its stream and events are there
        # cuDNN's attention builds an execution plan for every new input shape (tens of milliseconds each), and
        # dynamic batching makes a new shape of nearly every batch; flash and memory-efficient attention need none.
        torch.backends.cuda.enable_cudnn_sdp(False)
    try_bf16 = cpu and wants_bf16(spec.dtype, desc.kind)
    # On a CPU a bfloat16 candidate is loaded in float32 first: the reference it is checked against.
    dtype = _DTYPES.get(spec.dtype, torch.float16 if device.type == "cuda" else torch.float32)
    if try_bf16:
        dtype = torch.float32
    model = _load_weights(_MODEL_CLASSES[desc.kind], desc.path, dtype, desc.config.model_type)
    model.to(device).eval()
    runner = _runner(desc, model, device)
    found = None
    if try_bf16:
        found = cached_agreement(
            ArtifactCache(cache_root, content_key(desc.path, desc.kind, "torch")), engine="torch", form="bfloat16",
            library=torch.__version__, desc=desc, reference=batch_run(runner), candidate=batch_run(runner),
            switch=lambda: model.to(torch.bfloat16),
        )  # fmt: skip
        if pick_bf16(spec.dtype, found):
            dtype = torch.bfloat16
        else:
            model.to(torch.float32)
    if cpu and spec.torchscript and runner.output is not None:
        reason = trace(runner)
        if reason is not None:
            log.warning("%s runs eagerly: %s", spec.model_id, reason)
    info = desc.info(
        architecture=type(model).__name__, dtype=str(dtype).removeprefix("torch."), device=str(device),
        agreement=found, graph=runner.graph,
    )  # fmt: skip
    return info, runner


def _runner(desc: ModelDescription, model: Any, device: torch.device) -> Runner:
    common: dict[str, Any] = {"device": device, "pad_id": desc.pad_id, "max_len": desc.max_input_length}
    if desc.kind == "embedding":
        return DenseRunner(model, pooling=desc.pooling, **common)
    if desc.kind == "sparse":
        return SpladeRunner(model, **common)
    if desc.kind == "multimodal":
        # The image processor without torchvision (Pillow and numpy): thread-safe, and what the model card's own
        # processor computes when torchvision is absent.
        processor = AutoImageProcessor.from_pretrained(desc.path, backend="pil")  # type: ignore[no-untyped-call]
        return DualEncoderRunner(model, processor=processor, **common)
    return CrossRunner(model, **common)


def _load_weights(model_class: Any, path: Any, dtype: torch.dtype, model_type: str) -> Any:
    try:
        return model_class.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    except (ValueError, ImportError) as exc:
        if not any(word in str(exc).lower() for word in ("sdpa", "scaled_dot_product_attention")):
            raise ModelLoadError(f"cannot load the weights in {path}: {exc}") from exc
        log.warning("%s does not support SDPA attention; using the eager implementation", model_type)
        return model_class.from_pretrained(path, dtype=dtype)
