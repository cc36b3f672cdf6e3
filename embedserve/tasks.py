"""What each kind of request computes, on top of the shared pipeline (:meth:`ModelRuntime.run`).

Dense embeddings (Matryoshka ``dimensions``, then L2 normalization), sparse SPLADE vectors (``top_k``), scores of
text pairs or single texts (sigmoid or softmax unless raw), and the pool-only tokenize and decode. Core layer: no
starlette, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from embedserve.errors import ValidationError
from embedserve.runtime import ModelRuntime, Timings
from embedserve.schemas import Direction, EmbedRequest, SparseRequest
from embedserve.tokenization import Token


@dataclass(frozen=True, slots=True)
class EmbedResult:
    """Dense vectors in input order."""

    vectors: np.ndarray
    prompt_tokens: int
    timings: Timings
    batch_links: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class SparseResult:
    """Per input, the non-zero terms: (indices, values), indices ascending."""

    rows: list[tuple[np.ndarray, np.ndarray]]
    prompt_tokens: int
    timings: Timings
    batch_links: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """Per input (or pair), one score per label: activated, or raw logits."""

    scores: np.ndarray
    labels: tuple[str, ...]
    prompt_tokens: int
    timings: Timings
    batch_links: tuple[Any, ...] = ()


async def embed(runtime: ModelRuntime, request: EmbedRequest, route: str, request_id: str = "") -> EmbedResult:
    """Dense embeddings for ``/embed`` and ``/v1/embeddings``."""
    _, info = runtime.require(route)
    runtime.check_batch_size(len(request.inputs), request.input_param)
    if request.dimensions is not None and request.dimensions > info.dim:
        raise ValidationError(
            f"`dimensions` {request.dimensions} is larger than the model's {info.dim} dimensions", param="dimensions"
        )
    texts = runtime.texts(request.inputs, request.prompt_name)
    truncate = runtime.truncate(request.truncate)

    def encode(pool: Any) -> Any:
        return pool.encode(texts, truncate=truncate, direction=request.truncation_direction, param=request.input_param)

    run = await runtime.run(len(texts), encode, request_id)
    vectors = _postprocess(np.stack(run.rows), request.dimensions, request.normalize)
    return EmbedResult(vectors, run.tokens, run.timings, run.batch_links)


def _postprocess(vectors: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Matryoshka truncation first, then L2 normalization, so truncated vectors are unit length too."""
    if dimensions is not None:
        vectors = vectors[:, :dimensions]
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(vectors, dtype=np.float32)


async def embed_sparse(runtime: ModelRuntime, request: SparseRequest, request_id: str = "") -> SparseResult:
    """SPLADE vectors for ``/embed_sparse``; ``top_k`` keeps the heaviest terms."""
    runtime.require("/embed_sparse")
    runtime.check_batch_size(len(request.inputs), "inputs")
    texts = runtime.texts(request.inputs, request.prompt_name)
    truncate = runtime.truncate(request.truncate)

    def encode(pool: Any) -> Any:
        return pool.encode(texts, truncate=truncate, direction=request.truncation_direction, param="inputs")

    run = await runtime.run(len(texts), encode, request_id)
    rows = [_top(indices, values, request.top_k) for indices, values in run.rows]
    return SparseResult(rows, run.tokens, run.timings, run.batch_links)


def _top(indices: np.ndarray, values: np.ndarray, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    if k is None or len(values) <= k:
        return indices, values
    keep = np.sort(np.argpartition(values, -k)[-k:])  # the k largest, back in index order
    return indices[keep], values[keep]


async def score(
    runtime: ModelRuntime,
    route: str,
    pairs: list[tuple[str, str | None]],
    *,
    truncate: bool | None,
    direction: Direction,
    raw: bool,
    param: str,
    request_id: str = "",
) -> ScoreResult:
    """Scores of (query, document) pairs or single texts for ``/rerank``, ``/v1/rerank`` and ``/predict``.

    Not raw: the activation the model was saved with (sentence-transformers), else a sigmoid for one label (a
    relevance in 0..1) and a softmax over several."""
    _, info = runtime.require(route)
    runtime.check_batch_size(len(pairs), param)
    cut = runtime.truncate(truncate)

    def encode(pool: Any) -> Any:
        return pool.encode_pairs(pairs, truncate=cut, direction=direction, param=param)

    run = await runtime.run(len(pairs), encode, request_id)
    logits = np.stack(run.rows).astype(np.float32)
    activation = "none" if raw else info.activation
    if activation == "auto":
        activation = "sigmoid" if logits.shape[1] == 1 else "softmax"
    scores: np.ndarray
    if activation == "sigmoid":
        scores = 1.0 / (1.0 + np.exp(-logits))
    elif activation == "softmax":
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        scores = shifted / shifted.sum(axis=1, keepdims=True)
    else:
        scores = logits
    return ScoreResult(scores, info.labels, run.tokens, run.timings, run.batch_links)


async def tokenize(
    runtime: ModelRuntime, inputs: list[str], *, add_special_tokens: bool, prompt_name: str | None
) -> list[list[Token]]:
    """Tokens with character offsets, for ``/tokenize`` (on the pool; no batching)."""
    tokenizers, _ = runtime.require("/tokenize")
    runtime.check_batch_size(len(inputs), "inputs")
    return await tokenizers.tokens(runtime.texts(inputs, prompt_name), add_special_tokens=add_special_tokens)


async def decode(runtime: ModelRuntime, ids: list[list[int]], *, skip_special_tokens: bool) -> list[str]:
    """Text for lists of token ids, for ``/decode`` (on the pool; no batching)."""
    tokenizers, _ = runtime.require("/decode")
    runtime.check_batch_size(len(ids), "ids")
    return await tokenizers.decode(ids, skip_special_tokens=skip_special_tokens)
