"""Which fp32 ONNX graph a model runs from: the one the model ships, or one exported once and cached.

A model repository may ship ``onnx/model.onnx`` (or ``model.onnx``) as sentence-transformers and TEI expect; it is
used when it takes only inputs embedserve provides and returns token states (``last_hidden_state`` /
``token_embeddings``) or, for scoring models, ``logits``. SPLADE models are always exported, so that pooling runs
inside the graph. Otherwise the transformers weights are exported (:mod:`.export`) before the server reports ready.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import onnx

from embedserve import logs
from embedserve.engines.cache import ArtifactCache, content_key, file_sha256
from embedserve.engines.describe import ModelDescription
from embedserve.engines.onnx.export import FORMAT_VERSION, OUTPUT_NAMES

log = logging.getLogger("embedserve.engines.onnx")

SHIPPED = ("onnx/model.onnx", "model.onnx")
_KNOWN_INPUTS = {"input_ids", "attention_mask", "token_type_ids"}
_STATE_OUTPUTS = ("last_hidden_state", "token_embeddings")


@dataclass(frozen=True)
class Graph:
    """An fp32 graph on disk: where it is, what its output is, and where files derived from it are cached."""

    path: Path
    output: str
    """The output embedserve reads."""
    shipped: bool
    cache: ArtifactCache


def fp32_graph(desc: ModelDescription, cache_root: Path) -> Graph:
    """The model's fp32 graph: shipped if usable, else exported into the cache (keyed by the model's content)."""
    for relative in SHIPPED:
        candidate = desc.path / relative
        if desc.kind != "sparse" and candidate.is_file():
            output = _usable_output(candidate, desc.kind)
            if output is not None:
                cache = ArtifactCache(cache_root, content_key(desc.path, desc.kind, "shipped", file_sha256(candidate)))
                log.info("using the ONNX graph the model ships: %s", relative)
                return Graph(candidate, output, True, cache)
            log.warning("%s does not fit embedserve (inputs or outputs); exporting the model instead", relative)
    cache = ArtifactCache(cache_root, content_key(desc.path, desc.kind, "export", FORMAT_VERSION))

    def build(target: Path) -> None:
        from embedserve.engines.onnx.export import export  # torch is needed only to export

        with logs.step(log, "exporting %s to ONNX (once; cached in %s)", desc.model_id, cache.dir):
            export(desc, target)

    return Graph(cache.get("model.onnx", build, "ONNX graph"), OUTPUT_NAMES[desc.kind], False, cache)


def _usable_output(path: Path, kind: str) -> str | None:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # damaged or not an ONNX file: the weights are still there to export
        log.warning("cannot read %s (%s)", path, exc)
        return None
    inputs = {value.name for value in model.graph.input}
    outputs = [value.name for value in model.graph.output]
    if not inputs <= _KNOWN_INPUTS or "input_ids" not in inputs:
        return None
    wanted = ("logits",) if kind in ("rerank", "classify") else _STATE_OUTPUTS
    return next((name for name in wanted if name in outputs), None)
