"""The gateway's one HTTP client to its workers (and the metadata server): an ``aiohttp.ClientSession``.

aiohttp rather than httpx: with a bare Starlette echo app as the worker, one sequential POST cost 0.55 ms with
httpx's AsyncClient and 0.24 ms with aiohttp on the same loop, and httpx's transport was ~45% of the gateway's own
time per request under cProfile. The session is made on first use, on the running event loop (aiohttp's connector
needs one), and closed with the gateway.
"""

from __future__ import annotations

import aiohttp

MAX_CONNECTIONS = 1024
"""Connections open to all workers together; no per-worker cap below it."""
KEEPALIVE_SECONDS = 4.0
"""Idle connections are dropped before the worker's own 5 s keep-alive timeout, so the gateway never reuses a
connection the worker is closing."""
TIMEOUT = aiohttp.ClientTimeout(total=None, connect=30.0, sock_connect=1.0, sock_read=300.0)
"""Connecting is bounded tightly (a dead address should fail over fast: 1 s), waiting for a free connection 30 s,
answering is not (300 s between bytes: the workers bound their own queues and deadlines)."""
SKIPPED_HEADERS = ("User-Agent", "Content-Type", "Accept-Encoding")
"""Headers aiohttp would add on its own: a worker sees only what the gateway forwards (no octet-stream type on a
body the client sent untyped), and answers uncompressed, so its bytes pass through as they are."""


def new_session() -> aiohttp.ClientSession:
    """A keep-alive session to the workers; call it on the running event loop."""
    connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, limit_per_host=0, keepalive_timeout=KEEPALIVE_SECONDS)
    return aiohttp.ClientSession(connector=connector, timeout=TIMEOUT, auto_decompress=False, trust_env=False,
                                 skip_auto_headers=SKIPPED_HEADERS)  # fmt: skip


class WorkerClient:
    """Holds the gateway's session: made on first use (on the event loop), closed by :meth:`close`."""

    def __init__(self, session: aiohttp.ClientSession | None = None) -> None:
        self._session = session

    @property
    def session(self) -> aiohttp.ClientSession:
        """The session, made now if this is its first use."""
        if self._session is None:
            self._session = new_session()
        return self._session

    async def close(self) -> None:
        """Close the session and its connections (a later use makes a new one)."""
        if self._session is not None:
            await self._session.close()
            self._session = None
