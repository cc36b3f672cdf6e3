"""``create_gateway(fleet)``: the fleet's public edge as a Starlette application.

Every POST route of the worker API is proxied by its ``model`` (the fleet's first model when the body names none);
the gateway checks API keys, applies the per-key governors, answers CORS, writes one access-log line per request
(key id, model, route, inputs, tokens, status, time, worker; never a key or a text) and passes the client's
``traceparent``/``tracestate`` on to the worker, or, with ``gateway.otlp_endpoint``, exports a span per request and
per worker attempt and sends the attempt's context instead (:class:`embedserve.tracing.ProxySpan`). ``/health``,
``/info`` and ``/v1/models`` speak for the whole fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from embedserve.errors import BackendError, EmbedServeError, ModelNotFoundError, from_http_status
from embedserve.fleet import Fleet
from embedserve.gateway.client import WorkerClient
from embedserve.gateway.identity import METADATA_HOST, GoogleIdTokens, WorkerAuth
from embedserve.gateway.metrics import GatewayMetrics
from embedserve.gateway.proxy import Proxy
from embedserve.gateway.workers import HEALTH_INTERVAL, Workers
from embedserve.http.governor import Governor
from embedserve.http.keys import ANONYMOUS, ApiKeys, read_gateway_token
from embedserve.http.priority import PRIORITY_HEADER
from embedserve.http.web import (
    EXPOSED_HEADERS,
    REQUEST_ID_HEADER,
    error_response,
    json_response,
    read_json_body,
    request_id,
)
from embedserve.settings import EdgeSettings, ServerSettings
from embedserve.tracing import ProxySpan, Tracing, request_attributes

access_log = logging.getLogger("embedserve.access")

PROXIED = ("/embed", "/embed_sparse", "/rerank", "/v1/rerank", "/predict", "/tokenize", "/decode", "/v1/embeddings",
           "/embeddings")  # fmt: skip
"""The worker routes the gateway forwards, by the body's ``model``."""
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class GatewayContext:
    """What the gateway's handlers need, stored on ``app.state.gateway``."""

    fleet: Fleet
    keys: ApiKeys
    governor: Governor
    workers: Workers
    proxy: Proxy
    trusted_proxies: tuple[Network, ...]
    payload_limit: int
    body_timeout: float
    metrics: GatewayMetrics
    tracing: Tracing


def gateway_token(fleet: Fleet, environ: dict[str, str]) -> str | None:
    """The token the gateway sends its workers: ``gateway.token_file``, else ``EMBEDSERVE_GATEWAY_TOKEN``."""
    if fleet.gateway.token_file is not None:
        return read_gateway_token(fleet.gateway.token_file, "fleet file: gateway.token_file")
    return environ.get("EMBEDSERVE_GATEWAY_TOKEN") or None


