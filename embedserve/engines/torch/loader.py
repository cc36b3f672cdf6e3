"""Loading a described model's weights with transformers and torch, and picking its runner.

:func:`load` turns :class:`~embedserve.settings.ModelSettings` into a :class:`~embedserve.engines.base.ModelInfo` and
a runner implementing :class:`~embedserve.engines.base.InferenceModel`. What the model is (kind, pooling, limits)
comes from :func:`embedserve.engines.describe.describe`; this module adds the device, the dtype and the weights.
Every runner method runs on the model's backend thread.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

from embedserve.engines.base import ModelInfo
from embedserve.engines.describe import describe
from embedserve.engines.torch.cross import CrossRunner
from embedserve.engines.torch.dense import DenseRunner
from embedserve.engines.torch.runner import Runner
from embedserve.engines.torch.sparse import SpladeRunner
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
_MODEL_CLASSES: dict[str, Any] = {
    "embedding": AutoModel,
    "sparse": AutoModelForMaskedLM,
    "rerank": AutoModelForSequenceClassification,
    "classify": AutoModelForSequenceClassification,
}


def resolve_device(requested: str) -> torch.device:
    """``auto`` -> the first CUDA device if there is one, else CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {requested} asked for CUDA but torch sees no GPU; use --device cpu or auto")
    return device


def resolve_dtype(requested: str | None, device: torch.device) -> torch.dtype:
    """The default is float16 on CUDA and float32 on CPU."""
    if requested is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if requested != "float32" and device.type == "cpu":
        log.warning("--dtype %s on CPU is usually slower than float32", requested)
    return _DTYPES[requested]


def load(spec: ModelSettings) -> tuple[ModelInfo, Runner]:
    """Fetch (if needed) and load a model of any kind."""
    described = describe(spec)
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    model = _load_weights(_MODEL_CLASSES[described.kind], described.path, dtype, described.config.model_type)
    model.to(device).eval()
    info = described.info(
        architecture=type(model).__name__, dtype=str(dtype).removeprefix("torch."), device=str(device)
    )
    common: dict[str, Any] = {"device": device, "pad_id": described.pad_id, "max_len": info.max_input_length}
    if info.kind == "embedding":
        return info, DenseRunner(model, pooling=info.pooling, **common)
    if info.kind == "sparse":
        return info, SpladeRunner(model, **common)
    return info, CrossRunner(model, **common)


def _load_weights(model_class: Any, path: Any, dtype: torch.dtype, model_type: str) -> Any:
    try:
        return model_class.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    except (ValueError, ImportError) as exc:
        if not any(word in str(exc).lower() for word in ("sdpa", "scaled_dot_product_attention")):
            raise ModelLoadError(f"cannot load the weights in {path}: {exc}") from exc
        log.warning("%s does not support SDPA attention; using the eager implementation", model_type)
        return model_class.from_pretrained(path, dtype=dtype)
