"""What each capability computes, on top of the shared pipeline (:meth:`ModelRuntime.run`).

Dense embeddings (Matryoshka ``dimensions``, then L2 normalization), sparse SPLADE vectors (``top_k``), scores of
text pairs or single texts (sigmoid or softmax unless raw), and the pool-only tokenize and decode. Core layer: no
starlette, no torch; arguments are plain values, never the HTTP layer's request types.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedserve.core.cache import Entry, input_key
from embedserve.core.capabilities import Capability
from embedserve.core.embedding_cache import EmbeddingCache
from embedserve.core.priority import Priority
from embedserve.core.results import RunResult, Timings
from embedserve.core.runtime import ModelRuntime
from embedserve.core.tokenization import Direction, Encoded, Token, TokenizerPool
from embedserve.errors import ValidationError


@dataclass(frozen=True, slots=True)
class EmbedResult:
    """Dense vectors in input order."""

    vectors: np.ndarray
    prompt_tokens: int
    timings: Timings
    batch_links: tuple[Any, ...] = ()
    cache_hits: int = 0
    """Inputs answered without computing them for this request (see :mod:`embedserve.core.embedding_cache`)."""


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


async def embed(
    runtime: ModelRuntime,
    inputs: list[str],
    *,
    dimensions: int | None,
    normalize: bool,
    truncate: bool | None,
    direction: Direction,
    prompt_name: str | None,
    param: str = "inputs",
    request_id: str = "",
    deadline: float | None = None,
    priority: Priority = Priority.NORMAL,
) -> EmbedResult:
    """Dense embeddings (:attr:`Capability.EMBED`). ``param`` names the inputs in error messages; ``deadline``
    (``time.perf_counter()`` time) is when the client stops wanting the answer; ``priority`` is the lane it is
    admitted and batched in (every capability below takes the same three)."""
    _, info = runtime.require(Capability.EMBED)
    runtime.check_batch_size(len(inputs), param)
    runtime.check_dimensions(dimensions, info.dim)
    texts = runtime.texts(inputs, prompt_name)
    cut = runtime.truncate(truncate)
    if runtime.cache is not None:
        cached = await _embed_cached(
            runtime, runtime.cache, texts, cut, direction, param, request_id, deadline, priority
        )
        vectors = _postprocess(cached.vectors, dimensions, normalize)
        return EmbedResult(vectors, cached.prompt_tokens, cached.timings, cached.batch_links, cached.cache_hits)

    async def encode(pool: TokenizerPool, inline: bool) -> Encoded:
        return await pool.encode(texts, truncate=cut, direction=direction, param=param, inline=inline)

    run: RunResult[np.ndarray] = await runtime.run(
        list(map(len, texts)), encode, request_id, deadline, priority=priority
    )
    vectors = _postprocess(np.stack(run.rows), dimensions, normalize)
    return EmbedResult(vectors, run.tokens, run.timings, run.batch_links)


async def _embed_cached(
    runtime: ModelRuntime, cache: EmbeddingCache, texts: list[str], truncate: bool, direction: Direction, param: str,
    request_id: str, deadline: float | None, priority: Priority,
) -> EmbedResult:  # fmt: skip
    """The model's full-size, unnormalized vectors through the cache: only the inputs no cache holds run the
    pipeline. Usage counts every input's tokens, cached ones from the token count stored with their entry."""
    t0 = time.perf_counter()
    keys = [input_key(runtime.cache_scope, text, truncate=truncate, direction=direction) for text in texts]
    runs: list[RunResult[np.ndarray]] = []

    async def compute(indices: list[int]) -> list[Entry]:
        chosen = [texts[i] for i in indices]
        counts: list[int] = []

        async def encode(pool: TokenizerPool, inline: bool) -> Encoded:
            encoded = await pool.encode(chosen, truncate=truncate, direction=direction, param=param, inline=inline)
            counts.extend(map(len, encoded.ids))
            return encoded

        try:
            run: RunResult[np.ndarray] = await runtime.run(
                list(map(len, chosen)), encode, request_id, deadline, priority=priority
            )
        except ValidationError as exc:
            raise _renumbered(exc, param, indices) from None
        runs.append(run)
        return [Entry.of(row, tokens) for row, tokens in zip(run.rows, counts, strict=True)]

    found = await cache.lookup(runtime.name, keys, compute)
    if runs:
        timings = runs[0].timings
    else:  # every input was cached: no tokenizing, no queue, no forward pass
        t1 = time.perf_counter()
        timings = Timings(started=t0, enqueued=t0, first_batch=t0, computed=t0, finished=t1, inference=0.0)
    return EmbedResult(
        np.stack([entry.vector for entry in found.entries]),
        sum(entry.tokens for entry in found.entries),
        timings,
        tuple(link for run in runs for link in run.batch_links),
        found.hits,
    )


