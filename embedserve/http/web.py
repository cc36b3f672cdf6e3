"""HTTP plumbing shared by every route: bounded body reading, JSON responses, request ids, timing headers, error
rendering in the route family's shape, and dropping work whose client went away."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive

from embedserve.errors import (
    EmbedServeError,
    MalformedRequestError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ResponseTooLargeError,
    UnsupportedMediaTypeError,
    render_openai,
    render_tei,
)
from embedserve.http.protocol import CLOSE, STATE_KEY

EXPOSED_HEADERS = ["x-request-id", "x-compute-time", "x-tokenization-time", "x-queue-time", "x-inference-time",
                   "x-compute-tokens", "x-compute-characters", "x-cache-hits", "retry-after",
                   "retry-after-ms"]  # fmt: skip
"""Answer headers a browser page may read across origins (CORS), on the server and the gateway alike."""

if TYPE_CHECKING:  # the gateway uses this module too, and must not load the core and its engines
    from embedserve.core.results import Timings

T = TypeVar("T")
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
REQUEST_ID_HEADER = "x-request-id"


class ClientDisconnectedError(Exception):
    """The client closed the connection before its response was ready."""


def json_response(content: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """Serialize with orjson (numpy arrays natively, no per-float Python work)."""
    return Response(orjson.dumps(content, option=_JSON_OPTIONS), status, headers, "application/json")


def request_id(request: Request) -> str:
    """The client's ``x-request-id`` if it sent a sane one, else a fresh one; stored on the request."""
    rid: str | None = getattr(request.state, "request_id", None)
    if rid is None:
        sent = request.headers.get(REQUEST_ID_HEADER, "")
        rid = sent if 0 < len(sent) <= 128 and sent.isprintable() else uuid.uuid4().hex
        request.state.request_id = rid
    return rid


async def read_json_body(request: Request, limit: int, body_timeout: float) -> bytes:
    """The raw body, refusing non-JSON content types (415) and bodies over ``limit`` bytes (413) while streaming.

    The whole body must arrive within ``body_timeout`` seconds (else 408, and the connection closes). A client that goes
    away mid-body raises :class:`ClientDisconnectedError` (recorded as 499, never a 500); a body the connection
    layer found broken (a lying chunked encoding) is a 400.
    """
    content_type = request.headers.get("content-type")
    if content_type is not None:
        media = content_type.split(";", 1)[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise UnsupportedMediaTypeError(f"content type {media!r} is not supported; send application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body of {declared} bytes is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(body_timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLargeError(f"request body is over the {limit}-byte limit")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeoutError(
            f"the request body did not arrive within {body_timeout:g} s (--body-timeout); send it at once",
            headers=dict(CLOSE),
        ) from None
    except ClientDisconnect:
        raise ClientDisconnectedError from None
    state = request.scope.get(STATE_KEY)
    if state is not None and state.body_error is not None:
        raise MalformedRequestError(state.body_error, headers=dict(CLOSE))
    return b"".join(chunks)


def check_answer_size(estimate: int, limit: int, what: str, advice: str, *, param: str) -> None:
    """Refuse (422) an answer estimated at over ``limit`` bytes before building it, saying what made it large and
    how to ask for less."""
    if estimate > limit:
        raise ResponseTooLargeError(
            f"the answer would be about {estimate:,} bytes ({what}), over the {limit:,}-byte limit "
            f"(--max-response-bytes); {advice}",
            param=param,
        )


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first (so its queued inputs are dropped).

    Call only after the body has been read: the next ASGI message is then ``http.disconnect``.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        raise ClientDisconnectedError
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def timing_headers(rid: str, timings: Timings, tokens: int, characters: int) -> dict[str, str]:
    """TEI's per-stage headers, in whole milliseconds, plus the request id."""
    return {
        REQUEST_ID_HEADER: rid,
        "x-compute-time": _ms(timings.total),
        "x-tokenization-time": _ms(timings.tokenization),
        "x-queue-time": _ms(timings.queue),
        "x-inference-time": _ms(timings.inference),
        "x-compute-tokens": str(tokens),
        "x-compute-characters": str(characters),
    }


def _ms(seconds: float) -> str:
    return str(round(seconds * 1000))


def is_openai_path(path: str) -> bool:
    """``/v1/*`` and the bare ``/embeddings`` alias answer errors in OpenAI's shape."""
    return path.startswith("/v1/") or path == "/embeddings"


def error_response(request: Request, err: EmbedServeError) -> Response:
    """Render ``err`` in the shape of the route family ``request`` belongs to."""
    body = render_openai(err) if is_openai_path(request.url.path) else render_tei(err)
    headers = {REQUEST_ID_HEADER: request_id(request), **err.headers}
    return json_response(body, status=err.status, headers=headers)
