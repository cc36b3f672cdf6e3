"""The embedding cache in front of the pipeline: the in-process LRU, single flight, then the shared Redis.

For a request's inputs (as keys, :func:`~embedserve.core.cache.input_key`), :meth:`EmbeddingCache.lookup`:

1. answers each input found in the in-process cache;
2. joins a computation already in flight for the same key in another request (single flight), and computes a key
   that occurs several times in one request once;
3. looks the rest up in the shared cache, if one is configured;
4. hands what is left to ``compute``, which runs the normal pipeline (admission, tokenizing, batches) for those
   inputs only, so cached inputs take no admission slot and add nothing to the predicted wait;
5. stores what was computed, locally and in the shared cache, and merges everything back in input order.

A flight whose request fails or is cancelled (its client left) does not fail the requests that joined it: they
compute those inputs themselves. Event-loop only.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from embedserve.core.cache import Entry, LocalCache
from embedserve.settings import CacheSettings

if TYPE_CHECKING:
    from embedserve.core.shared_cache import SharedCache


class Source(enum.StrEnum):
    """Where a cache hit came from."""

    LOCAL = "local"
    """The in-process cache."""
    SHARED = "shared"
    """The shared Redis (--cache-url)."""
    FLIGHT = "flight"
    """A computation in flight when it was asked for: in another request, or the same input earlier in this one."""


class CacheObserver(Protocol):
    """What the cache reports (the metrics implement it)."""

    def cache_hits(self, model: str, source: Source, n: int) -> None:
        """``n`` inputs answered without computing them."""

    def cache_misses(self, model: str, n: int) -> None:
        """``n`` inputs computed."""

    def cache_evictions(self, n: int) -> None:
        """``n`` entries dropped from the in-process cache to make room."""

    def shared_cache_error(self, operation: str) -> None:
        """A shared-cache call that failed or timed out (``read``, ``write``, ``decode``)."""


class _Unobserved:
    def cache_hits(self, model: str, source: Source, n: int) -> None:
        pass

    def cache_misses(self, model: str, n: int) -> None:
        pass

    def cache_evictions(self, n: int) -> None:
        pass

    def shared_cache_error(self, operation: str) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Lookup:
    """Every input's entry, in input order, and how many were not computed for this request."""

    entries: list[Entry]
    hits: int


Compute = Callable[[list[int]], Awaitable[list[Entry]]]
"""Computes the inputs at the given indices (in that order) through the pipeline."""


