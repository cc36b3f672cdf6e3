"""What the pipeline hands back: per-input rows with token counts, and when each stage of a request happened."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar


@dataclass(frozen=True, slots=True)
class Timings:
    """When a request went through each stage (``time.perf_counter`` seconds) and its forward-pass time."""

    started: float
    enqueued: float
    first_batch: float
    computed: float
    finished: float
    inference: float
    """Sum of the durations of the batches its inputs ran in."""

    @property
    def tokenization(self) -> float:
        """Seconds spent tokenizing."""
        return self.enqueued - self.started

    @property
    def queue(self) -> float:
        """Seconds its inputs waited for their first batch."""
        return max(0.0, self.first_batch - self.enqueued)

    @property
    def total(self) -> float:
        """Seconds from admission to results back on the event loop."""
        return self.finished - self.started


Row = TypeVar("Row")


@dataclass(frozen=True, slots=True)
class RunResult(Generic[Row]):
    """The model's output for each input, in input order, with the real token count, timings and the batches'
    trace span contexts. ``Row`` is what the model's kind yields per input (see
    :class:`~embedserve.engines.base.InferenceModel`); the task that asked for the capability knows which."""

    rows: list[Row]
    tokens: int
    timings: Timings
    batch_links: tuple[Any, ...] = ()
