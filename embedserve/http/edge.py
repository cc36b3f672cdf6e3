"""The edge every route goes through: API key, per-key governor, error rendering, metrics, access log and trace.

Handlers stay thin: they parse, call the pipeline, render, and note what they learned in ``request.state.facts``
(model, input and token counts, stage timings); this wrapper does everything else, once, for every route.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from embedserve.core.capabilities import Capability
from embedserve.core.priority import Priority
from embedserve.core.registry import Registry
from embedserve.core.results import Timings
from embedserve.errors import BackendError, EmbedServeError, HeadersTooLargeError, from_http_status
from embedserve.http.answers import Answer
from embedserve.http.fields import Body
from embedserve.http.governor import Governor
from embedserve.http.keys import ANONYMOUS, GATEWAY_TOKEN_HEADER, ApiKeys, GatewayToken
from embedserve.http.protocol import CLOSE, STATE_KEY
from embedserve.http.web import REQUEST_ID_HEADER, ClientDisconnectedError, error_response, request_id
from embedserve.metrics import Metrics
from embedserve.settings import Settings
from embedserve.tracing import Tracing, request_attributes

log = logging.getLogger("embedserve.http")
access_log = logging.getLogger("embedserve.access")

Guard = Literal["open", "key", "metrics"]
"""``open``: anyone (health); ``key``: API key and governor (the API); ``metrics``: open unless --metrics-auth."""
Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class AppContext:
    """What the edge and the handlers need, stored on ``app.state.ctx``."""

    settings: Settings
    registry: Registry
    keys: ApiKeys
    governor: Governor
    metrics: Metrics
    tracing: Tracing
    gateway_token: GatewayToken | None = None
    """Set on a fleet's worker: only its gateway may call the API (``/health`` and ``/metrics`` stay open)."""


@dataclass
class Facts:
    """What a handler learned about its request, for metrics, the access log and the trace."""

    model: str = "-"
    inputs: int = 0
    tokens: int = 0
    timings: Timings | None = None
    batch_links: tuple[Any, ...] = ()


def context(request: Request) -> AppContext:
    """The application's context."""
    ctx: AppContext = request.app.state.ctx
    return ctx


def facts(request: Request) -> Facts:
    """This request's facts, for the handler to fill in."""
    found: Facts = request.state.facts
    return found


@dataclass(frozen=True)
class Operation:
    """What the OpenAPI document says about a handler (:mod:`embedserve.http.openapi`), declared with it."""

    guard: Guard
    body: tuple[Body[Any], ...]
    """The body parsers the handler may use (``POST /`` picks one by the model's kind); empty without a body."""
    answer: Answer | None
    errors: tuple[type[EmbedServeError], ...]
    """Errors beyond those the error table's scopes give every route of its kind (``/health``'s 503)."""
    listed: bool
    """False for the document and docs page themselves."""

    @property
    def queued(self) -> bool:
        """Its body is model work, which goes through admission and the batch queue (the tokenizer's does not)."""
        return any(body.needs is not Capability.TOKENIZE for body in self.body)


OPERATIONS: dict[Handler, Operation] = {}
"""Every wrapped handler's declaration, keyed by the handler the routes name."""


def endpoint(
    route: str,
    guard: Guard = "key",
    *,
    body: Body[Any] | tuple[Body[Any], ...] = (),
    answer: Answer | None = None,
    errors: tuple[type[EmbedServeError], ...] = (),
    listed: bool = True,
) -> Callable[[Handler], Handler]:
    """Wrap a handler served at ``route`` (the template, used as the metrics label). ``body`` (the parser the
    handler calls), ``answer`` and ``errors`` describe it for the OpenAPI document."""
    bodies = body if isinstance(body, tuple) else (body,)

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapped(request: Request) -> Response:
            started = time.perf_counter()
            ctx = context(request)
            request.state.facts = found = Facts()
            kid = ANONYMOUS
            try:
                if guard == "key" and ctx.gateway_token is not None:
                    ctx.gateway_token.check(request.headers.get(GATEWAY_TOKEN_HEADER))
                if guard == "key" or (guard == "metrics" and ctx.settings.edge.metrics_auth):
                    kid = ctx.keys.authenticate(request.headers.get("authorization"))
                    request.state.key_priority = ctx.keys.priority(kid)  # the request's lane unless it names one
                identity = kid if ctx.keys.enabled else (request.client.host if request.client else ANONYMOUS)
                if guard == "key":
                    ctx.governor.admit(identity)
                response = await handler(request)
                if guard == "key":
                    ctx.governor.charge_tokens(identity, found.tokens)
            except EmbedServeError as exc:
                if isinstance(exc, BackendError):
                    log.error("request %s failed: %s", request_id(request), exc.message, exc_info=exc.__cause__)
                else:
                    ctx.metrics.rejected.labels(exc.reason).inc()
                response = error_response(request, exc)
            except (ClientDisconnectedError, ClientDisconnect):
                response = Response(status_code=499)  # nobody reads it; uvicorn drops it
            except Exception as exc:
                rid = request_id(request)
                log.error("unhandled error in request %s", rid, exc_info=exc)
                response = error_response(request, BackendError(f"internal error (request id {rid})"))
            if REQUEST_ID_HEADER not in response.headers:
                response.headers[REQUEST_ID_HEADER] = request_id(request)
            record(request, route, response.status_code, started, found, kid)
            return response

        OPERATIONS[wrapped] = Operation(guard, bodies, answer, errors, listed)
        return wrapped

    return decorate


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Framework errors (unknown route, wrong method), as JSON in the route family's shape, recorded like the rest.
    A 405 keeps the ``Allow`` header Starlette computed from the route's methods."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        err: EmbedServeError = from_http_status(404, f"no route for {request.method} {request.url.path}")
    elif exc.status_code == 405:
        err = from_http_status(405, f"{request.method} is not allowed on {request.url.path}")
    else:
        err = from_http_status(exc.status_code, str(exc.detail))
    err.headers.update(exc.headers or {})
    return reject(request, err)


