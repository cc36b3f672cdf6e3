"""Forwarding one request to a worker of its model, and passing the worker's answer back unchanged.

Retries: a request whose connection to a worker could not be opened (nothing was sent) goes to another live replica
of the same model, as does one whose worker closed the connection before sending any byte of an answer (the worker
died mid-request: a ``kill -9``, an OOM kill). The second case may run a request twice; every proxied route is a
pure function of its body (embed, score, tokenize), so that costs only compute, and a request that kills its worker
is tried on at most one more replica (``MAX_RESETS``), so a "query of death" cannot take down a whole model.

The client is aiohttp's (``aiohttp.ClientSession``): how its exceptions map onto those two cases --

- not connected (another replica, the worker marked down): ``ClientConnectorError`` and its subclasses (refused,
  DNS, unreachable) and ``ConnectionTimeoutError`` (no connection within 1 s; aiohttp raises the same error when
  no pooled connection frees up within 30 s, which httpx reported apart, as a 503: only past 1024 open connections);
- closed before answering (``MAX_RESETS``): ``ServerDisconnectedError`` (EOF before the status line: a killed
  worker), a ``ClientOSError`` that is not a connect error (a reset while writing the body or reading the answer),
  ``ClientConnectionResetError`` (the transport was already closing when the request was written),
  ``ClientPayloadError`` (the connection dropped inside the answer's body);
- anything else (``SocketTimeoutError`` and the other timeouts, a malformed answer): 503 without a retry.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from embedserve.errors import UnhealthyError, retry_headers
from embedserve.gateway.client import WorkerClient
from embedserve.gateway.identity import IdentityTokenError, WorkerAuth
from embedserve.gateway.workers import Workers
from embedserve.tracing import ProxySpan

log = logging.getLogger("embedserve.gateway")

FORWARDED_REQUEST_HEADERS = ("content-type", "x-request-id", "traceparent", "tracestate", "x-request-timeout-ms",
                             "grpc-timeout", "accept", "x-priority")  # fmt: skip
"""What the gateway passes on to a worker: never the client's Authorization (keys end at the gateway)."""
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer",
                        "upgrade", "proxy-authenticate", "date", "server"})  # fmt: skip
"""Worker answer headers the gateway's own server sets (or that describe only the worker's connection)."""
MAX_RESETS = 1
"""Replicas a request that lost its connection mid-flight is retried on."""


@dataclass(frozen=True)
class Answer:
    """A worker's answer, as the gateway passes it on."""

    status: int
    headers: dict[str, str]
    body: bytes
    worker: str


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A worker's answer headers minus the hop-by-hop ones, names lowercased (compared case-insensitively), a
    repeated header's values joined with ", " as one."""
    kept: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        if key in HOP_BY_HOP:
            continue
        kept[key] = f"{kept[key]}, {value}" if key in kept else value
    return kept


class Proxy:
    """Sends requests to the workers with one keep-alive HTTP/1.1 client."""

    def __init__(self, workers: Workers, client: WorkerClient, auth: WorkerAuth) -> None:
        self.workers = workers
        self._client = client
        self._auth = auth

    async def forward(
        self, model: str, path: str, body: bytes, headers: Mapping[str, str], trace: ProxySpan | None = None
    ) -> Answer:
        """POST ``body`` to ``path`` on a live replica of ``model``; raises UnhealthyError (503) when none can take
        it. With ``trace``, each attempt is a span whose context the worker gets as its ``traceparent``."""
        pool = self.workers.pool(model)
        sent = {name: headers[name] for name in FORWARDED_REQUEST_HEADERS if name in headers}
        tried: set[str] = set()
        resets = 0
        while True:
            worker = pool.pick(exclude=tried)
            if worker is None:
                raise UnhealthyError(
                    f"model {model!r} has no live worker right now ({len(pool.workers)} configured, "
                    f"{len(tried)} tried); retry shortly",
                    headers=retry_headers(1.0),
                )
            tried.add(worker.url)
            try:
                auth = await self._auth.headers(worker.url)
            except IdentityTokenError as exc:
                log.error("no identity token for %s: %s", worker.url, exc)
                raise UnhealthyError(f"the gateway cannot authenticate to the workers of model {model!r}") from exc
            attempt = trace.attempt(worker.url, model) if trace is not None else None
            traced = attempt.headers if attempt is not None else {}
            outcome: int | str = "aborted"  # cancelled (the client left) or an error none of the cases below expects
            worker.in_flight += 1
            try:
                call = self._client.session.post(f"{worker.url}{path}", data=body, headers={**sent, **traced, **auth})
                async with call as response:
                    content = await response.read()
                    status, answered = response.status, kept_headers(response.headers)
                outcome = status
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                outcome = type(exc).__name__
                log.warning("cannot connect to %s (%s); trying another replica of %s", worker.url, exc, model)
                self.workers.mark_down(worker)
                continue
            except (
                aiohttp.ServerDisconnectedError,
                aiohttp.ClientOSError,
                aiohttp.ClientConnectionResetError,
                aiohttp.ClientPayloadError,
            ) as exc:
                # The worker closed the connection before any byte of its answer: it died mid-request.
                outcome = type(exc).__name__
                self.workers.mark_down(worker)
                resets += 1
                if resets > MAX_RESETS:
                    raise UnhealthyError(
                        f"the workers of model {model!r} closed the connection without answering; retry shortly"
                    ) from exc
                log.warning("%s closed the connection mid-request (%s); retrying on another replica", worker.url, exc)
                continue
            except (aiohttp.ClientError, TimeoutError) as exc:  # a timeout: the worker is alive but did not answer
                outcome = type(exc).__name__
                raise UnhealthyError(f"worker of model {model!r} did not answer: {type(exc).__name__}") from exc
            finally:
                worker.in_flight -= 1
                if attempt is not None:
                    attempt.end(outcome)
            return Answer(status, answered, content, worker.url)

    async def get(self, model: str, path: str) -> Answer | None:
        """GET ``path`` from a live replica of ``model`` (for /info), or None when none answers."""
        worker = self.workers.pool(model).pick()
        if worker is None:
            return None
        try:
            headers = await self._auth.headers(worker.url)
            async with self._client.session.get(f"{worker.url}{path}", headers=headers) as response:
                return Answer(response.status, kept_headers(response.headers), await response.read(), worker.url)
        except (aiohttp.ClientError, TimeoutError, IdentityTokenError):
            return None
