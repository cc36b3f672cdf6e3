"""OpenAI-compatible routes: ``/v1/embeddings`` (and the bare ``/embeddings`` alias), ``/v1/models``."""

from __future__ import annotations

import time
from typing import Any

from starlette.convertors import PathConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from embedserve.core.runtime import ModelRuntime
from embedserve.http import answers
from embedserve.http.edge import context, endpoint
from embedserve.http.encodings import render_result
from embedserve.http.routes.common import compute, embed_work, read_body, resolve
from embedserve.http.schemas import parse_openai_embeddings
from embedserve.http.web import json_response

_STARTED = int(time.time())


class ModelNameConvertor(PathConvertor):
    """A model name in a path: anything, slashes (``BAAI/bge-small``) and line breaks included, so that every name
    reaches the handler and an unknown one is ``model_not_found``, not an unmatched route."""

    regex = "(?s:.*)"


register_url_convertor("model_name", ModelNameConvertor())


@endpoint("/v1/embeddings", body=parse_openai_embeddings, answer=answers.OPENAI_EMBEDDINGS)
async def embeddings(request: Request) -> Response:
    """``{"object": "list", "data": [...], "model": ..., "usage": ...}``: each vector a JSON list or base64 bytes,
    of float32 unless ``output_dtype`` asks for float16 or a quantized form."""
    parsed = parse_openai_embeddings(await read_body(request))
    runtime = resolve(request, parsed.model)
    work = embed_work(request, runtime, parsed)
    result, headers = await compute(request, work, len(parsed.inputs), sum(map(len, parsed.inputs)))
    vectors = render_result(result, parsed.output_dtype, parsed.encoding_format, chunks=parsed.return_chunks)
    data: list[dict[str, Any]] = [
        {"object": "embedding", "embedding": row, "index": i} for i, row in enumerate(vectors)
    ]
    body = {
        "object": "list",
        "data": data,
        "model": runtime.name,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
    return json_response(body, headers=headers)


@endpoint("/v1/models", answer=answers.OPENAI_MODELS)
async def list_models(request: Request) -> Response:
    """Every served model in OpenAI's list shape, with embedserve's extras."""
    registry = context(request).registry
    return json_response({"object": "list", "data": [_model(r) for r in registry.runtimes.values()]})


@endpoint("/v1/models/{model}", answer=answers.OPENAI_MODEL)
async def get_model(request: Request) -> Response:
    """One served model, or 404 in OpenAI's shape."""
    runtime = context(request).registry.resolve(request.path_params["model"])
    return json_response(_model(runtime))


def _model(runtime: ModelRuntime) -> dict[str, Any]:
    info = runtime.info
    return {
        "id": runtime.name,
        "object": "model",
        "created": _STARTED,
        "owned_by": "embedserve",
        "kind": info.kind if info else runtime.spec.kind,
        "dimensions": info.dimensions if info else None,
        "max_input_length": runtime.max_input_length or None,
        "state": runtime.state.value,
    }


ROUTES = [
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/embeddings", embeddings, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:model_name}", get_model, methods=["GET"]),
]
