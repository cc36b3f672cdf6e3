"""``create_app(settings)``: the Starlette application, its routes, error handlers and life cycle.

Models load in the background after the server starts listening, so ``/health`` can answer 503 while they load;
a model that fails to load is reported through ``on_load_error`` (the CLI then exits non-zero).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException

from embedserve.modelfiles import ModelLoadError
from embedserve.registry import Registry, default_loader
from embedserve.routes import openai, tei
from embedserve.routes.common import AppContext
from embedserve.runtime import Loader
from embedserve.settings import Settings
from embedserve.web import handle_http_exception

log = logging.getLogger("embedserve.app")

SHUTDOWN_GRACE_SECONDS = 10.0
"""How long shutdown waits for admitted work once the server stopped taking requests."""


def create_app(
    settings: Settings,
    *,
    loader: Loader = default_loader,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> Starlette:
    """Build the application. ``loader`` turns model settings into a loaded model (tests wrap the real one)."""
    settings.check()
    registry = Registry(settings, loader)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loading = asyncio.create_task(_load(registry, on_load_error), name="embedserve-load")
        try:
            yield
        finally:
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            await registry.drain(SHUTDOWN_GRACE_SECONDS)

    app = Starlette(
        routes=[*tei.ROUTES, *openai.ROUTES],
        exception_handlers={HTTPException: handle_http_exception},
        lifespan=lifespan,
    )
    app.state.ctx = AppContext(settings=settings, registry=registry)
    return app


async def _load(registry: Registry, on_load_error: Callable[[BaseException], None] | None) -> None:
    try:
        await registry.start()
    except ModelLoadError as exc:
        log.error("could not load the models: %s", exc)
        if on_load_error is not None:
            on_load_error(exc)
    except Exception as exc:
        log.exception("could not load the models")
        if on_load_error is not None:
            on_load_error(exc)
