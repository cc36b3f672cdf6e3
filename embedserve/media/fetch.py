"""Fetching image URLs without handing the network to whoever sends them (server-side request forgery).

By construction, for the URL and for every redirect (at most ``--image-fetch-max-redirects``):

* the scheme is https (http only with ``--image-fetch-allow-http``);
* the host is resolved once and every address it resolves to is checked (:mod:`embedserve.media.addresses`);
* the connection goes to the checked address itself: the request URL carries the address, the ``Host`` header and
  TLS's server name (SNI, the ``sni_hostname`` request extension of httpx's transport, httpcore) carry the host
  name, and the certificate is verified against that name. No second lookup happens, so DNS rebinding between the
  check and the connection has nothing to act on; proxies from the environment are ignored for the same reason;
* every hop gets a client of its own, so no pooled connection made for one name ever serves another;
* the whole fetch, redirects included, is bounded by ``--image-fetch-timeout`` (connect and each read too), and the
  body by ``--image-max-bytes`` while it streams (no decoding of content-encodings: ``identity`` is asked for and
  the raw bytes are counted);
* errors name what failed (refused address, timeout, status), never what the remote sent.

At most ``--image-fetch-concurrency`` fetches run at once; the rest wait within their timeout.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from embedserve.errors import EmbedServeError, ImageFetchError, ImageTooLargeError, ImageURLRefusedError
from embedserve.media.addresses import AddressPolicy, Resolver, resolve_checked, system_resolver

FETCH_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class FetchMetrics:
    """The fetcher's own collectors, in the application's registry."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.fetches = Counter("embedserve_image_fetches", "Image URL fetches, by outcome (ok, or the error code).",
                               ["outcome"], registry=registry)  # fmt: skip
        self.seconds = Histogram("embedserve_image_fetch_duration_seconds", "Time an image URL took to fetch.",
                                 buckets=FETCH_SECONDS, registry=registry)  # fmt: skip
        self.bytes = Counter("embedserve_image_fetch_bytes", "Image bytes fetched.", registry=registry)
        self.in_flight = Gauge("embedserve_image_fetches_in_flight", "Image URL fetches running or waiting for a "
                               "slot.", registry=registry)  # fmt: skip


class Fetcher:
    """Fetches image URLs under the rules above. One per application; safe to share between requests."""

    def __init__(
        self, *, max_bytes: int, timeout: float, max_redirects: int, concurrency: int, allow_http: bool,
        allow: Sequence[str] = (), registry: CollectorRegistry | None = None, resolver: Resolver = system_resolver,
        verify: ssl.SSLContext | bool = True,
    ) -> None:  # fmt: skip
        """``verify``: how certificates are checked (httpx's argument: the system's CAs by default; the tests pass a
        context trusting their own CA)."""
        self.max_bytes = max_bytes
        self.verify = verify
        self.timeout = timeout
        self.max_redirects = max_redirects
        self.concurrency = concurrency
        self.schemes = ("https", "http") if allow_http else ("https",)
        self.policy = AddressPolicy(allow)
        self.resolver = resolver
        self.metrics = FetchMetrics(registry)
        self._slots = asyncio.Semaphore(max(1, concurrency))

    async def fetch(self, url: str) -> bytes:
        """The body of ``url``, or an :class:`EmbedServeError` (422 refused or failed, 413 too large)."""
        if self.concurrency == 0:
            raise ImageURLRefusedError("image URLs are turned off here (--image-fetch-concurrency 0); send the "
                                       "image as a data: URL or base64")  # fmt: skip
        started = time.perf_counter()
        outcome = "error"
        self.metrics.in_flight.inc()
        try:
            async with asyncio.timeout(self.timeout), self._slots:
                data = await self._follow(url)
            outcome = "ok"
            self.metrics.bytes.inc(len(data))
            return data
        except TimeoutError:
            outcome = ImageFetchError.code or "timeout"
            raise ImageFetchError(f"fetching the image took longer than --image-fetch-timeout "
                                  f"({self.timeout:g} s)") from None  # fmt: skip
        except EmbedServeError as exc:
            outcome = exc.code or "error"
            raise
        finally:
            self.metrics.in_flight.dec()
            self.metrics.fetches.labels(outcome).inc()
            self.metrics.seconds.observe(time.perf_counter() - started)

    async def _follow(self, url: str) -> bytes:
        try:
            current = httpx.URL(url)
        except (httpx.InvalidURL, ValueError):
            raise ImageURLRefusedError("the image URL is not a valid URL") from None
        for _ in range(self.max_redirects + 1):
            if current.scheme not in self.schemes:
                allowed = " or ".join(f"{s}://" for s in self.schemes)
                raise ImageURLRefusedError(f"the image URL must start with {allowed}, not {current.scheme}://")
            if not current.host:
                raise ImageURLRefusedError("the image URL has no host")
            port = current.port or (443 if current.scheme == "https" else 80)
            # The ASCII (IDNA) form of the name: what DNS, SNI and the Host header carry.
            host = current.raw_host.decode("ascii")
            address = await resolve_checked(host, port, self.policy, self.resolver)
            result = await self._get(current, str(address))
            if isinstance(result, bytes):
                return result
            current = result
        raise ImageURLRefusedError(f"the image URL redirects more than {self.max_redirects} times "
                                   "(--image-fetch-max-redirects)")  # fmt: skip

    async def _get(self, url: httpx.URL, address: str) -> bytes | httpx.URL:
        """One hop to the checked ``address``: the body, or the URL a redirect points to."""
        headers = {"Host": url.netloc.decode("ascii"), "Accept": "image/*", "Accept-Encoding": "identity",
                   "User-Agent": "embedserve-image-fetch"}  # fmt: skip
        extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
        options: dict[str, Any] = {"trust_env": False, "follow_redirects": False, "verify": self.verify}
        try:
            async with (
                httpx.AsyncClient(timeout=httpx.Timeout(self.timeout), **options) as client,
                client.stream("GET", url.copy_with(host=address), headers=headers, extensions=extensions) as response,
            ):
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    try:
                        return url.join(location)
                    except (httpx.InvalidURL, ValueError):
                        raise ImageURLRefusedError("the image URL redirects to an invalid URL") from None
                if response.status_code != 200:
                    raise ImageFetchError(f"the image URL answered HTTP {response.status_code}, not 200")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self.max_bytes:
                    raise ImageTooLargeError(f"the image is over --image-max-bytes ({self.max_bytes:,} bytes)")
                return await self._body(response)
        except httpx.TimeoutException:
            raise TimeoutError from None
        except (httpx.HTTPError, OSError):
            raise ImageFetchError("the image URL's host could not be reached or broke off the answer") from None

    async def _body(self, response: httpx.Response) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > self.max_bytes:  # stop reading at the limit: the rest is never received
                raise ImageTooLargeError(f"the image is over --image-max-bytes ({self.max_bytes:,} bytes)")
            chunks.append(chunk)
        return b"".join(chunks)
