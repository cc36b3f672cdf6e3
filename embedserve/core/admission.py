"""Admission: who gets in, decided at once, before any tokenizing.

Two bounds, checked in this order:

* **Slots** (``--max-concurrent-requests``), counted in inputs across tokenizing, queued and running work: the hard
  memory bound, whatever the model's speed.
* **Predicted wait** (``--max-queue-time``): the tokens admitted ahead of a request, divided by the tokens per
  second the model has been measured to compute, scaled by how far off that has been at the tail
  (:class:`WaitCalibration`), is how long it would wait for its first forward pass. Over the
  limit, it gets 429 at once, with ``Retry-After`` (and ``Retry-After-Ms``) from the time the work ahead needs to
  drain to the limit. A client deadline shorter than the predicted wait gets 504 at once: nothing would be computed
  in time.

The tokens ahead are the real token counts of queued and running inputs (kept by the
:class:`~embedserve.core.batching.BatchQueue`) plus an estimate, from characters, for requests still being
tokenized. With priority lanes (:mod:`embedserve.core.priority`) both bounds are per lane: a lane counts the work
queued in its own and higher lanes plus the running batch, and a lower lane is refused at a smaller share of the
limits, so room stays for the top lane. The speed is measured from the forward passes themselves
(:class:`Throughput`), so it follows the model, the hardware, the input lengths and the padding the traffic brings;
the start-up measurement seeds it. Core layer: loop-only state except :class:`Throughput`, which the backend thread
feeds.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Sequence

from embedserve.core.priority import LANES, LaneLimits, Priority
from embedserve.errors import DeadlineExceededError, OverloadedError, retry_headers

THROUGHPUT_HORIZON_S = 5.0
"""Busy seconds over which the measured speed is averaged: old batches weigh e^-1 after this much compute."""

SEED_WEIGHT_S = 0.5
"""How many busy seconds the start-up figure counts for before real batches outweigh it."""

TOKENS_PER_CHARACTER = 0.3
"""First guess of tokens per input character (English averages about 0.25, plus special tokens); replaced by what
the model's tokenizer is measured to produce."""


class Throughput:
    """Real tokens computed per second of forward-pass time, exponentially averaged over busy time.

    Written by the backend thread after each batch, read on the event loop. The two sums are swapped in as one tuple,
    so a reader never sees one updated without the other."""

    def __init__(self, tokens_per_second: float | None) -> None:
        self._sums: tuple[float, float] | None = None
        if tokens_per_second is not None and tokens_per_second > 0:
            self._sums = (tokens_per_second * SEED_WEIGHT_S, SEED_WEIGHT_S)

    def observe(self, tokens: int, seconds: float) -> None:
        """One finished forward pass: ``tokens`` real (unpadded) tokens in ``seconds``."""
        if seconds <= 0:
            return
        decay = math.exp(-seconds / THROUGHPUT_HORIZON_S)
        done, busy = self._sums or (0.0, 0.0)
        self._sums = (done * decay + tokens, busy * decay + seconds)

    @property
    def tokens_per_second(self) -> float | None:
        """The current figure, or None before anything was measured."""
        sums = self._sums
        if sums is None or sums[1] <= 0 or sums[0] <= 0:
            return None
        return sums[0] / sums[1]


CALIBRATION_SAMPLES = 512
"""Admitted requests whose waits the calibration remembers, per lane."""

CALIBRATION_QUANTILE = 0.99
"""The share of admitted requests whose wait should stay within the limit (a p99 bound, as the issue's target)."""

MIN_CALIBRATED_SHARE = 0.5
"""Only predictions of at least this share of the lane's limit, as calibrated (the raw figure times the current
factor), are compared with what happened: the calibration is for the waits admission decides on. A short
prediction's error is mostly the batch already running, which adds the same few tens of milliseconds whatever the
queue holds; scaling a full queue's prediction by that ratio refused work the model had time for (128 clients in
closed loop lost a quarter of their throughput). Selecting on the calibrated figure, not the raw one, keeps samples
coming whatever the factor: admission only lets in raw predictions up to the limit divided by the factor, so with a
factor over 1 / this share a raw threshold saw no sample again and the factor stayed where it was (the torch engine
kept a factor near 4 after a burst, refusing a tenth of a steady 32-client load it had time for)."""

MIN_CALIBRATED_WAIT_S = 0.05
"""Nor calibrated predictions shorter than this (a lane limit of 0.1 s or less): scheduling noise would swamp
them."""

CALIBRATION_BOUNDS = (0.5, 4.0)
"""How far the measured ratio may move a prediction, either way."""


