"""The uvicorn configuration embedserve runs under: the connection layer of :mod:`embedserve.http.protocol` with the
limits from the server settings. The CLI serves with it, and so do the tests that need the real connection layer."""

from __future__ import annotations

import math
from typing import Any

import uvicorn

from embedserve.http.edge import AppContext
from embedserve.http.protocol import Limits, protocol_class
from embedserve.http.shedding import Shedder
from embedserve.settings import Settings


def limits(settings: Settings) -> Limits:
    """The connection bounds the settings ask for."""
    server = settings.server
    return Limits(
        header_timeout=server.header_timeout,
        body_timeout=server.body_timeout,
        keep_alive_timeout=server.keep_alive_timeout,
        max_header_bytes=server.max_header_bytes,
        max_connections=server.max_connections,
    )


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """A ``uvicorn.Config`` serving ``app`` on the settings' address with embedserve's connection layer (and, for an
    app from :func:`~embedserve.http.app.create_app`, its load shedding).

    uvicorn's own ``limit_concurrency`` stays off (it answers a plain-text 503; the cap here answers JSON), and so
    does its access log (embedserve writes its own line per request).
    """
    options: dict[str, Any] = {
        "host": settings.server.hostname,
        "port": settings.server.port,
        "http": protocol_class(limits(settings), _shedder(app)),
        "ws": "none",  # no websocket routes: an Upgrade request is answered as plain HTTP/1.1
        # uvicorn's keep-alive timer (after each response) backs up the protocol's own (which stray bytes cannot
        # reset); uvicorn types it as whole seconds.
        "timeout_keep_alive": max(1, math.ceil(settings.server.keep_alive_timeout)),
        "log_config": None,
        "access_log": False,
        "lifespan": "on",
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


def _shedder(app: Any) -> Shedder | None:
    ctx = getattr(getattr(app, "state", None), "ctx", None)
    return Shedder(ctx) if isinstance(ctx, AppContext) else None
