"""Exporting a transformers model to an ONNX graph that the graph engines (ONNX Runtime, OpenVINO) run.

One graph per kind, with dynamic batch and sequence axes:

* ``embedding``: the encoder's (or decoder's) token states, ``last_hidden_state`` (pooled by the engine, exactly as
  a shipped ``onnx/model.onnx`` would be);
* ``sparse``: SPLADE weights, ``log(1 + relu(logits))`` max-pooled over the input's real tokens inside the graph, so
  the vocabulary-sized logits never leave the runtime;
* ``rerank`` / ``classify``: the classifier's ``logits``.

The legacy TorchScript exporter (``dynamo=False``) is used: it needs no extra package. Attention is exported in its
eager form, which ONNX Runtime's transformer optimizer recognizes and fuses.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

from embedserve.engines.describe import ModelDescription
from embedserve.errors import ModelLoadError

log = logging.getLogger("embedserve.engines.onnx")

OPSET = 17
FORMAT_VERSION = "1"
"""Bumped whenever the exported graph changes for the same model, so cached graphs from older releases are rebuilt."""

OUTPUT_NAMES = {"embedding": "last_hidden_state", "sparse": "sparse", "rerank": "logits", "classify": "logits"}
_MODEL_CLASSES: dict[str, Any] = {
    "embedding": AutoModel,
    "sparse": AutoModelForMaskedLM,
    "rerank": AutoModelForSequenceClassification,
    "classify": AutoModelForSequenceClassification,
}


class _Graph(torch.nn.Module):
    """The model plus what each kind computes after it, with the inputs as positional tensors."""

    def __init__(self, model: Any, kind: str, token_types: bool) -> None:
        super().__init__()
        self.model = model
        self.kind = kind
        self.token_types = token_types
        # Decoders would otherwise also return a key/value cache, which an embedding server never reuses.
        self.extra = {"use_cache": False} if hasattr(model.config, "use_cache") else {}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *types: torch.Tensor) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **self.extra}
        if self.token_types:
            inputs["token_type_ids"] = types[0]
        out = self.model(**inputs)
        if self.kind == "embedding":
            hidden: torch.Tensor = out.last_hidden_state
            return hidden
        if self.kind == "sparse":
            weights = torch.log1p(torch.relu(out.logits)) * attention_mask.unsqueeze(-1).to(out.logits.dtype)
            return weights.amax(dim=1)
        logits: torch.Tensor = out.logits
        return logits


def takes_token_types(config: Any) -> bool:
    """Whether the architecture has token type embeddings worth feeding (BERT: 2 types; RoBERTa: 1, ignored)."""
    return int(getattr(config, "type_vocab_size", 0) or 0) > 1


def export(desc: ModelDescription, target: Path) -> None:
    """Write ``desc``'s model as an ONNX graph to ``target`` (a fresh path; the caller moves it into place)."""
    t0 = time.perf_counter()
    token_types = takes_token_types(desc.config)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if token_types else [])
    output = OUTPUT_NAMES[desc.kind]
    try:
        model = _MODEL_CLASSES[desc.kind].from_pretrained(desc.path, dtype=torch.float32, attn_implementation="eager")
    except Exception as exc:
        raise ModelLoadError(f"cannot load {desc.path} to export it to ONNX: {exc}") from exc
    graph = _Graph(model.eval(), desc.kind, token_types)
    # Two rows, one of them padded, so that the traced attention mask path is the general one.
    ids = (torch.arange(16, dtype=torch.long).reshape(2, 8) + 1000) % int(desc.config.vocab_size)
    mask = torch.ones((2, 8), dtype=torch.long)
    mask[1, 5:] = 0
    example = (ids, mask, torch.zeros_like(ids)) if token_types else (ids, mask)
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes[output] = {0: "batch", 1: "sequence"} if output == "last_hidden_state" else {0: "batch"}
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's warnings about Python control flow are expected here
            torch.onnx.export(
                graph, example, str(target), input_names=names, output_names=[output], dynamic_axes=axes,
                opset_version=OPSET, do_constant_folding=True, dynamo=False,
            )  # fmt: skip
    except Exception as exc:
        raise ModelLoadError(f"cannot export {desc.config.model_type} model {desc.path} to ONNX: {exc}") from exc
    log.info("exported %s to ONNX in %.1fs", desc.model_id, time.perf_counter() - t0)
