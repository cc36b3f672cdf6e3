"""Long inputs in chunks: an input over the model's limit is cut on token boundaries into overlapping chunks (see
:meth:`TokenizerPool.encode_chunks`), every chunk is one entry of the normal batches (the chunks of one input may ride
different batches), and the chunk vectors are pooled back into one vector per input.

Pooling: each chunk's vector (after ``dimensions``) is L2-normalized, the input's vector is their mean weighted by
each chunk's token count, and that mean is normalized again. With ``normalize`` false nothing is normalized: the
weighted mean of the raw chunk vectors. An input within the limit is one chunk, so its vector is what the plain
pipeline gives. A prompt starts every chunk. Usage counts every token computed: the repeated overlap and each
chunk's special tokens and prompt included.

The chunks are known only after tokenizing, so a chunked request is tokenized before admission (on the pool), and
then admitted with one slot per chunk. It does not go through the embedding cache. Core layer: plain values only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedserve.core.capabilities import Capability
from embedserve.core.priority import Priority
from embedserve.core.results import RunResult
from embedserve.core.runtime import ModelRuntime
from embedserve.core.tasks import EmbedResult
from embedserve.core.tokenization import Encoded, TokenizerPool
from embedserve.errors import ValidationError


@dataclass(frozen=True, slots=True)
class ChunkedResult(EmbedResult):
    """Pooled vectors in input order (``vectors``) and, per input, the vectors of its chunks in text order."""

    chunks: tuple[np.ndarray, ...] = ()


def enabled(runtime: ModelRuntime, requested: bool | None) -> bool:
    """A request's chunking choice, defaulting to the model's --chunk-long-inputs."""
    return runtime.spec.chunk_long_inputs if requested is None else requested


async def embed_chunked(
    runtime: ModelRuntime,
    inputs: list[str],
    *,
    dimensions: int | None,
    normalize: bool,
    prompt_name: str | None,
    param: str = "inputs",
    request_id: str = "",
    deadline: float | None = None,
    priority: Priority = Priority.NORMAL,
) -> ChunkedResult:
    """Dense embeddings (:attr:`Capability.EMBED`) of inputs of any length, pooled from their chunks."""
    tokenizers, info = runtime.require(Capability.EMBED)
    runtime.check_batch_size(len(inputs), param)
    runtime.check_dimensions(dimensions, info.dim)
    texts = runtime.texts(inputs, prompt_name)
    # The prompt (the request's or the model's default, lower-cased with the text where the model says so) starts
    # every chunk: the pool gets it apart from the texts.
    prefix = runtime.texts([""], prompt_name)[0]
    if prefix and all(text.startswith(prefix) for text in texts):
        texts = [text[len(prefix) :] for text in texts]
    else:
        prefix = ""
    pieces = await tokenizers.encode_chunks(texts, overlap=runtime.spec.chunk_overlap, prefix=prefix, param=param)
    flat = [ids for chunks in pieces for ids in chunks]
    if len(flat) > runtime.spec.max_concurrent_requests:
        raise ValidationError(
            f"the inputs make {len(flat)} chunks; one request may make at most --max-concurrent-requests "
            f"({runtime.spec.max_concurrent_requests}). Send fewer or shorter inputs",
            param=param,
        )
    # Admission estimates each entry's tokens from its characters: an input's characters, shared by its chunks.
    characters = [(len(prefix) + len(text)) * len(ids) // sum(map(len, chunks))
                  for text, chunks in zip(texts, pieces, strict=True) for ids in chunks]  # fmt: skip

    async def encode(pool: TokenizerPool, inline: bool) -> Encoded:
        return Encoded(flat)

    run: RunResult[np.ndarray] = await runtime.run(characters, encode, request_id, deadline, priority=priority)
    rows = np.stack(run.rows).astype(np.float32)
    if dimensions is not None:
        rows = rows[:, :dimensions]
    if normalize:
        rows = _unit(rows)
    weights = np.array([len(ids) for ids in flat], dtype=np.float32)
    bounds = np.cumsum([0, *map(len, pieces)])
    chunks = tuple(np.ascontiguousarray(rows[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    pooled = np.stack([
        np.average(rows[a:b], axis=0, weights=weights[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]).astype(np.float32)  # fmt: skip
    vectors = np.ascontiguousarray(_unit(pooled) if normalize else pooled)
    return ChunkedResult(vectors, run.tokens, run.timings, run.batch_links, chunks=chunks)


def _unit(vectors: np.ndarray) -> np.ndarray:
    unit: np.ndarray = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return unit
