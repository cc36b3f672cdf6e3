"""The steps every embedding route shares: read and parse the body, pick the model, run the pipeline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from embedserve.registry import Registry
from embedserve.runtime import EmbedResult, ModelRuntime
from embedserve.schemas import EmbedRequest, decode_json_object
from embedserve.settings import Settings
from embedserve.web import read_json_body, request_id, timing_headers, until_disconnect


@dataclass(frozen=True)
class AppContext:
    """What handlers need, stored on ``app.state.ctx``."""

    settings: Settings
    registry: Registry


def context(request: Request) -> AppContext:
    """The application's context."""
    ctx: AppContext = request.app.state.ctx
    return ctx


async def run_embed(
    request: Request, parse: Callable[[dict[str, Any]], EmbedRequest]
) -> tuple[EmbedRequest, ModelRuntime, EmbedResult, dict[str, str]]:
    """Body -> request -> model -> vectors, plus the response headers."""
    ctx = context(request)
    body = decode_json_object(await read_json_body(request, ctx.settings.server.payload_limit))
    parsed = parse(body)
    runtime = ctx.registry.resolve(parsed.model)
    rid = request_id(request)
    result = await until_disconnect(request.receive, runtime.embed(parsed, rid))
    headers = timing_headers(rid, result.timings, result.prompt_tokens, sum(map(len, parsed.inputs)))
    return parsed, runtime, result, headers
