"""TEI-compatible native routes: ``/embed``, ``/embed_sparse``, ``/similarity``, ``/info``, ``/health``,
``/metrics``."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from embedserve import __version__
from embedserve.core import tasks
from embedserve.core.capabilities import Capability
from embedserve.core.runtime import ModelRuntime
from embedserve.errors import UnhealthyError
from embedserve.http import answers
from embedserve.http.deadline import deadline
from embedserve.http.edge import context, endpoint
from embedserve.http.encodings import render_result
from embedserve.http.inference_api import parse_similarity
from embedserve.http.priority import request_priority
from embedserve.http.routes.common import compute, embed_work, read_body, resolve
from embedserve.http.schemas import parse_sparse, parse_tei_embed
from embedserve.http.web import check_answer_size, json_response, request_id


@endpoint("/embed", body=parse_tei_embed, answer=answers.EMBEDDINGS)
async def embed(request: Request) -> Response:
    """Dense embeddings: ``[[float, ...], ...]`` in input order (or as ``output_dtype`` and ``encoding_format`` ask,
    see :mod:`embedserve.http.encodings`)."""
    return await answer_embed(request, await read_body(request))


async def answer_embed(request: Request, body: dict[str, Any]) -> Response:
    """``/embed``'s answer to a body already read (``POST /`` shares it)."""
    parsed = parse_tei_embed(body)
    runtime = resolve(request, parsed.model)
    work = embed_work(request, runtime, parsed)
    result, headers = await compute(request, work, len(parsed.inputs), sum(map(len, parsed.inputs)))
    vectors = render_result(result, parsed.output_dtype, parsed.encoding_format, chunks=parsed.return_chunks)
    return json_response(vectors, headers=headers)


SPARSE_TERM_BYTES = 44
"""``{"index":2103,"value":1.3094232082366943},``: a SPLADE answer grows with the input (up to the vocabulary)."""
SPARSE_TOKEN_BYTES = 20
"""``,"token":"..."`` with a typical word piece."""


@endpoint("/embed_sparse", body=parse_sparse, answer=answers.SPARSE)
async def embed_sparse(request: Request) -> Response:
    """SPLADE vectors: ``[[{"index": int, "value": float, "token"?: str}, ...], ...]``, zeros dropped."""
    return await answer_sparse(request, await read_body(request))


async def answer_sparse(request: Request, body: dict[str, Any]) -> Response:
    """``/embed_sparse``'s answer to a body already read (``POST /`` shares it)."""
    parsed = parse_sparse(body)
    runtime = resolve(request, parsed.model)
    work = tasks.embed_sparse(
        runtime, parsed.inputs, truncate=parsed.truncate, direction=parsed.truncation_direction,
        prompt_name=parsed.prompt_name, top_k=parsed.top_k, request_id=request_id(request), deadline=deadline(request),
        priority=request_priority(request),
    )  # fmt: skip
    result, headers = await compute(request, work, len(parsed.inputs), sum(map(len, parsed.inputs)))
    terms_sent = sum(len(indices) for indices, _ in result.rows)
    check_answer_size(
        terms_sent * (SPARSE_TERM_BYTES + (SPARSE_TOKEN_BYTES if parsed.return_tokens else 0)),
        context(request).settings.server.max_response_bytes,
        f"{terms_sent:,} non-zero terms",
        "keep the heaviest terms with top_k, or send fewer inputs per request",
        param="top_k",
    )
    tokenizers, _ = runtime.require(Capability.SPARSE)
    vectors = []
    for indices, values in result.rows:
        terms: list[dict[str, Any]] = [
            {"index": int(i), "value": float(v)} for i, v in zip(indices.tolist(), values.tolist(), strict=True)
        ]
        if parsed.return_tokens:
            for term in terms:
                term["token"] = tokenizers.token_text(term["index"])
        vectors.append(terms)
    return json_response(vectors, headers=headers)


@endpoint("/similarity", body=parse_similarity, answer=answers.SIMILARITIES)
async def similarity(request: Request) -> Response:
    """``[float, ...]``: the cosine similarity of each of ``inputs.sentences`` to ``inputs.source_sentence``."""
    return await answer_similarity(request, await read_body(request))


async def answer_similarity(request: Request, body: dict[str, Any]) -> Response:
    """``/similarity``'s answer to a body already read (``POST /`` shares it)."""
    parsed = parse_similarity(body)
    runtime = resolve(request, parsed.model)
    texts = [parsed.source, *parsed.sentences]
    work = tasks.embed(
        runtime, texts, dimensions=None, normalize=True, truncate=parsed.truncate,
        direction=parsed.truncation_direction, prompt_name=parsed.prompt_name, param="inputs.sentences",
        request_id=request_id(request), deadline=deadline(request), priority=request_priority(request),
    )  # fmt: skip
    result, headers = await compute(request, work, len(texts), sum(map(len, texts)))
    vectors = np.asarray(result.vectors, dtype=np.float32)
    return json_response((vectors[1:] @ vectors[0]).tolist(), headers=headers)


