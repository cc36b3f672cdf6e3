"""The workers behind the gateway: which replicas of each model are live, and which one takes the next request.

A worker is live while its ``/health`` answers 200. A background poller asks every worker about once a second; a
connection failure while proxying marks the worker down at once (and asks it again right away), so no further
request waits on a dead address. Picking is least-in-flight among live replicas, ties broken round-robin.
Event-loop only: no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import aiohttp

from embedserve.fleet import Fleet
from embedserve.gateway.client import WorkerClient
from embedserve.gateway.identity import IdentityTokenError, WorkerAuth

log = logging.getLogger("embedserve.gateway")

HEALTH_INTERVAL = 1.0
"""Seconds between two health checks of a worker."""
HEALTH_TIMEOUT = 2.0
"""A worker whose /health takes longer is down (a worker busy with inference still answers /health at once)."""
_HEALTH_TIMEOUT = aiohttp.ClientTimeout(total=HEALTH_TIMEOUT)


@dataclass
class Worker:
    """One replica: its base URL, whether it is live, and the requests the gateway has in flight on it."""

    model: str
    url: str
    live: bool = False
    in_flight: int = 0
    picked: int = 0


@dataclass
class Pool:
    """The replicas of one model."""

    model: str
    workers: list[Worker] = field(default_factory=list)
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def live(self) -> list[Worker]:
        """The replicas answering /health."""
        return [w for w in self.workers if w.live]

    def pick(self, exclude: AbstractSet[str] = frozenset()) -> Worker | None:
        """The live replica with the fewest requests in flight (round-robin among equals), not in ``exclude``."""
        candidates = [w for w in self.workers if w.live and w.url not in exclude]
        if not candidates:
            return None
        fewest = min(w.in_flight for w in candidates)
        least = [w for w in candidates if w.in_flight == fewest]
        chosen = least[next(self._turn) % len(least)]
        chosen.picked += 1
        return chosen


class Workers:
    """Every model's pool, and the poller that keeps their liveness current."""

    def __init__(
        self,
        fleet: Fleet,
        client: WorkerClient,
        *,
        interval: float = HEALTH_INTERVAL,
        auth: WorkerAuth | None = None,
    ) -> None:
        self.pools = {m.name: Pool(m.name, [Worker(m.name, url) for url in m.worker_urls]) for m in fleet.models}
        self._client = client
        self._auth = auth or WorkerAuth()
        self._interval = interval
        self._checks: set[asyncio.Task[None]] = set()

    def pool(self, model: str) -> Pool:
        """The pool of a fleet model (the caller has checked the name)."""
        return self.pools[model]

    def all(self) -> list[Worker]:
        """Every worker of every model."""
        return [w for pool in self.pools.values() for w in pool.workers]

    async def check(self, worker: Worker) -> None:
        """Ask one worker's /health and record the answer; log only changes. On Cloud Run /health is behind IAM
        like every path, so the poll carries the same credentials as a proxied request."""
        try:
            headers = await self._auth.headers(worker.url)
            call = self._client.session.get(f"{worker.url}/health", headers=headers, timeout=_HEALTH_TIMEOUT)
            async with call as response:
                await response.read()
                live = response.status == 200
        except IdentityTokenError as exc:
            log.warning("no identity token for %s: %s", worker.url, exc)
            live = False
        except (aiohttp.ClientError, TimeoutError):
            live = False
        if live != worker.live:
            log.info("worker %s of model %s is %s", worker.url, worker.model, "up" if live else "down")
        worker.live = live

    def mark_down(self, worker: Worker) -> None:
        """A connection to ``worker`` failed: take it out of rotation now and re-check it at once."""
        if worker.live:
            log.warning("worker %s of model %s is down (connection failed)", worker.url, worker.model)
        worker.live = False
        task = asyncio.get_running_loop().create_task(self.check(worker))
        self._checks.add(task)  # held so it is not collected mid-flight
        task.add_done_callback(self._checks.discard)

    async def poll(self) -> None:
        """Check every worker every ``interval`` seconds, each on its own cadence, until cancelled: a worker slow to
        answer (up to the health timeout) does not delay noticing that another came back or went down."""
        await asyncio.gather(*(self._watch(w) for w in self.all()))

    async def _watch(self, worker: Worker) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check(worker)

    async def close(self) -> None:
        """Cancel the re-checks still in flight."""
        for task in list(self._checks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
