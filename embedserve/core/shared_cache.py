"""The optional shared cache: a Redis that a fleet of workers reads after their own cache misses and writes after
each computation (``--cache-url``).

It never fails a request. Every call is bounded by ``--cache-timeout``; an error or a timeout counts as a miss (the
inputs are computed), is counted (:meth:`CacheObserver.shared_error`), and is logged at most every
:data:`WARN_EVERY_SECONDS`. After an error the shared cache is skipped for :data:`BACKOFF_SECONDS`, so a Redis that
is down or black-holed costs one timeout a second, not one per request. Writes run in the background, at most
:data:`MAX_PENDING_WRITES` at once (more are dropped: the cache is an optimization, never a backlog).

A value is the input's token count (uint32) then the vector (float32), little-endian.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable, Sequence

import numpy as np
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from embedserve.core.cache import Entry

log = logging.getLogger("embedserve.cache")

BACKOFF_SECONDS = 1.0
WARN_EVERY_SECONDS = 10.0
MAX_PENDING_WRITES = 64
MAX_CONNECTIONS = 64
"""Connections to Redis per process; a lookup that finds none free fails (and is computed) rather than waits."""
KEY_PREFIX = "embedserve:"
_TOKENS = struct.Struct("<I")


def _name(key: bytes) -> str:
    """A key as Redis shows it: ``embedserve:<hex>`` (readable in redis-cli, easy to scan and delete)."""
    return KEY_PREFIX + key.hex()


def encode(entry: Entry) -> bytes:
    """An entry as a Redis value."""
    return _TOKENS.pack(entry.tokens) + entry.vector.astype("<f4", copy=False).tobytes()


def decode(value: bytes) -> Entry | None:
    """A Redis value back as an entry; None for a value of the wrong shape."""
    size = len(value) - _TOKENS.size
    if size <= 0 or size % 4:
        return None
    (tokens,) = _TOKENS.unpack_from(value)
    vector = np.frombuffer(value, dtype="<f4", offset=_TOKENS.size).astype(np.float32)
    vector.flags.writeable = False
    return Entry(vector, tokens)


class SharedCache:
    """A Redis client (redis-py's asyncio client, with its own connection pool) that answers misses instead of
    errors. Event-loop only."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        ttl: float | None,
        on_error: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # No retries inside the client: one bounded try, then compute. Its socket timeouts back up asyncio's.
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
            max_connections=MAX_CONNECTIONS, health_check_interval=30,
        )  # fmt: skip
        self.timeout = timeout
        self.ttl_ms = None if ttl is None else max(1, round(ttl * 1000))
        self._on_error = on_error
        self._clock = clock
        self._skip_until = 0.0
        self._last_warning = -WARN_EVERY_SECONDS
        self._unreported = 0
        self._writes: set[asyncio.Task[None]] = set()

    @property
    def available(self) -> bool:
        """False while backing off after an error."""
        return self._clock() >= self._skip_until

    @property
    def pending_writes(self) -> int:
        """Background writes not finished yet."""
        return len(self._writes)

    async def get_many(self, keys: Sequence[bytes]) -> list[Entry | None]:
        """The entries of ``keys`` (None where absent); all None when Redis fails, is slow, or is backed off."""
        if not keys or not self.available:
            return [None] * len(keys)
        try:
            async with asyncio.timeout(self.timeout):
                values = await self._client.mget([_name(key) for key in keys])
        except Exception as exc:  # redis, OS and timeout errors alike: the request goes on without the cache
            self._failed("read", exc)
            return [None] * len(keys)
        found: list[Entry | None] = []
        for value in values:
            entry = decode(value) if isinstance(value, bytes) else None
            if value is not None and entry is None:
                self._failed("decode", ValueError(f"a value of {len(value)} bytes is not an entry"))
            found.append(entry)
        return found

    def put_many(self, items: Sequence[tuple[bytes, Entry]]) -> None:
        """Write entries in the background (dropped while backing off or when too many writes are pending)."""
        if not items or not self.available or len(self._writes) >= MAX_PENDING_WRITES:
            return
        task = asyncio.get_running_loop().create_task(self._write([(_name(k), encode(e)) for k, e in items]))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, values: list[tuple[str, bytes]]) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                async with self._client.pipeline(transaction=False) as pipe:
                    for key, value in values:
                        pipe.set(key, value, px=self.ttl_ms)
                    await pipe.execute()
        except Exception as exc:
            self._failed("write", exc)

    def _failed(self, operation: str, exc: BaseException) -> None:
        now = self._clock()
        self._skip_until = now + BACKOFF_SECONDS
        self._on_error(operation)
        self._unreported += 1
        if now - self._last_warning >= WARN_EVERY_SECONDS:
            log.warning(
                "shared cache (--cache-url) %s failed (%s: %s); %d error(s) since the last warning. Inputs are "
                "computed meanwhile; retrying in %.0f s",
                operation, type(exc).__name__, exc or "timed out", self._unreported, BACKOFF_SECONDS,
            )  # fmt: skip
            self._last_warning = now
            self._unreported = 0

    async def close(self) -> None:
        """Let pending writes finish (each is bounded by the timeout), then close the connections."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        await self._client.aclose()