def client_address(request: Request, trusted: tuple[Network, ...]) -> str:
    """The client's address for per-address limits: the direct peer, unless the peer is a trusted proxy, in which
    case the right-most ``X-Forwarded-For`` entry that is not itself a trusted proxy (the left-most ones are what
    the client claims and prove nothing)."""
    peer = request.client.host if request.client else ANONYMOUS
    if not trusted or not _within(peer, trusted):
        return peer
    hops = [h.strip() for h in ",".join(request.headers.getlist("x-forwarded-for")).split(",") if h.strip()]
    for hop in reversed(hops):
        if not _within(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _within(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def _model_and_inputs(body: bytes, default: str) -> tuple[str, int, bool]:
    """The body's ``model`` (``default`` when absent or unreadable: the worker answers the bad body), how many
    inputs it carries, for the log, and whether it names its priority lane."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return default, 0, False
    if not isinstance(data, dict):
        return default, 0, False
    model = data.get("model")
    inputs = next((data[k] for k in ("inputs", "input", "texts") if k in data), None)
    count = len(inputs) if isinstance(inputs, list) else int(inputs is not None)
    return (model if isinstance(model, str) and model else default), count, data.get("priority") is not None


async def proxied(request: Request) -> Response:
    """Check the key and the governor, then forward to a live replica of the body's model."""
    started = time.perf_counter()
    ctx: GatewayContext = request.app.state.gateway
    kid, model, inputs, tokens, worker = ANONYMOUS, "-", 0, 0, "-"
    span = ctx.tracing.proxy_span(f"POST {request.url.path}", request.headers, started) if ctx.tracing.enabled else None
    try:
        kid = ctx.keys.authenticate(request.headers.get("authorization"))
        identity = kid if ctx.keys.enabled else client_address(request, ctx.trusted_proxies)
        ctx.governor.admit(identity)
        body = await read_json_body(request, ctx.payload_limit, ctx.body_timeout)
        model, inputs, names_lane = _model_and_inputs(body, ctx.fleet.models[0].name)
        if ctx.fleet.model(model) is None:
            known = ", ".join(m.name for m in ctx.fleet.models)
            raise ModelNotFoundError(f"model {model!r} is not served here; known: {known}", param="model")
        headers = {**request.headers, REQUEST_ID_HEADER: request_id(request)}
        lane = ctx.keys.priority(kid)
        if lane is not None and PRIORITY_HEADER not in request.headers and not names_lane:
            headers[PRIORITY_HEADER] = lane.value  # the key's default lane, for the worker (it checks no keys)
        answer = await ctx.proxy.forward(model, request.url.path, body, headers, span)
        worker = answer.worker
        tokens = int(answer.headers.get("x-compute-tokens", "0") or 0)
        ctx.governor.charge_tokens(identity, tokens)
        response = Response(answer.body, answer.status, answer.headers)
    except EmbedServeError as exc:
        response = error_response(request, exc)
    except Exception:  # any other failure is a generic 500, details in the log only
        access_log.exception("gateway request %s failed", request_id(request))
        response = error_response(request, BackendError(f"internal error (request id {request_id(request)})"))
    _record(request, response.status_code, started, span, model=model, inputs=inputs, tokens=tokens, kid=kid,
            worker=worker)  # fmt: skip
    return response


def _record(request: Request, status: int, started: float, span: ProxySpan | None, **fields: Any) -> None:
    ended = time.perf_counter()
    seconds = ended - started
    ctx: GatewayContext = request.app.state.gateway
    ctx.metrics.observe(request.url.path, fields["model"], status, seconds)
    latency_ms = round(seconds * 1000, 2)
    rid = request_id(request)
    access_log.info(
        "%s %s %d %.1fms model=%s inputs=%d tokens=%d key=%s worker=%s id=%s", request.method, request.url.path,
        status, latency_ms, fields["model"], fields["inputs"], fields["tokens"], fields["kid"], fields["worker"], rid,
        extra={"request_id": rid, "method": request.method, "route": request.url.path, "status": status,
               "latency_ms": latency_ms, "model": fields["model"], "inputs": fields["inputs"],
               "tokens": fields["tokens"], "key_id": fields["kid"], "worker": fields["worker"]},
    )  # fmt: skip
    if span is not None:
        attributes = request_attributes(request.method, request.url.path, status, rid, fields["model"],
                                        fields["inputs"], fields["tokens"], fields["kid"])  # fmt: skip
        span.end({**attributes, "embedserve.worker": fields["worker"]}, ended)


async def health(request: Request) -> Response:
    """200 when every model has a live worker, else 503 naming the models that have none."""
    ctx: GatewayContext = request.app.state.gateway
    models = {name: {"live": len(pool.live), "workers": len(pool.workers)} for name, pool in ctx.workers.pools.items()}
    down = [name for name, counts in models.items() if counts["live"] == 0]
    if not down:
        return json_response({"status": "ok", "models": models})
    body = {"error": f"no live worker for model(s): {', '.join(down)}", "error_type": "Unhealthy", "down": down,
            "models": models}  # fmt: skip
    return json_response(body, status=503)


async def info(request: Request) -> Response:
    """Each model's ``/info`` as one of its live workers reports it (``null`` while none is live)."""
    ctx: GatewayContext = request.app.state.gateway
    answers = await asyncio.gather(*(ctx.proxy.get(m.name, "/info") for m in ctx.fleet.models))
    found: dict[str, Any] = {}
    for model, answer in zip(ctx.fleet.models, answers, strict=True):
        found[model.name] = orjson.loads(answer.body) if answer is not None and answer.status == 200 else None
    return json_response({"gateway": True, "models": found})


async def metrics(request: Request) -> Response:
    """The gateway's Prometheus metrics (see :mod:`embedserve.gateway.metrics`)."""
    ctx: GatewayContext = request.app.state.gateway
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def list_models(request: Request) -> Response:
    """Every fleet model in OpenAI's list shape, live or not (``live`` says which can answer now)."""
    ctx: GatewayContext = request.app.state.gateway
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "embedserve", "live": bool(pool.live)}
            for name, pool in ctx.workers.pools.items()]  # fmt: skip
    return json_response({"object": "list", "data": data})


