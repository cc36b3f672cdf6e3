"""TEI-compatible native routes: ``/embed``, ``/info``, ``/health``, ``/metrics``."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from embedserve import __version__
from embedserve.edge import context, endpoint
from embedserve.errors import UnhealthyError
from embedserve.routes.common import run_embed
from embedserve.runtime import ModelRuntime
from embedserve.schemas import parse_tei_embed
from embedserve.web import json_response


@endpoint("/embed")
async def embed(request: Request) -> Response:
    """Dense embeddings: ``[[float, ...], ...]`` in input order."""
    _, _, result, headers = await run_embed(request, parse_tei_embed)
    return json_response(result.vectors, headers=headers)


@endpoint("/health", guard="open")
async def health(request: Request) -> Response:
    """200 when every model is ready; 503 while loading, draining, or after a backend died."""
    registry = context(request).registry
    if registry.healthy:
        return json_response({"status": "ready"})
    raise UnhealthyError(f"not ready: {registry.state}")


@endpoint("/info")
async def info(request: Request) -> Response:
    """The default model and every limit, TEI's ``/info`` shape with embedserve's extras."""
    ctx = context(request)
    body = describe(ctx.registry.default)
    body["version"] = __version__
    body["models"] = [describe(runtime) for runtime in ctx.registry.runtimes.values()]
    return json_response(body)


def describe(runtime: ModelRuntime) -> dict[str, Any]:
    """One model's description: identity, numerics, limits and state."""
    spec, model = runtime.spec, runtime.info
    return {
        "model_id": spec.model_id,
        "model_sha": spec.revision,
        "served_model_name": runtime.name,
        "model_dtype": model.dtype if model else spec.dtype,
        "model_device": model.device if model else spec.device,
        "model_type": {"embedding": {"pooling": model.pooling if model else spec.pooling}},
        "dimensions": model.dim if model else None,
        "max_input_length": runtime.max_input_length or None,
        "prompts": model.prompts if model else {},
        "max_concurrent_requests": spec.max_concurrent_requests,
        "max_batch_tokens": spec.max_batch_tokens,
        "max_batch_requests": spec.max_batch_requests,
        "max_client_batch_size": spec.max_client_batch_size,
        "auto_truncate": spec.auto_truncate,
        "tokenization_workers": spec.resolved_tokenization_workers(),
        "batch_overhead_tokens": round(runtime.batch_overhead_tokens),
        "state": runtime.state.value,
        "error": runtime.error,
    }


@endpoint("/metrics", guard="metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text exposition of every collector (see embedserve.metrics)."""
    return Response(context(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


ROUTES = [
    Route("/embed", embed, methods=["POST"]),
    Route("/health", health, methods=["GET"]),
    Route("/info", info, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
