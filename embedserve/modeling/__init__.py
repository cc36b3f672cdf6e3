"""Loading transformers models: the only package that imports torch.

:func:`load` turns :class:`~embedserve.settings.ModelSettings` into a :class:`~embedserve.backend.ModelInfo` and a
runner implementing :class:`~embedserve.backend.InferenceModel`, picking the model's kind:

* ``sparse``: a sentence-transformers SPLADE model, ``--pooling splade``, or a ``*ForMaskedLM`` checkpoint without
  sentence-transformers files (SPLADE checkpoints ship that way; dense ones come with a pooling config);
* ``rerank`` / ``classify``: a ``*ForSequenceClassification`` model with one label / several labels;
* ``embedding``: everything else.

``--kind`` (or ``kind`` in a config file) overrides the detection. Every runner method runs on the model's backend
thread.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES
from transformers.utils import logging as hf_logging

from embedserve.backend import ModelInfo
from embedserve.modelfiles import (
    ModelLoadError,
    SentenceTransformersConfig,
    read_sentence_transformers_config,
    resolve_model_dir,
)
from embedserve.modeling.cross import CrossRunner
from embedserve.modeling.dense import DenseRunner
from embedserve.modeling.runner import Runner
from embedserve.modeling.sparse import SpladeRunner
from embedserve.settings import ModelSettings

log = logging.getLogger("embedserve.model")

# oneDNN keeps a compiled kernel, with its buffers, for every distinct tensor shape it sees (1024 by default), and
# dynamic batching produces hundreds of shapes: under overload RSS grew from 486 to 1467 MiB in two minutes. A small
# cache keeps it flat (about 650 MiB) at no measured speed cost; no cache at all costs 0.5-1 ms a forward pass.
# oneDNN reads this when it builds its first kernel, so setting it before any forward pass is enough; an operator's
# own value wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_POSITION_OFFSET_TYPES = {"roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "data2vec-text"}
"""Architectures whose position ids start after the padding index, so two positions are unusable."""
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


def detect_kind(spec: ModelSettings, config: Any, st: SentenceTransformersConfig) -> str:
    """The model's kind from the settings, its sentence-transformers files and its architectures."""
    if spec.kind is not None:
        return spec.kind
    if spec.pooling == "splade" or st.sparse:
        return "sparse"
    if spec.pooling is not None or st.pooling is not None:
        return "embedding"
    architectures = getattr(config, "architectures", None) or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "rerank" if int(getattr(config, "num_labels", 2)) == 1 else "classify"
    if any(a.endswith("ForMaskedLM") for a in architectures) and not st.has_modules:
        return "sparse"
    return "embedding"


def load(spec: ModelSettings) -> tuple[ModelInfo, Runner]:
    """Fetch (if needed) and load a model of any kind."""
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    path = resolve_model_dir(spec)
    st = read_sentence_transformers_config(path)
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise ModelLoadError(f"cannot read the config or tokenizer in {path}: {exc}") from exc
    backend_tokenizer = getattr(tokenizer, "backend_tokenizer", None)
    if backend_tokenizer is None:
        raise ModelLoadError(f"{path} has no fast (Rust) tokenizer; embedserve needs tokenizer.json")
    kind = detect_kind(spec, config, st)
    model = _load_weights(_MODEL_CLASSES[kind], path, dtype, config.model_type)
    model.to(device).eval()
    pooling = {"sparse": "splade", "rerank": "none", "classify": "none"}.get(kind) or (
        spec.pooling or st.pooling or _default_pooling(config.model_type)
    )
    labels = _labels(config) if kind in ("rerank", "classify") else ()
    info = ModelInfo(
        model_id=spec.model_id,
        revision=spec.revision,
        path=str(path),
        architecture=type(model).__name__,
        kind=kind,
        pooling=pooling,
        dim=len(labels) if labels else int(config.vocab_size if kind == "sparse" else config.hidden_size),
        max_input_length=_max_input_length(config, tokenizer.model_max_length, st.max_seq_length),
        dtype=str(dtype).removeprefix("torch."),
        device=str(device),
        tokenizer_json=backend_tokenizer.to_str(),
        prompts={**st.prompts, **spec.prompts},
        default_prompt_name=st.default_prompt_name,
        lowercase=st.do_lower_case,
        labels=labels,
        activation=_activation(config),
    )
    common: dict[str, Any] = {"device": device, "pad_id": _pad_id(config.pad_token_id, tokenizer.pad_token_id),
              "max_len": info.max_input_length}  # fmt: skip
    if kind == "embedding":
        return info, DenseRunner(model, pooling=pooling, **common)
    if kind == "sparse":
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


def _labels(config: Any) -> tuple[str, ...]:
    id2label = getattr(config, "id2label", None) or {}
    count = int(getattr(config, "num_labels", len(id2label)) or len(id2label))
    return tuple(str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(count))


def _activation(config: Any) -> str:
    """The activation a sentence-transformers CrossEncoder saved with the model, so that scores match its predict()."""
    saved = (getattr(config, "sentence_transformers", None) or {}).get("activation_fn") or getattr(
        config, "sbert_ce_default_activation_function", None
    )
    name = str(saved or "").rsplit(".", 1)[-1].lower()
    return {"sigmoid": "sigmoid", "softmax": "softmax", "identity": "none"}.get(name, "auto")


def _default_pooling(model_type: str) -> str:
    # Encoders (they have a masked-LM head in transformers) pool on CLS, as TEI does; decoders on the last token.
    return "cls" if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "last-token"


def _max_input_length(config: Any, tokenizer_max: int, st_max: int | None) -> int:
    limits = []
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        offset = 2 if config.model_type in _POSITION_OFFSET_TYPES else 0
        limits.append(positions - offset)
    if st_max is not None:
        limits.append(st_max)
    elif 0 < tokenizer_max < 1_000_000:  # tokenizers without a limit report a huge sentinel value
        limits.append(tokenizer_max)
    if not limits:
        raise ModelLoadError("cannot tell the model's maximum input length from its config or tokenizer")
    return min(limits)


def _pad_id(config_pad: int | None, tokenizer_pad: int | None) -> int:
    # The model's own padding index matters (RoBERTa derives position ids from it); otherwise anything masked works.
    if config_pad is not None:
        return int(config_pad)
    return int(tokenizer_pad) if tokenizer_pad is not None else 0
