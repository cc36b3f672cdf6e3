"""The express lane: high-priority batches computed beside a running batch of a lower lane, not after it.

A forward pass cannot be interrupted, so without this an interactive query that arrives while a bulk batch computes
waits for that batch (:class:`~embedserve.core.priority.YieldBudget` keeps such batches short, at a cost in bulk
throughput, but one long input still runs whole). With ``--express-lane`` (the default) and an engine that has a
second runner (:meth:`~embedserve.engines.base.InferenceModel.express`: OpenVINO, a second compiled copy of the
model on one thread), a second backend thread takes high-lane inputs whenever the main one is computing, and computes
them at the same time; the cores are shared for those few milliseconds. An idle main thread still takes high
inputs itself, with all its threads. Once the lane is open, lower lanes keep full batches (no yielding).

The lane opens on the model's first high-priority request, in the background (until it is open, high batches wait
for the running one as before): the copy costs memory (its weights and its own kernel cache) and a compile, which
a server that never sees a high-priority request does not pay. Admission's measured speed comes from the main
thread's batches only; the express lane's are counted in every batch metric.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable

from embedserve import logs
from embedserve.core.backend import BackendThread
from embedserve.core.batching import Batch, BatchQueue
from embedserve.engines.base import InferenceModel

log = logging.getLogger("embedserve.express")


class LaneState(enum.StrEnum):
    """Where the express lane is (shown in ``/info``)."""

    WAITING = "waiting"
    """Opens on the first high-priority request."""
    OPENING = "opening"
    OPEN = "open"
    NONE = "none"
    """The engine has no express lane (or building it failed, logged)."""
    CLOSED = "closed"


class ExpressLane:
    """The express lane of one model: opened once, on demand, and closed with the model."""

    def __init__(
        self, model: InferenceModel, name: str, queue: BatchQueue, on_batch: Callable[[Batch], None] | None
    ) -> None:  # fmt: skip
        self.state = LaneState.WAITING
        self._model: InferenceModel | None = model
        """The main runner, whose :meth:`~embedserve.engines.base.InferenceModel.express` builds the lane's; dropped
        on close, so a stopped model's memory can go whatever still holds this lane."""
        self._name = name
        self._queue = queue
        self._on_batch = on_batch
        self._thread: BackendThread | None = None
        self._opening: asyncio.Task[None] | None = None

    @property
    def batches_run(self) -> int:
        """Forward passes the lane has run."""
        return self._thread.batches_run if self._thread is not None else 0

    def wanted(self) -> None:
        """A high-priority request arrived: open the lane if it is not open yet. Event loop only."""
        if self.state is LaneState.WAITING:
            self.state = LaneState.OPENING
            self._opening = asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        assert self._model is not None
        build = self._model.express
        thread = BackendThread(name=f"{self._name}-express", express=True)
        try:
            with logs.step(log, "model %s: opening the express lane for high-priority batches", self._name):
                runner = await thread.call(build)
        except Exception:
            log.exception("model %s: the express lane failed to open; high-priority batches wait", self._name)
            runner = None
        else:
            if runner is None:
                log.info("model %s: its engine has no express lane; high-priority batches wait", self._name)
        if runner is None or self.state is not LaneState.OPENING:  # none to open, or closed meanwhile
            thread.stop(0)
            if self.state is LaneState.OPENING:
                self.state = LaneState.NONE
            return
        self._thread = thread
        self._queue.stop_yielding()
        thread.serve(runner, self._queue, self._on_batch)
        self.state = LaneState.OPEN

    def close(self) -> None:
        """Stop the lane's thread (the queue is closed by then, so it has nothing left to take)."""
        self.state = LaneState.CLOSED
        self._model = None
        if self._thread is not None:
            self._thread.stop(0)
            self._thread = None
