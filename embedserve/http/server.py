"""The uvicorn configuration embedserve runs under: the connection layer of :mod:`embedserve.http.protocol` with the
limits from the server settings. The CLI serves with it, and so do the tests that need the real connection layer.

:func:`listen` binds the server's socket before anything else starts, so that a port already in use stops the command
at once, with a message, instead of after the models have loaded."""

from __future__ import annotations

import errno
import math
import socket
from typing import Any

import uvicorn

from embedserve.http.edge import AppContext
from embedserve.http.protocol import Limits, protocol_class
from embedserve.http.shedding import Shedder, queued_paths
from embedserve.settings import ServerSettings, Settings


class ListenError(Exception):
    """The address cannot be listened on; the message says why and which flag to change."""


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
    return Shedder(ctx, queued_paths(app.routes)) if isinstance(ctx, AppContext) else None


def listen(server: ServerSettings) -> socket.socket:
    """A socket bound to ``--hostname``/``--port``, for uvicorn to serve on (``Server.run(sockets=[...])``).

    Binding it here rather than in uvicorn keeps the port from the moment the command starts: a port in use is
    reported before the models load (uvicorn binds only after its start-up and then exits 3 with a bare errno)."""
    family = socket.AF_INET6 if ":" in server.hostname else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restart at once over TIME_WAIT sockets
    try:
        sock.bind((server.hostname, server.port))
    except OSError as exc:
        sock.close()
        raise ListenError(_why(server.hostname, server.port, exc, "--port", "--hostname")) from exc
    return sock


def check_free(hostname: str, port: int, flag: str) -> None:
    """Raise :class:`ListenError` now if ``port`` cannot be bound (for a listener that opens later, such as
    --prometheus-port's)."""
    family = socket.AF_INET6 if ":" in hostname else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((hostname, port))
        except OSError as exc:
            raise ListenError(_why(hostname, port, exc, flag, "--hostname")) from exc


def _why(hostname: str, port: int, exc: OSError, port_flag: str, host_flag: str) -> str:
    where = f"cannot listen on {hostname}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"{where}: the port is already in use by another process; stop it or choose another {port_flag}"
    if exc.errno == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need root); choose a {port_flag} of 1024 or more"
    if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        return f"{where}: no such address on this machine; check {host_flag} (0.0.0.0 listens on every address)"
    return f"{where}: {exc.strerror or exc}"
