"""Priority lanes: which lane the next batch comes from, and how much of a model's limits each lane may use.

Three lanes, top first: ``high`` (interactive queries), ``normal`` (the default) and ``low`` (bulk backfills).

* **Packing.** A batch holds one lane's inputs. The next batch comes from the highest lane with inputs waiting,
  except that a lane with inputs waiting is passed over for at most :data:`MAX_PASSES` (3) batches in a row: then it
  is served next (when two lanes are due at once, the one passed over more often, then the higher one). So a waiting
  lane's next batch is at most :data:`STARVATION_BOUND` (4) batches of other lanes away. Under a flood of every lane
  the batches go high, high, normal, low, over and over (shares 2:1:1); with two lanes flooded the lower one gets
  one batch in four.
* **Yielding** (:class:`YieldBudget`). A running forward pass cannot be interrupted, so while a higher lane is in
  use (a request of it was queued in the last :data:`ACTIVE_WINDOW_S`), a lower lane's batches are cut to about the
  compute time of the higher lane's own recent batches: a newly arrived interactive query then waits for at most
  about one of its own forward passes before its own. The lower lane's throughput drops meanwhile (smaller batches,
  each paying the fixed cost of a pass) and is back to full batches a second after the higher lane goes quiet.
* **Admission** (:class:`LaneLimits`). ``high`` may fill every slot and is refused over ``--max-queue-time``;
  ``normal`` leaves ``--priority-reserve`` of the slots free for ``high``; ``low`` may use ``--low-priority-share``
  of the slots and of ``--max-queue-time``. A lane's predicted wait counts the work ahead of it: queued inputs of
  its own and higher lanes, plus the batch running. So a bulk backfill in ``low`` is refused long before it can fill
  the model, and a ``high`` request's wait does not count the backfill's queue.

Core layer: plain values, no HTTP; the HTTP layer maps a header, a body field and the API key's default onto
:class:`Priority`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Collection
from dataclasses import dataclass


class Priority(enum.StrEnum):
    """A request's lane; the lanes are ordered top first."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for the top lane, growing downwards."""
        return _RANK[self]

    def at_or_above(self) -> tuple[Priority, ...]:
        """This lane and the lanes served before it: the ones whose queued work is ahead of it."""
        return LANES[: self.rank + 1]


LANES: tuple[Priority, ...] = tuple(Priority)
"""Every lane, top first."""
_RANK = {lane: rank for rank, lane in enumerate(LANES)}

MAX_PASSES = 3
"""Batches in a row a lane with inputs waiting may be passed over for other lanes before it is served next."""

STARVATION_BOUND = MAX_PASSES + len(LANES) - 2
"""The most batches of other lanes that can run while a lane has inputs waiting (4 with three lanes): a lane due
after :data:`MAX_PASSES` may still wait for the other lanes that are due at the same moment, one batch each."""


ACTIVE_WINDOW_S = 1.0
"""A lane counts as in use for this long after a request of it was queued. A second covers the gap between one
user's queries, and costs the lower lanes at most a second of short batches after the last one."""

TIMING_WEIGHT = 0.2
"""Weight of the newest batch in the running averages of batch time."""


class YieldBudget:
    """How long each lane's batches take, and from that the padded-token budget of a lower lane's batch while a
    higher lane is in use. Owned by the batch queue (called under its lock)."""

    def __init__(self) -> None:
        self._last_queued = dict.fromkeys(LANES, float("-inf"))
        self._lane_seconds: dict[Priority, float | None] = dict.fromkeys(LANES)
        """Average compute time of each lane's batches."""
        self._seconds_per_token: float | None = None
        """Average compute time per padded token, over every batch."""

    def queued(self, lane: Priority, now: float) -> None:
        """A request of ``lane`` was queued at ``now`` (``time.perf_counter()``)."""
        self._last_queued[lane] = now

    def computed(self, lane: Priority, seconds: float, padded_tokens: int) -> None:
        """A batch of ``lane`` took ``seconds`` to compute ``padded_tokens``."""
        self._lane_seconds[lane] = _average(self._lane_seconds[lane], seconds)
        self._seconds_per_token = _average(self._seconds_per_token, seconds / max(1, padded_tokens))

    def tokens(self, lane: Priority, now: float) -> int | None:
        """The padded-token budget of a ``lane`` batch: what the in-use higher lanes' own batches take to compute,
        in this model's measured time per token (the packer always takes one input, whatever the budget). None when
        no higher lane is in use, or before there is a measurement to go by."""
        busy = [self._lane_seconds[higher] for higher in LANES[: lane.rank]
                if now - self._last_queued[higher] < ACTIVE_WINDOW_S]  # fmt: skip
        known = [seconds for seconds in busy if seconds is not None]
        if not known or self._seconds_per_token is None:
            return None
        return max(1, int(min(known) / self._seconds_per_token))


def _average(current: float | None, sample: float) -> float:
    return sample if current is None else current + TIMING_WEIGHT * (sample - current)


class LaneChooser:
    """Picks the lane of each next batch; owned by the batch queue (called under its lock)."""

    def __init__(self) -> None:
        self._passed = dict.fromkeys(LANES, 0)

    def choose(self, waiting: Collection[Priority]) -> Priority:
        """The lane the next batch comes from, among the ``waiting`` ones (not empty), and count the others as
        passed over."""
        due = [lane for lane in LANES if lane in waiting and self._passed[lane] >= MAX_PASSES]
        if due:
            lane = max(due, key=lambda candidate: (self._passed[candidate], -candidate.rank))
        else:
            lane = next(candidate for candidate in LANES if candidate in waiting)
        for other in LANES:
            self._passed[other] = self._passed[other] + 1 if other in waiting and other is not lane else 0
        return lane


@dataclass(frozen=True, slots=True)
class LaneLimits:
    """How much of a model's admission limits each lane may use."""

    capacity: int
    """--max-concurrent-requests: the top lane may fill every slot."""
    max_queue_time: float
    """--max-queue-time (0: no predicted-wait limit for any lane)."""
    reserve: float = 0.0
    """Share of the slots only ``high`` may take (--priority-reserve)."""
    low_share: float = 1.0
    """Share of the slots and of the predicted-wait limit ``low`` may use (--low-priority-share)."""

    def slots(self, lane: Priority) -> int:
        """Slots in use (by every lane) beyond which a request of ``lane`` is refused; at least one."""
        if lane is Priority.HIGH:
            return self.capacity
        below_top = self.capacity - math.floor(self.capacity * self.reserve)
        if lane is Priority.NORMAL:
            return max(1, below_top)
        return max(1, min(below_top, math.floor(self.capacity * self.low_share)))

    def wait(self, lane: Priority) -> float:
        """Longest predicted wait a request of ``lane`` is admitted with (0: no limit)."""
        return self.max_queue_time * self.low_share if lane is Priority.LOW else self.max_queue_time
