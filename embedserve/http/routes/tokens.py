"""``/tokenize`` and ``/decode``, for every model: the tokenizer workers answer them directly, without batching."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from embedserve.core import tasks
from embedserve.http.edge import endpoint, facts
from embedserve.http.routes.common import read_body, resolve
from embedserve.http.schemas import parse_decode, parse_tokenize
from embedserve.http.web import json_response, until_disconnect


@endpoint("/tokenize")
async def tokenize(request: Request) -> Response:
    """``[[{"id", "text", "special", "start", "stop"}, ...], ...]``; offsets are character positions in the input."""
    parsed = parse_tokenize(await read_body(request))
    runtime = resolve(request, parsed.model)
    work = tasks.tokenize(
        runtime, parsed.inputs, add_special_tokens=parsed.add_special_tokens, prompt_name=parsed.prompt_name
    )
    tokens = await until_disconnect(request.receive, work)
    noted = facts(request)
    noted.inputs, noted.tokens = len(parsed.inputs), sum(map(len, tokens))
    body = [
        [{"id": t.id, "text": t.text, "special": t.special, "start": t.start, "stop": t.stop} for t in row]
        for row in tokens
    ]
    return json_response(body)


@endpoint("/decode")
async def decode(request: Request) -> Response:
    """``["text", ...]``, one string per list of ids."""
    parsed = parse_decode(await read_body(request))
    runtime = resolve(request, parsed.model)
    texts = await until_disconnect(
        request.receive, tasks.decode(runtime, parsed.ids, skip_special_tokens=parsed.skip_special_tokens)
    )
    facts(request).inputs = len(parsed.ids)
    return json_response(texts)


ROUTES = [
    Route("/tokenize", tokenize, methods=["POST"]),
    Route("/decode", decode, methods=["POST"]),
]
