"""What a model is, independent of the runtime that will run it: kind, pooling, labels, limits, prompts.

:func:`describe` reads the model's files (its sentence-transformers config, the transformers config and the fast
tokenizer) and decides everything an engine needs besides its weights. Every engine reuses it, so it must not
import torch or any other inference runtime: transformers' config and tokenizer classes only.

The kind is picked as follows:

* ``sparse``: a sentence-transformers SPLADE model, ``--pooling splade``, or a ``*ForMaskedLM`` checkpoint without
  sentence-transformers files (SPLADE checkpoints ship that way; dense ones come with a pooling config);
* ``rerank`` / ``classify``: a ``*ForSequenceClassification`` model with one label / several labels;
* ``multimodal``: a dual encoder, whose config has a text and a vision tower (CLIP and the like);
* ``embedding``: everything else.

``--kind`` (or ``kind`` in a config file) overrides the detection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES
from transformers.utils import logging as hf_logging

from embedserve.engines.base import Agreement, ModelInfo
from embedserve.engines.modelfiles import (
    SentenceTransformersConfig,
    read_sentence_transformers_config,
    resolve_model_dir,
    snapshot_commit,
)
from embedserve.errors import ModelLoadError
from embedserve.settings import ModelSettings

_POSITION_OFFSET_TYPES = {"roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "data2vec-text"}
"""Architectures whose position ids start after the padding index, so two positions are unusable."""


@dataclass(frozen=True)
class ModelDescription:
    """Everything about a model that does not depend on the engine running it."""

    model_id: str
    revision: str | None
    path: Path
    st: SentenceTransformersConfig
    config: Any = field(repr=False)
    """The transformers ``PretrainedConfig``."""
    tokenizer_json: str = field(repr=False)
    kind: str
    pooling: str
    dim: int
    """Length of the model's output row: hidden size (dense), vocabulary size (sparse) or label count (scoring)."""
    labels: tuple[str, ...]
    activation: str
    max_input_length: int
    pad_id: int
    prompts: dict[str, str]
    lowercase: bool
    default_prompt_name: str | None
    image_tokens: int = 0
    """Positions the vision tower computes per image (multimodal models): its cost in a batch."""

    def info(
        self, *, architecture: str, dtype: str, device: str, engine: str = "torch", quantize: str | None = None,
        agreement: Agreement | None = None, length_multiple: int = 1, graph: str | None = None, passes: int = 1,
    ) -> ModelInfo:  # fmt: skip
        """The :class:`ModelInfo` of this model as an engine loaded it (its class name, engine and numerics)."""
        return ModelInfo(
            model_id=self.model_id,
            revision=self.revision,
            path=str(self.path),
            architecture=architecture,
            kind=self.kind,
            pooling=self.pooling,
            dim=self.dim,
            max_input_length=self.max_input_length,
            dtype=dtype,
            device=device,
            tokenizer_json=self.tokenizer_json,
            prompts=self.prompts,
            default_prompt_name=self.default_prompt_name,
            lowercase=self.lowercase,
            labels=self.labels,
            activation=self.activation,
            engine=engine,
            quantize=quantize,
            agreement=agreement,
            image_tokens=self.image_tokens,
            length_multiple=length_multiple,
            graph=graph,
            passes=passes,
        )


def describe(spec: ModelSettings) -> ModelDescription:
    """Fetch the model's files if needed and describe it. Raises ModelLoadError naming what is wrong."""
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    path = resolve_model_dir(spec)
    st = read_sentence_transformers_config(path)
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise ModelLoadError(f"cannot read the config or tokenizer in {path}: {exc}") from exc
    backend_tokenizer = getattr(tokenizer, "backend_tokenizer", None)
    if backend_tokenizer is None:
        raise ModelLoadError(f"{path} has no fast (Rust) tokenizer; embedserve needs tokenizer.json")
    kind = detect_kind(spec, config, st)
    if kind == "multimodal":
        return _dual_encoder(spec, path, st, config, tokenizer, backend_tokenizer.to_str())
    pooling = {"sparse": "splade", "rerank": "none", "classify": "none"}.get(kind) or (
        spec.pooling or st.pooling or _default_pooling(config.model_type)
    )
    labels = _labels(config) if kind in ("rerank", "classify") else ()
    return ModelDescription(
        model_id=spec.model_id,
        revision=snapshot_commit(path) or spec.revision,
        path=path,
        st=st,
        config=config,
        tokenizer_json=backend_tokenizer.to_str(),
        kind=kind,
        pooling=pooling,
        dim=len(labels) if labels else int(config.vocab_size if kind == "sparse" else config.hidden_size),
        labels=labels,
        activation=_activation(config),
        max_input_length=_max_input_length(config, tokenizer.model_max_length, st.max_seq_length),
        pad_id=_pad_id(config.pad_token_id, tokenizer.pad_token_id),
        prompts={**st.prompts, **spec.prompts},
        lowercase=st.do_lower_case,
        default_prompt_name=st.default_prompt_name,
    )


def detect_kind(spec: ModelSettings, config: Any, st: SentenceTransformersConfig) -> str:
    """The model's kind from the settings, its sentence-transformers files and its architectures."""
    if spec.kind is not None:
        return spec.kind
    if _towers(config) is not None:
        return "multimodal"
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


def _towers(config: Any) -> tuple[Any, Any] | None:
    """The text and vision configs of a dual encoder (CLIP-style), else None."""
    text, vision = getattr(config, "text_config", None), getattr(config, "vision_config", None)
    return None if text is None or vision is None else (text, vision)


def _dual_encoder(
    spec: ModelSettings, path: Path, st: SentenceTransformersConfig, config: Any, tokenizer: Any, tokenizer_json: str
) -> ModelDescription:
    """A multimodal model: texts and images embedded into its projection space (``projection_dim``)."""
    towers = _towers(config)
    if towers is None:
        raise ModelLoadError(f"--kind multimodal needs a dual encoder (a text and a vision tower); {path} has "
                             f"{config.model_type}")  # fmt: skip
    text, vision = towers
    patches = (int(vision.image_size) // int(vision.patch_size)) ** 2
    return ModelDescription(
        model_id=spec.model_id, revision=snapshot_commit(path) or spec.revision, path=path, st=st, config=config,
        tokenizer_json=tokenizer_json, kind="multimodal", pooling="projection", dim=int(config.projection_dim),
        labels=(), activation="auto",
        max_input_length=_max_input_length(text, tokenizer.model_max_length, st.max_seq_length),
        pad_id=_pad_id(text.pad_token_id, tokenizer.pad_token_id), prompts={**st.prompts, **spec.prompts},
        lowercase=st.do_lower_case, default_prompt_name=st.default_prompt_name, image_tokens=patches + 1,
    )  # fmt: skip


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
