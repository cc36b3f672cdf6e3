"""``create_app(settings)``: the Starlette application, its routes, edge services and life cycle.

Models load in the background after the server starts listening, so ``/health`` can answer 503 while they load;
a model that fails to load is reported through ``on_load_error`` (the CLI then exits non-zero). :func:`drain` is
what SIGTERM triggers: stop admitting, let admitted work finish, then let the server stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator

from prometheus_client import start_http_server
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from embedserve.core.batching import Batch
from embedserve.core.registry import Registry, default_loader
from embedserve.core.runtime import Loader
from embedserve.errors import ModelLoadError
from embedserve.http.edge import AppContext, HeadGuard, handle_http_exception
from embedserve.http.governor import Governor
from embedserve.http.keys import ApiKeys, GatewayToken
from embedserve.http.routes import docs, openai, root, scoring, tei, tokens
from embedserve.http.web import EXPOSED_HEADERS
from embedserve.metrics import Metrics
from embedserve.settings import Settings, SettingsError
from embedserve.tracing import Tracing

log = logging.getLogger("embedserve.app")


def create_app(
    settings: Settings,
    *,
    loader: Loader = default_loader,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> Starlette:
    """Build the application. ``loader`` turns model settings into a loaded model (tests wrap the real one)."""
    settings.check()
    registry = Registry(settings, loader)
    ctx = AppContext(
        settings=settings,
        registry=registry,
        keys=ApiKeys(settings.edge),
        governor=Governor(settings.edge),
        metrics=Metrics(),
        tracing=Tracing(settings.edge),
        gateway_token=GatewayToken(settings.edge),
    )
    ctx.metrics.watch(registry.runtimes.values())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loading = asyncio.create_task(_load(ctx, on_load_error), name="embedserve-load")
        with contextlib.ExitStack() as cleanup:
            if settings.edge.prometheus_port is not None:
                server, _ = start_http_server(
                    settings.edge.prometheus_port, addr=settings.server.hostname, registry=ctx.metrics.registry
                )
                cleanup.callback(server.server_close)
                cleanup.callback(server.shutdown)  # runs first: stop serving, then close the socket
            cleanup.enter_context(_reload_keys_on_sighup(ctx.keys))
            try:
                yield
            finally:
                loading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loading
                await registry.drain(settings.edge.graceful_shutdown_timeout)
                ctx.tracing.shutdown()

    # The guard comes first: a request the connection layer refused, or whose head is over the limits, gets its
    # answer before CORS or routing look at it.
    middleware = [Middleware(HeadGuard, max_headers=settings.server.max_headers,
                             max_header_bytes=settings.server.max_header_bytes)]  # fmt: skip
    if settings.edge.cors_allow_origin:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.edge.cors_allow_origin),
                allow_methods=["GET", "POST"],
                allow_headers=[
                    "authorization",
                    "content-type",
                    "x-request-id",
                    "traceparent",
                    "tracestate",
                    "x-request-timeout-ms",
                    "grpc-timeout",
                    "x-priority",
                ],
                expose_headers=EXPOSED_HEADERS,
            )
        )
    app = Starlette(
        routes=[*tei.ROUTES, *openai.ROUTES, *scoring.ROUTES, *tokens.ROUTES, *root.ROUTES, *docs.ROUTES],
        middleware=middleware,
        exception_handlers={HTTPException: handle_http_exception},
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    return app


async def drain(app: Starlette, stop_server: Callable[[], None]) -> None:
    """Graceful shutdown: /health and new requests answer 503 at once, admitted requests finish (within
    --graceful-shutdown-timeout), then ``stop_server`` lets the server close."""
    ctx: AppContext = app.state.ctx
    ctx.registry.stop_admitting()
    grace = ctx.settings.edge.graceful_shutdown_timeout
    log.info("draining: waiting up to %.0f s for admitted requests", grace)
    try:
        async with asyncio.timeout(grace):
            await ctx.registry.wait_idle()
    except TimeoutError:
        log.warning("grace period over with requests still in flight")
    stop_server()


async def _load(ctx: AppContext, on_load_error: Callable[[BaseException], None] | None) -> None:
    def on_batch(model: str, batch: Batch) -> None:
        ctx.metrics.observe_batch(model, batch)
        if ctx.tracing.enabled:
            batch.span_context = ctx.tracing.batch_span(model, batch)

    try:
        await ctx.registry.start(on_batch, partial=ctx.settings.server.allow_partial_start)
    except ModelLoadError as exc:
        log.error("could not load the models: %s", exc)
        if on_load_error is not None:
            on_load_error(exc)
    except Exception as exc:
        log.exception("could not load the models")
        if on_load_error is not None:
            on_load_error(exc)
    for runtime in ctx.registry.runtimes.values():
        if runtime.loaded_in is not None:
            ctx.metrics.load_seconds.labels(runtime.name).set(runtime.loaded_in)
    settle_heap()


def settle_heap() -> None:
    """Move everything alive after start-up out of the garbage collector's reach.

    Models, tokenizers, torch and transformers leave millions of objects that live as long as the process, and a
    full collection walks all of them: under a flood, collections paused the event loop for 170-220 ms each (the p99
    of a 429 was 185 ms); with the start-up heap frozen they take about 15 ms (429 p99 6 ms). Requests' own objects
    are still collected as usual."""
    gc.collect()
    gc.freeze()


@contextlib.contextmanager
def _reload_keys_on_sighup(keys: ApiKeys) -> Iterator[None]:
    """SIGHUP re-reads --api-key-file (main thread only: servers embedded in other threads skip it)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        yield
        return
    loop = asyncio.get_running_loop()

    def reload() -> None:
        try:
            keys.reload()
        except SettingsError as exc:
            log.error("SIGHUP: keeping the previous API keys: %s", exc)

    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
