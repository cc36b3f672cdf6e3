"""Per-key governors: a request-rate token bucket and an optional tokens-per-minute budget for each identity.

An identity is an API key id, or the client address when auth is off. Buckets refill lazily from an injectable
clock, so tests can prove the rates exactly without sleeping. Memory is bounded: a bucket that has refilled to full
is the same as no bucket and is dropped, and beyond ``max_identities`` the least recently seen identity goes.
Event-loop only: no locks.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from embedserve.errors import RateLimitedError, retry_headers
from embedserve.settings import EdgeSettings

Clock = Callable[[], float]


class TokenBuckets:
    """One token bucket per identity: ``capacity`` tokens, refilled at ``rate`` per second."""

    def __init__(self, rate: float, capacity: float, *, clock: Clock, max_identities: int) -> None:
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._max = max_identities
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # identity -> [level, last update]

    def __len__(self) -> int:
        return len(self._buckets)

    def level(self, identity: str) -> float:
        """Tokens available now (negative while in debt)."""
        now = self._clock()
        bucket = self._buckets.get(identity)
        if bucket is None:
            return self.capacity
        return min(self.capacity, bucket[0] + (now - bucket[1]) * self.rate)

    def take(self, identity: str, amount: float, *, allow_debt: bool = False) -> float:
        """Take ``amount`` tokens. Returns 0.0 when taken, else the seconds until they will be there (nothing taken).
        With ``allow_debt`` the tokens are always taken and the level may go below zero."""
        now = self._clock()
        level = self.level(identity)
        if level < amount and not allow_debt:
            return (amount - level) / self.rate
        self._buckets[identity] = [level - amount, now]
        self._buckets.move_to_end(identity)
        self._evict(now)
        return 0.0

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        # Oldest first: drop buckets that have refilled (no information lost), then any beyond the bound.
        while buckets:
            level, updated = next(iter(buckets.values()))
            if level + (now - updated) * self.rate < self.capacity and len(buckets) <= self._max:
                break
            buckets.popitem(last=False)


class Governor:
    """Applies ``--rate-limit-rps``/``--rate-limit-burst`` and ``--rate-limit-tpm`` per identity."""

    def __init__(self, settings: EdgeSettings, *, clock: Clock = time.monotonic, max_identities: int = 10_000) -> None:
        self.requests: TokenBuckets | None = None
        self.tokens: TokenBuckets | None = None
        if settings.rate_limit_rps > 0:
            self.requests = TokenBuckets(
                settings.rate_limit_rps, settings.rate_limit_burst, clock=clock, max_identities=max_identities
            )
        if settings.rate_limit_tpm is not None:
            tpm = settings.rate_limit_tpm
            self.tokens = TokenBuckets(tpm / 60.0, tpm, clock=clock, max_identities=max_identities)

    def admit(self, identity: str) -> None:
        """Let one request through, or raise RateLimitedError with the seconds until one would pass."""
        if self.tokens is not None:
            level = self.tokens.level(identity)
            if level < 0:  # still paying off earlier requests' tokens
                _limited("token budget (--rate-limit-tpm)", -level / self.tokens.rate)
        if self.requests is not None:
            wait = self.requests.take(identity, 1.0)
            if wait > 0:
                _limited("request rate (--rate-limit-rps)", wait)

    def charge_tokens(self, identity: str, tokens: int) -> None:
        """Charge the real token count of a served request against the identity's token budget."""
        if self.tokens is not None and tokens > 0:
            self.tokens.take(identity, tokens, allow_debt=True)


def _limited(what: str, wait: float) -> None:
    raise RateLimitedError(
        f"rate limited: this key is over its {what}; retry after {max(1, math.ceil(wait))} s",
        headers=retry_headers(wait),
    )
