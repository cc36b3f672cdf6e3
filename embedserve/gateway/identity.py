"""How the gateway proves itself to its workers: the shared gateway token, and optionally a Google identity token.

On Cloud Run the workers are private services: Cloud Run itself refuses any call without an ID token (a Google-signed
JWT whose audience is the worker's URL) from an account holding ``roles/run.invoker`` on that service. With
``gateway.worker_auth: google-id-token`` the gateway asks the metadata server for one token per worker URL, sends it
as ``Authorization: Bearer ...`` on every worker call (proxied requests, ``/info``, the health poll), and reuses it
until shortly before it expires. The metadata server is ``metadata.google.internal``, or ``GCE_METADATA_HOST`` when
set (the variable Google's own client libraries read).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import aiohttp
import orjson

from embedserve.gateway.client import WorkerClient
from embedserve.http.keys import GATEWAY_TOKEN_HEADER

log = logging.getLogger("embedserve.gateway")

METADATA_HOST = "metadata.google.internal"
IDENTITY_PATH = "/computeMetadata/v1/instance/service-accounts/default/identity"
REFRESH_MARGIN = 300.0
"""Seconds before its ``exp`` that a token is replaced: a request signed now must still be valid when it arrives."""
METADATA_TIMEOUT = 5.0


class IdentityTokenError(Exception):
    """The metadata server gave no usable identity token."""


def audience(url: str) -> str:
    """The audience Cloud Run expects for a worker: its service URL (scheme and host, no path)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def token_expiry(token: str) -> float:
    """The ``exp`` claim (Unix seconds) of a JWT. The signature is not checked: the token came from the metadata
    server and is only passed on; Cloud Run verifies it."""
    try:
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
        raise IdentityTokenError("the metadata server's answer is not a JWT with an exp claim") from exc


@dataclass
class _Cached:
    token: str
    refresh_at: float


@dataclass
class GoogleIdTokens:
    """ID tokens from the metadata server, one per audience, cached until ``REFRESH_MARGIN`` before expiry.

    Concurrent callers for one audience share one fetch (a lock per audience), so a burst of requests after a
    refresh costs one metadata call."""

    client: WorkerClient
    metadata_host: str = METADATA_HOST
    clock: Callable[[], float] = time.time
    _cache: dict[str, _Cached] = field(default_factory=dict, init=False, repr=False)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict, init=False, repr=False)

    async def token(self, aud: str) -> str:
        """A valid ID token for ``aud``; raises IdentityTokenError when the metadata server cannot give one."""
        cached = self._cache.get(aud)
        if cached is not None and self.clock() < cached.refresh_at:
            return cached.token
        lock = self._locks.setdefault(aud, asyncio.Lock())
        async with lock:
            cached = self._cache.get(aud)  # another caller may have refreshed it while this one waited
            if cached is not None and self.clock() < cached.refresh_at:
                return cached.token
            token = await self._fetch(aud)
            self._cache[aud] = _Cached(token, token_expiry(token) - REFRESH_MARGIN)
            return token

    async def _fetch(self, aud: str) -> str:
        url = f"http://{self.metadata_host}{IDENTITY_PATH}?audience={quote(aud, safe='')}&format=full"
        timeout = aiohttp.ClientTimeout(total=METADATA_TIMEOUT)
        try:
            async with self.client.session.get(url, headers={"Metadata-Flavor": "Google"}, timeout=timeout) as response:
                status, body = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise IdentityTokenError(f"cannot reach the metadata server at {self.metadata_host}: {exc}") from exc
        if status != 200:
            raise IdentityTokenError(f"the metadata server answered {status} for an identity token")
        log.debug("fetched an identity token for %s", aud)
        return body.decode("utf-8", "replace").strip()


@dataclass
class WorkerAuth:
    """The headers every call to a worker carries: the gateway token, and an ID token for the worker's URL."""

    gateway_token: str | None = None
    id_tokens: GoogleIdTokens | None = None

    async def headers(self, worker_url: str) -> dict[str, str]:
        """Headers for a call to ``worker_url``; raises IdentityTokenError when an ID token is needed and missing."""
        sent: dict[str, str] = {}
        if self.gateway_token is not None:
            sent[GATEWAY_TOKEN_HEADER] = self.gateway_token
        if self.id_tokens is not None:
            sent["authorization"] = f"Bearer {await self.id_tokens.token(audience(worker_url))}"
        return sent
