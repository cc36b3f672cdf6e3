"""Load shedding at the connection layer: under a flood, refuse a request as soon as its head is parsed.

When every model's work ahead is already predicted to take longer than its ``--max-queue-time``
(:meth:`~embedserve.core.registry.Registry.shed`), a POST to a route that queues work would be refused whatever its
body says. Answering it from the HTTP protocol, before an ASGI task, routing, the edge or the body exist, makes a
refusal cost tens of microseconds instead of a full request, so that under a flood the cores stay with the admitted
work and the refusals themselves stay fast. The answer is the same ``429 Overloaded`` (TEI or OpenAI shape by path)
with ``Retry-After`` that the handler would give; it is counted in ``embedserve_requests_total`` and
``embedserve_rejected_requests_total`` like any other, but not access-logged (a flood would flood the log) and it
comes before the API key check (it says only that the server is full).

The limit is the one of the lane the ``X-Priority`` header names (see :mod:`embedserve.http.priority`), else of
``normal``: the body's ``priority`` field and the API key's default are not known yet, so a high-priority request
that must pass a flood of normal work should send the header.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

import orjson
from starlette.routing import BaseRoute, Route

from embedserve.core.priority import Priority
from embedserve.errors import OverloadedError, ValidationError, render_openai, render_tei
from embedserve.http.edge import OPERATIONS, AppContext
from embedserve.http.priority import PRIORITY_HEADER, parse_priority
from embedserve.http.web import REQUEST_ID_HEADER, is_openai_path


def queued_paths(routes: Iterable[BaseRoute]) -> frozenset[str]:
    """The POST paths whose declared body is model work (the ones the predicted wait is about), from the routes."""
    return frozenset(
        route.path
        for route in routes
        if isinstance(route, Route)
        and "POST" in (route.methods or ())
        and (op := OPERATIONS.get(route.endpoint)) is not None
        and op.queued
    )


class Shedder:
    """Decides, from a parsed request head, whether to answer 429 at once; renders that answer."""

    def __init__(self, ctx: AppContext, queued: frozenset[str]) -> None:
        self._ctx = ctx
        self._queued = queued

    def answer(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> bytes | None:
        """The complete response bytes when the request is shed, else None (serve it normally). ``headers`` are the
        head's, names in lower case."""
        if method != b"POST":
            return None
        path = target.split(b"?", 1)[0].decode("latin-1")
        if path not in self._queued:
            return None
        try:
            self._ctx.registry.shed(_lane(headers or []))
        except OverloadedError as err:
            return self._render(path, err)
        return None

    def _render(self, path: str, err: OverloadedError) -> bytes:
        now = time.perf_counter()
        metrics = self._ctx.metrics
        metrics.observe_request(path, "-", err.status, now, now, None)
        metrics.rejected.labels(err.reason).inc()
        body = orjson.dumps(render_openai(err) if is_openai_path(path) else render_tei(err))
        headers = {
            "content-type": "application/json",
            "content-length": str(len(body)),
            REQUEST_ID_HEADER: uuid.uuid4().hex,
            **err.headers,
        }
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        return f"HTTP/1.1 {err.status} Too Many Requests\r\n{head}\r\n".encode("latin-1") + body


_HEADER = PRIORITY_HEADER.encode()


def _lane(headers: list[tuple[bytes, bytes]]) -> Priority:
    """The lane the head's ``X-Priority`` names; normal without one, or with a malformed one (the handler answers
    that with 422 once the request gets there)."""
    for name, value in headers:
        if name == _HEADER:
            try:
                return parse_priority(value.decode("latin-1"), "header X-Priority", PRIORITY_HEADER)
            except ValidationError:
                return Priority.NORMAL
    return Priority.NORMAL