class EmbeddingCache:
    """One per process, shared by every model (the model is part of each key)."""

    def __init__(self, local: LocalCache | None, shared: SharedCache | None = None) -> None:
        self.local = local
        self.shared = shared
        self.observer: CacheObserver = _Unobserved()
        self.waiting = 0
        """Inputs waiting now for a computation in flight in another request."""
        self._flights: dict[bytes, asyncio.Future[Entry | None]] = {}

    @classmethod
    def from_settings(cls, settings: CacheSettings) -> EmbeddingCache | None:
        """The cache the settings ask for; None when both the in-process and the shared cache are off."""
        if not settings.enabled:
            return None
        local = LocalCache(settings.cache_bytes, settings.cache_ttl) if settings.cache_bytes > 0 else None
        cache = cls(local)
        if settings.cache_url is not None:
            # Imported only here: redis-py imports OpenTelemetry's SDK, which a server without --cache-url (and
            # without --otlp-endpoint) never loads.
            from embedserve.core.shared_cache import SharedCache

            cache.shared = SharedCache(
                settings.cache_url, timeout=settings.cache_timeout, ttl=settings.cache_ttl,
                on_error=lambda operation: cache.observer.shared_cache_error(operation),
            )  # fmt: skip
        return cache

    @property
    def held_bytes(self) -> int:
        """Bytes the in-process cache holds."""
        return self.local.bytes if self.local is not None else 0

    async def lookup(self, model: str, keys: Sequence[bytes], compute: Compute) -> Lookup:
        """Every input's entry, computing only those no cache and no flight has (see the module's docstring)."""
        n = len(keys)
        found: list[Entry | None] = [None] * n
        first: dict[bytes, int] = {}
        joined: list[tuple[int, asyncio.Future[Entry | None]]] = []
        lead: list[int] = []
        local_hits = 0
        for i, key in enumerate(keys):
            if key in first:
                continue  # a repeat within the request: filled in from its first occurrence at the end
            first[key] = i
            entry = self.local.get(key) if self.local is not None else None
            if entry is not None:
                found[i] = entry
                local_hits += 1
            elif (flight := self._flights.get(key)) is not None:
                joined.append((i, flight))
            else:
                lead.append(i)
        self._hits(model, Source.LOCAL, local_hits)
        retry: list[int] = []
        shared_hits = 0
        self.waiting += len(joined)
        try:
            if lead:
                shared_hits += await self._lead(model, keys, lead, found, compute)
            landed = [await asyncio.shield(flight) for _, flight in joined]  # leaving must not cancel the flight
        finally:
            self.waiting -= len(joined)
        for (i, _), entry in zip(joined, landed, strict=True):
            if entry is None:
                retry.append(i)  # the request computing it failed or left
            found[i] = entry
        self._hits(model, Source.FLIGHT, len(joined) - len(retry))
        if retry:
            shared_hits += await self._lead(model, keys, retry, found, compute)
        repeats = n - len(first)
        self._hits(model, Source.FLIGHT, repeats)
        entries: list[Entry] = []
        for i, entry in enumerate(found):
            entry = entry or found[first[keys[i]]]
            assert entry is not None, "every input was looked up, computed or joined"
            entries.append(entry)
        return Lookup(entries, local_hits + shared_hits + len(joined) - len(retry) + repeats)

    async def _lead(
        self, model: str, keys: Sequence[bytes], lead: list[int], found: list[Entry | None], compute: Compute
    ) -> int:
        """Fly the inputs at ``lead``: announce them, look them up in the shared cache, compute the rest. Returns
        how many the shared cache held."""
        loop = asyncio.get_running_loop()
        mine = {keys[i]: loop.create_future() for i in lead if keys[i] not in self._flights}
        self._flights.update(mine)
        asked = len(lead)
        try:
            if self.shared is not None:
                shared = await self.shared.get_many([keys[i] for i in lead])
                missing = []
                for i, entry in zip(lead, shared, strict=True):
                    if entry is None:
                        missing.append(i)
                    else:
                        self._land(keys[i], entry, mine)
                        found[i] = entry
                self._hits(model, Source.SHARED, len(lead) - len(missing))
                lead = missing
            if lead:
                self.observer.cache_misses(model, len(lead))
                computed = await compute(lead)
                for i, entry in zip(lead, computed, strict=True):
                    self._land(keys[i], entry, mine)
                    found[i] = entry
                if self.shared is not None:
                    self.shared.put_many([(keys[i], entry) for i, entry in zip(lead, computed, strict=True)])
            return asked - len(lead)
        finally:
            for key, flight in mine.items():
                if not flight.done():
                    flight.set_result(None)  # failed or cancelled: whoever joined computes it
                if self._flights.get(key) is flight:
                    del self._flights[key]

    def _land(self, key: bytes, entry: Entry, mine: dict[bytes, asyncio.Future[Entry | None]]) -> None:
        if self.local is not None:
            before = self.local.evictions
            self.local.put(key, entry)
            if self.local.evictions > before:
                self.observer.cache_evictions(self.local.evictions - before)
        flight = mine.get(key)
        if flight is not None and not flight.done():
            flight.set_result(entry)

    def _hits(self, model: str, source: Source, n: int) -> None:
        if n:
            self.observer.cache_hits(model, source, n)

    async def close(self) -> None:
        """Close the shared cache's connections (pending writes first)."""
        if self.shared is not None:
            await self.shared.close()