class WaitCalibration:
    """How much longer (or shorter) admitted requests of one lane really waited for their first forward pass than
    predicted: the :data:`CALIBRATION_QUANTILE` of actual / predicted over the last :data:`CALIBRATION_SAMPLES`
    requests whose calibrated prediction was at least half their lane's limit (:data:`MIN_CALIBRATED_SHARE`).

    The raw prediction (tokens ahead / measured tokens per second) is right on average but not at the tail: packing
    lets younger inputs of similar length ride ahead of older ones, the speed moves with the traffic's lengths, and a
    lower lane's queue is overtaken by higher lanes' later arrivals. Scaling by this quantile makes
    ``--max-queue-time`` a bound that 99% of admitted requests keep, not their median. Event-loop only."""

    def __init__(self) -> None:
        self._ratios: deque[float] = deque(maxlen=CALIBRATION_SAMPLES)
        self._fresh = 0
        self.factor = 1.0

    def observe(self, predicted: float, actual: float, limit: float) -> None:
        """A request predicted (raw) to wait ``predicted`` seconds, against a lane limit of ``limit`` seconds,
        started computing after ``actual``."""
        if predicted <= 0 or predicted * self.factor < max(MIN_CALIBRATED_WAIT_S, MIN_CALIBRATED_SHARE * limit):
            return
        self._ratios.append(actual / predicted)
        self._fresh += 1
        if self._fresh >= 16 or len(self._ratios) < 16:  # re-sorting 512 floats every 16 requests costs ~40 us
            self._fresh = 0
            ordered = sorted(self._ratios)
            quantile = ordered[min(len(ordered) - 1, int(CALIBRATION_QUANTILE * len(ordered)))]
            low, high = CALIBRATION_BOUNDS
            self.factor = min(high, max(low, quantile))