@endpoint("/health", guard="open", answer=answers.HEALTH, errors=(UnhealthyError,))
async def health(request: Request) -> Response:
    """200 when every model is ready; 503 while loading, draining, or after a backend died."""
    registry = context(request).registry
    if registry.healthy:
        return json_response({"status": "ready", "models": registry.states()})
    states = ", ".join(f"{name} {state}" for name, state in registry.states().items())
    raise UnhealthyError(f"not ready: {states}")


@endpoint("/info", answer=answers.INFO)
async def info(request: Request) -> Response:
    """The default model and every limit, TEI's ``/info`` shape with embedserve's extras."""
    ctx = context(request)
    body = describe(ctx.registry.default)
    body["version"] = __version__
    # TEI's build facts: the commit the server was built from and the image's label, set in the Dockerfiles.
    body["sha"] = os.environ.get("EMBEDSERVE_GIT_SHA") or None
    body["docker_label"] = os.environ.get("EMBEDSERVE_DOCKER_LABEL") or None
    body["models"] = [describe(runtime) for runtime in ctx.registry.runtimes.values()]
    return json_response(body)


def describe(runtime: ModelRuntime) -> dict[str, Any]:
    """One model's description: identity, numerics, limits and state."""
    spec, model = runtime.spec, runtime.info
    return {
        "model_id": spec.model_id,
        "model_sha": model.revision if model else spec.revision,
        "served_model_name": runtime.name,
        "model_dtype": model.dtype if model else spec.dtype,
        "engine": _engine(runtime),
        "model_device": model.device if model else spec.device,
        "kind": model.kind if model else spec.kind,
        "model_type": _model_type(runtime),
        "dimensions": model.dimensions if model else None,
        "max_input_length": runtime.max_input_length or None,
        "prompts": model.prompts if model else {},
        "max_concurrent_requests": spec.max_concurrent_requests,
        "priority_reserve": spec.priority_reserve,
        "low_priority_share": spec.low_priority_share,
        "lane_yield": runtime.lane_yield,
        "express_lane": runtime.express_lane,
        "max_batch_tokens": spec.max_batch_tokens,
        "max_batch_requests": runtime.max_batch_requests,
        "max_client_batch_size": spec.max_client_batch_size,
        "auto_truncate": spec.auto_truncate,
        "chunk_long_inputs": spec.chunk_long_inputs,
        "chunk_overlap": spec.chunk_overlap,
        "tokenization_workers": spec.resolved_tokenization_workers(),
        "batch_overhead_tokens": round(runtime.batch_overhead_tokens),
        "state": runtime.state.value,
        "error": runtime.error,
    }


@endpoint("/metrics", guard="metrics", answer=answers.METRICS)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition of every collector (see embedserve.metrics)."""
    return Response(context(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _engine(runtime: ModelRuntime) -> dict[str, Any]:
    """How the model runs: the engine, its quantization, whether torch runs a trace, how many passes compute at once,
    and the agreement of a reduced precision with float32."""
    model = runtime.info
    if model is None:
        return {"name": runtime.spec.engine, "quantize": runtime.spec.quantize, "graph": None, "passes": None,
                "agreement": None}  # fmt: skip
    agreement = model.agreement
    return {
        "name": model.engine,
        "quantize": model.quantize,
        "graph": model.graph,
        "passes": model.passes,
        "agreement": None
        if agreement is None
        else {
            "compared": f"{agreement.form} vs float32",
            "mean_cosine": round(agreement.mean_cosine, 6),
            "min_cosine": round(agreement.min_cosine, 6),
            "texts": agreement.texts,
        },
    }


def _model_type(runtime: ModelRuntime) -> dict[str, Any]:
    """TEI's ``model_type``: embedding (with its pooling), reranker or classifier (with its labels)."""
    model = runtime.info
    if model is None:
        return {}
    if model.kind in ("rerank", "classify"):
        labels = {"id2label": {str(i): label for i, label in enumerate(model.labels)},
                  "label2id": {label: i for i, label in enumerate(model.labels)}}  # fmt: skip
        return {"reranker" if model.kind == "rerank" else "classifier": labels}
    return {"embedding": {"pooling": model.pooling}}


ROUTES = [
    Route("/embed", embed, methods=["POST"]),
    Route("/embed_sparse", embed_sparse, methods=["POST"]),
    Route("/similarity", similarity, methods=["POST"]),
    Route("/health", health, methods=["GET"]),
    Route("/info", info, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