async def _not_found(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    err = from_http_status(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")
    err.headers.update(exc.headers or {})
    return error_response(request, err)


def create_gateway(
    fleet: Fleet, *, environ: dict[str, str] | None = None, interval: float = HEALTH_INTERVAL
) -> Starlette:
    """Build the gateway for ``fleet``. Raises SettingsError for an unreadable key or token file."""
    spec = fleet.gateway
    edge = EdgeSettings(api_key_file=spec.api_key_file, cors_allow_origin=spec.cors_allow_origin,
                        rate_limit_rps=spec.rate_limit_rps, rate_limit_burst=spec.rate_limit_burst,
                        rate_limit_tpm=spec.rate_limit_tpm, otlp_endpoint=spec.otlp_endpoint,
                        otlp_service_name=spec.otlp_service_name)  # fmt: skip
    server = ServerSettings()
    client = WorkerClient()  # keep-alive aiohttp session, made at startup (see embedserve.gateway.client)
    env = dict(os.environ if environ is None else environ)
    id_tokens = None
    if spec.worker_auth == "google-id-token":
        id_tokens = GoogleIdTokens(client, metadata_host=env.get("GCE_METADATA_HOST") or METADATA_HOST)
    auth = WorkerAuth(gateway_token(fleet, env), id_tokens)
    workers = Workers(fleet, client, interval=interval, auth=auth)
    ctx = GatewayContext(
        fleet=fleet,
        keys=ApiKeys(edge),
        governor=Governor(edge),
        workers=workers,
        proxy=Proxy(workers, client, auth),
        trusted_proxies=tuple(ipaddress.ip_network(cidr, strict=False) for cidr in spec.trusted_proxies),
        payload_limit=server.payload_limit,
        body_timeout=server.body_timeout,
        metrics=GatewayMetrics(workers),
        tracing=Tracing(edge),  # loads the OpenTelemetry SDK only when gateway.otlp_endpoint is set
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await asyncio.gather(*(workers.check(w) for w in workers.all()))  # ready with a current view
        poller = asyncio.create_task(workers.poll(), name="embedserve-gateway-health")
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            await workers.close()
            await client.close()
            ctx.tracing.shutdown()

    middleware = []
    if spec.cors_allow_origin:
        middleware.append(
            Middleware(CORSMiddleware, allow_origins=list(spec.cors_allow_origin), allow_methods=["GET", "POST"],
                       allow_headers=["authorization", "content-type", "x-request-id", "traceparent", "tracestate",
                                      "x-request-timeout-ms", "grpc-timeout", "x-priority"],
                       expose_headers=EXPOSED_HEADERS)
        )  # fmt: skip
    routes = [Route(path, proxied, methods=["POST"]) for path in PROXIED]
    routes += [Route("/health", health, methods=["GET"]), Route("/info", info, methods=["GET"]),
               Route("/v1/models", list_models, methods=["GET"]),
               Route("/metrics", metrics, methods=["GET"])]  # fmt: skip
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: _not_found},
                    lifespan=lifespan)  # fmt: skip
    app.state.gateway = ctx
    return app
