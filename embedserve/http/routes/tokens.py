"""``/tokenize`` and ``/decode``, for every model: the tokenizer workers answer them directly, without batching.

Both answers grow with what the client sends (a token is a JSON object of about 60 bytes; an id can decode to a
long word), so each is estimated before it is built and refused over --max-response-bytes.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from embedserve.core import tasks
from embedserve.http import answers
from embedserve.http.edge import context, endpoint, facts
from embedserve.http.routes.common import read_body, resolve
from embedserve.http.schemas import parse_decode, parse_tokenize
from embedserve.http.web import check_answer_size, json_response, until_disconnect

TOKEN_JSON_BYTES = 60
"""``{"id":7592,"text":"","special":false,"start":0,"stop":5},`` without the token's text."""
TOKENIZE_ADVICE = "tokenize fewer or shorter inputs per request"


@endpoint("/tokenize", body=parse_tokenize, answer=answers.TOKENS)
async def tokenize(request: Request) -> Response:
    """``[[{"id", "text", "special", "start", "stop"}, ...], ...]``; offsets are character positions in the input."""
    parsed = parse_tokenize(await read_body(request, batched=False))
    runtime = resolve(request, parsed.model)
    limit = context(request).settings.server.max_response_bytes
    # Before tokenizing (half a second per MB of text): every whitespace-separated word is at least one token for
    # WordPiece, byte-level BPE and SentencePiece alike, so this lower bound refuses a huge answer at no cost.
    words = sum(len(text.split()) for text in parsed.inputs)
    check_answer_size((TOKEN_JSON_BYTES + 1) * words, limit, f"at least {words:,} tokens, one per word",
                      TOKENIZE_ADVICE, param="inputs")  # fmt: skip
    work = tasks.tokenize(
        runtime, parsed.inputs, add_special_tokens=parsed.add_special_tokens, prompt_name=parsed.prompt_name
    )
    tokens = await until_disconnect(request.receive, work)
    noted = facts(request)
    noted.inputs, noted.tokens = len(parsed.inputs), sum(map(len, tokens))
    answer = sum(TOKEN_JSON_BYTES + len(t.text) for row in tokens for t in row)
    check_answer_size(answer, limit, f"{noted.tokens:,} tokens", TOKENIZE_ADVICE, param="inputs")
    body = [
        [{"id": t.id, "text": t.text, "special": t.special, "start": t.start, "stop": t.stop} for t in row]
        for row in tokens
    ]
    return json_response(body)


@endpoint("/decode", body=parse_decode, answer=answers.TEXTS)
async def decode(request: Request) -> Response:
    """``["text", ...]``, one string per list of ids."""
    parsed = parse_decode(await read_body(request, batched=False))
    runtime = resolve(request, parsed.model)
    texts = await until_disconnect(
        request.receive, tasks.decode(runtime, parsed.ids, skip_special_tokens=parsed.skip_special_tokens)
    )
    facts(request).inputs = len(parsed.ids)
    check_answer_size(
        sum(len(text) + 3 for text in texts),
        context(request).settings.server.max_response_bytes,
        f"{sum(map(len, parsed.ids)):,} ids decoded to {sum(map(len, texts)):,} characters",
        "decode fewer ids per request",
        param="ids",
    )
    return json_response(texts)


ROUTES = [
    Route("/tokenize", tokenize, methods=["POST"]),
    Route("/decode", decode, methods=["POST"]),
]