def reject(request: Request, err: EmbedServeError) -> Response:
    """Answer ``err`` to a request no route handled, counted and logged like every other answer."""
    started = time.perf_counter()
    context(request).metrics.rejected.labels(err.reason).inc()
    response = error_response(request, err)
    record(request, "unmatched", response.status_code, started, Facts(), ANONYMOUS)
    return response


class HeadGuard:
    """ASGI middleware in front of every route. It answers what the connection layer refused
    (:mod:`embedserve.http.protocol`: a head too slow, too large or garbled, a connection over the cap) and heads
    over --max-headers or --max-header-bytes (which it checks itself, so the bound holds under any ASGI server)."""

    def __init__(self, app: ASGIApp, *, max_headers: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            err = self.refusal(scope)
            if err is not None:
                await reject(Request(scope, receive), err)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> EmbedServeError | None:
        """The error to answer instead of routing the request, if any."""
        state = scope.get(STATE_KEY)
        if state is not None and state.rejection is not None:
            rejection: EmbedServeError = state.rejection
            return rejection
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if len(headers) > self.max_headers:
            return HeadersTooLargeError(
                f"the request carries {len(headers)} header fields, over the limit of {self.max_headers} "
                "(--max-headers); send fewer", headers=dict(CLOSE))  # fmt: skip
        # Request line and header lines as sent: "NAME: value\r\n" each.
        size = len(scope["method"]) + len(scope.get("raw_path") or b"") + len(scope.get("query_string", b"")) + 12
        size += sum(len(name) + len(value) + 4 for name, value in headers)
        if size > self.max_header_bytes:
            return HeadersTooLargeError(
                f"the request head is over the {self.max_header_bytes}-byte limit (--max-header-bytes); send "
                "shorter headers", headers=dict(CLOSE))  # fmt: skip
        return None


def record(request: Request, route: str, status: int, started: float, found: Facts, kid: str) -> None:
    """Metrics, one access-log line and (when on) the trace of one answered request. Never input text or keys."""
    ended = time.perf_counter()
    ctx = context(request)
    ctx.metrics.observe_request(route, found.model, status, started, ended, found.timings)
    lane: Priority | None = getattr(request.state, "priority", None)  # noted with the body of queued work
    if lane is not None and (found.timings is not None or status == 429):
        ctx.metrics.observe_lane(found.model, lane, admitted=found.timings is not None)
    rid = request_id(request)
    latency_ms = round((ended - started) * 1000, 2)
    access_log.info(
        "%s %s %d %.1fms model=%s inputs=%d tokens=%d key=%s id=%s",
        request.method, request.url.path, status, latency_ms, found.model, found.inputs, found.tokens, kid, rid,
        extra={"request_id": rid, "method": request.method, "route": route, "model": found.model, "key_id": kid,
               "inputs": found.inputs, "tokens": found.tokens, "status": status, "latency_ms": latency_ms},
    )  # fmt: skip
    if ctx.tracing.enabled:
        attributes = request_attributes(
            request.method, route, status, rid, found.model, found.inputs, found.tokens, kid
        )
        ctx.tracing.request_span(
            f"{request.method} {route}", request.headers, started, ended, attributes, found.timings, found.batch_links
        )