class Admission:
    """Slots and predicted wait for one model. Event-loop only, except for the :class:`Throughput` it reads."""

    def __init__(
        self, capacity: int, max_queue_time: float, throughput: Throughput | None = None, *, reserve: float = 0.0,
        low_share: float = 1.0,
    ) -> None:  # fmt: skip
        self.capacity = capacity
        self.max_queue_time = max_queue_time
        self.reserve = reserve
        """Share of the slots only the top lane may take (--priority-reserve)."""
        self.low_share = low_share
        """Share of the slots and of the predicted-wait limit the ``low`` lane may use (--low-priority-share)."""
        self.throughput = throughput or Throughput(None)
        self.in_use = 0
        self.tokenizing = dict.fromkeys(LANES, 0.0)
        """Per lane, estimated tokens of admitted requests not yet queued (being tokenized)."""
        self.tokenizing_requests = dict.fromkeys(LANES, 0)
        """Per lane, admitted requests not yet queued (being tokenized)."""
        self._tokens_per_character = TOKENS_PER_CHARACTER
        self._idle: asyncio.Event | None = None
        self.calibration = {lane: WaitCalibration() for lane in LANES}
        """Per lane, the measured ratio of actual to raw predicted waits that predictions are scaled by."""

    @property
    def tokenizing_tokens(self) -> float:
        """Estimated tokens of every admitted request not yet queued."""
        return sum(self.tokenizing.values())

    def limits(self) -> LaneLimits:
        """Each lane's share of the slots and of the predicted-wait limit."""
        return LaneLimits(self.capacity, self.max_queue_time, self.reserve, self.low_share)

    def estimate(self, characters: Sequence[int], max_input_tokens: int) -> float:
        """Tokens a request's inputs will have, guessed from their characters, each capped at the input limit."""
        ratio = self._tokens_per_character
        return float(sum(min(max_input_tokens, math.ceil(c * ratio) + 2) for c in characters))

    def learn(self, characters: int, tokens: int) -> None:
        """A tokenized request: move the tokens-per-character guess a step towards what was measured."""
        if characters > 0 and tokens > 0:
            self._tokens_per_character += 0.1 * (tokens / characters - self._tokens_per_character)

    def raw_wait(self, tokens_ahead: float) -> float:
        """Seconds the ``tokens_ahead`` (queued, running or being tokenized) take at the measured speed."""
        rate = self.throughput.tokens_per_second
        if rate is None or tokens_ahead <= 0:
            return 0.0
        return tokens_ahead / rate

    def predicted_wait(self, tokens_ahead: float, priority: Priority = Priority.NORMAL) -> float:
        """Seconds until work of lane ``priority`` admitted now would start: the raw figure scaled by the lane's
        :class:`WaitCalibration`."""
        return self.raw_wait(tokens_ahead) * self.calibration[priority].factor

    def waited(self, priority: Priority, predicted: float, actual: float) -> None:
        """An admitted request's raw prediction (what :meth:`admit` returned) and its actual wait for its first
        forward pass, for the lane's calibration."""
        self.calibration[priority].observe(predicted, actual, self.limits().wait(priority))

    def admit(
        self, n: int, estimate: float, tokens_ahead: float, *, deadline_in: float | None, name: str,
        priority: Priority = Priority.NORMAL,
    ) -> float:  # fmt: skip
        """Take ``n`` slots for a request of about ``estimate`` tokens in lane ``priority``, or raise: 429 when the
        lane's share of the slots is full or its predicted wait is over its limit, 504 when the wait is over the
        client's remaining deadline (``deadline_in`` seconds). ``tokens_ahead`` counts the queued tokens of this and
        higher lanes plus the running batch. Never waits. Returns the raw prediction, for :meth:`waited`."""
        limits = self.limits()
        raw = self.raw_wait(tokens_ahead + self._tokenizing_ahead(priority))
        wait = raw * self.calibration[priority].factor
        slots, limit = limits.slots(priority), limits.wait(priority)
        if self.in_use + n > slots:
            # Without a prediction (turned off), the first slot to free up is the best guess: a second.
            retry = retry_headers(wait - limit if limit > 0 else 1.0)
            taken = f"all {self.capacity} input slots are taken" if slots == self.capacity else (
                f"{self.in_use} input slots are taken and {priority} priority may use {slots}")  # fmt: skip
            raise OverloadedError(f"model {name!r} is overloaded: {taken}; retry soon", headers=retry)
        self._refuse_over_limit(wait, limit, name, priority)
        if deadline_in is not None and wait > deadline_in:
            raise DeadlineExceededError(
                f"the request's deadline ({max(0.0, deadline_in) * 1000:.0f} ms left) is shorter than the predicted "
                f"wait of {wait * 1000:.0f} ms for model {name!r}; nothing was computed"
            )
        self.in_use += n
        self.tokenizing[priority] += estimate
        self.tokenizing_requests[priority] += 1
        return raw

    def shed(self, tokens_ahead: float, name: str, priority: Priority = Priority.NORMAL) -> None:
        """429 before a request is even read, when the work ahead of its lane alone is over the lane's limit: under a
        flood this keeps each refusal cheap (no body parsing, no tokenizing), so the cores stay with the admitted
        work. ``tokens_ahead`` as for :meth:`admit`."""
        wait = self.predicted_wait(tokens_ahead + self._tokenizing_ahead(priority), priority)
        self._refuse_over_limit(wait, self.limits().wait(priority), name, priority)

    def _tokenizing_ahead(self, priority: Priority) -> float:
        return sum(self.tokenizing[lane] for lane in priority.at_or_above())

    def _refuse_over_limit(self, wait: float, limit: float, name: str, priority: Priority) -> None:
        if limit > 0 and wait > limit:
            which = "--max-queue-time" if limit == self.max_queue_time else f"{priority} priority's share of it"
            raise OverloadedError(
                f"model {name!r} is overloaded: the predicted wait of {wait:.2f} s is over the {limit:g} s limit "
                f"({which}); retry after the Retry-After seconds",
                headers=retry_headers(wait - limit),
            )

    def tokenized(self, estimate: float, priority: Priority = Priority.NORMAL) -> None:
        """The request admitted with ``estimate`` is tokenized: its real tokens are now counted by the queue."""
        self.tokenizing[priority] = max(0.0, self.tokenizing[priority] - estimate)
        self.tokenizing_requests[priority] = max(0, self.tokenizing_requests[priority] - 1)

    def may_tokenize_inline(self, n: int, priority: Priority) -> bool:
        """Whether a request of ``n`` inputs in lane ``priority``, admitted and about to be tokenized, should be
        tokenized on the event loop rather than queue for the pool (the caller still checks that it is small): when
        it is alone in flight (nothing else needs the loop meanwhile), or when requests of lower lanes are being
        tokenized and none of its own or higher lanes besides it, so the pool is busy with work it must not wait
        behind (a bulk request of 32 texts holds a worker for milliseconds; an interactive query tokenizes in well
        under one). Traffic of one lane keeps the pool: it tokenizes while the loop serves other requests."""
        if self.in_use == n:
            return True
        lower = LANES[priority.rank + 1 :]
        if not any(self.tokenizing_requests[lane] for lane in lower):
            return False
        return sum(self.tokenizing_requests[lane] for lane in priority.at_or_above()) == 1

    def release(self, n: int) -> None:
        """Give back ``n`` slots taken by :meth:`admit`."""
        self.in_use -= n
        if self.in_use == 0:
            self.tokenizing = dict.fromkeys(LANES, 0.0)  # nothing in flight: no rounding drift survives an idle moment
            self.tokenizing_requests = dict.fromkeys(LANES, 0)
            if self._idle is not None:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no slot is taken (used to drain)."""
        if self.in_use == 0:
            return
        self._idle = asyncio.Event()
        await self._idle.wait()