def _renumbered(exc: ValidationError, param: str, indices: list[int]) -> ValidationError:
    """The tokenizer names an input by its index among those computed; name it by its index in the request."""
    message = re.sub(rf"`{re.escape(param)}\[(\d+)\]`", lambda m: f"`{param}[{indices[int(m.group(1))]}]`", exc.message)
    return type(exc)(message, param=exc.param, headers=exc.headers)


def _postprocess(vectors: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Matryoshka truncation first, then L2 normalization, so truncated vectors are unit length too."""
    if dimensions is not None:
        vectors = vectors[:, :dimensions]
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(vectors, dtype=np.float32)


async def embed_sparse(
    runtime: ModelRuntime,
    inputs: list[str],
    *,
    truncate: bool | None,
    direction: Direction,
    prompt_name: str | None,
    top_k: int | None,
    param: str = "inputs",
    request_id: str = "",
    deadline: float | None = None,
    priority: Priority = Priority.NORMAL,
) -> SparseResult:
    """SPLADE vectors (:attr:`Capability.SPARSE`); ``top_k`` keeps the heaviest terms."""
    runtime.require(Capability.SPARSE)
    runtime.check_batch_size(len(inputs), param)
    texts = runtime.texts(inputs, prompt_name)
    cut = runtime.truncate(truncate)

    async def encode(pool: TokenizerPool, inline: bool) -> Encoded:
        return await pool.encode(texts, truncate=cut, direction=direction, param=param, inline=inline)

    run: RunResult[tuple[np.ndarray, np.ndarray]] = await runtime.run(
        list(map(len, texts)), encode, request_id, deadline, priority=priority
    )
    rows = [_top(indices, values, top_k) for indices, values in run.rows]
    return SparseResult(rows, run.tokens, run.timings, run.batch_links)


def _top(indices: np.ndarray, values: np.ndarray, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    if k is None or len(values) <= k:
        return indices, values
    keep = np.sort(np.argpartition(values, -k)[-k:])  # the k largest, back in index order
    return indices[keep], values[keep]


async def score(
    runtime: ModelRuntime,
    capability: Capability,
    pairs: list[tuple[str, str | None]],
    *,
    truncate: bool | None,
    direction: Direction,
    raw: bool,
    param: str,
    request_id: str = "",
    deadline: float | None = None,
    activation: str | None = None,
    priority: Priority = Priority.NORMAL,
) -> ScoreResult:
    """Scores of (query, document) pairs (:attr:`Capability.RERANK`) or of single texts and pairs
    (:attr:`Capability.CLASSIFY`).

    Not raw: ``activation`` (sigmoid, softmax or none) when the request names one, else the activation the model was
    saved with (sentence-transformers), else a sigmoid for one label (a relevance in 0..1) and a softmax over
    several."""
    _, info = runtime.require(capability)
    runtime.check_batch_size(len(pairs), param)
    cut = runtime.truncate(truncate)

    async def encode(pool: TokenizerPool, inline: bool) -> Encoded:
        return await pool.encode_pairs(pairs, truncate=cut, direction=direction, param=param, inline=inline)

    characters = [len(first) + len(second or "") for first, second in pairs]
    run: RunResult[np.ndarray] = await runtime.run(characters, encode, request_id, deadline, priority=priority)
    logits = np.stack(run.rows).astype(np.float32)
    activation = "none" if raw else activation or info.activation
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
    """Tokens with character offsets (:attr:`Capability.TOKENIZE`; on the pool, no batching)."""
    tokenizers, _ = runtime.require(Capability.TOKENIZE)
    runtime.check_batch_size(len(inputs), "inputs")
    return await tokenizers.tokens(runtime.texts(inputs, prompt_name), add_special_tokens=add_special_tokens)


async def decode(runtime: ModelRuntime, ids: list[list[int]], *, skip_special_tokens: bool) -> list[str]:
    """Text for lists of token ids (:attr:`Capability.TOKENIZE`; on the pool, no batching)."""
    tokenizers, _ = runtime.require(Capability.TOKENIZE)
    runtime.check_batch_size(len(ids), "ids")
    return await tokenizers.decode(ids, skip_special_tokens=skip_special_tokens)
