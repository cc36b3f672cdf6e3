"""The steps every embedding route shares: read and parse the body, pick the model, run the pipeline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from embedserve.edge import context, facts
from embedserve.runtime import EmbedResult, ModelRuntime
from embedserve.schemas import EmbedRequest, decode_json_object
from embedserve.web import read_json_body, request_id, timing_headers, until_disconnect


async def run_embed(
    request: Request, parse: Callable[[dict[str, Any]], EmbedRequest]
) -> tuple[EmbedRequest, ModelRuntime, EmbedResult, dict[str, str]]:
    """Body -> request -> model -> vectors, plus the response headers; notes the facts for the edge."""
    ctx = context(request)
    noted = facts(request)
    body = decode_json_object(await read_json_body(request, ctx.settings.server.payload_limit))
    parsed = parse(body)
    runtime = ctx.registry.resolve(parsed.model)
    noted.model, noted.inputs = runtime.name, len(parsed.inputs)
    rid = request_id(request)
    result = await until_disconnect(request.receive, runtime.embed(parsed, rid))
    noted.tokens, noted.timings, noted.batch_links = result.prompt_tokens, result.timings, result.batch_links
    headers = timing_headers(rid, result.timings, result.prompt_tokens, sum(map(len, parsed.inputs)))
    return parsed, runtime, result, headers
