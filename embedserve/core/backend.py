"""The backend thread: the one thread that owns a model and runs its forward passes.

The thread pulls packed batches from a :class:`~embedserve.core.batching.BatchQueue` and drives the model through three
steps, so that on a GPU the next batch is taken and copied to the device while the current one computes:

``prepare`` (pad, host -> device copy) -> ``launch`` (forward pass, pooling; may return before the device is done)
-> ``finish`` (wait, device -> host, one result per input).

On CPU ``launch`` computes synchronously, so the next batch is taken only after the forward pass and holds
everything that arrived meanwhile. A model that computes several passes at once
(:class:`~embedserve.engines.base.ParallelModel`, OpenVINO's streams) gets up to that many batches in flight while
more than one is waiting; the thread still takes every batch and hands back every result, and the engine's own
threads compute. An exception fails only the batch it happened in; the thread carries on. This module does not
import torch: the model object (from an engine, see :mod:`embedserve.engines.base`) does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar, cast

from embedserve.core.batching import Batch, BatchQueue
from embedserve.engines.base import ImageModel, InferenceModel, ParallelModel

log = logging.getLogger("embedserve.backend")
T = TypeVar("T")


class BackendThread:
    """The one thread that owns a model: it loads it, warms it up, then runs its batches one at a time, at a lower
    scheduling priority than the event loop (:data:`COMPUTE_NICENESS`).

    Loading and warm-up run here too, not on a helper thread, because on CPU every thread that ever runs a torch
    op keeps its own OpenMP worker pool: with more pooled threads than cores, OpenMP stops spin-waiting and every op
    pays a sleep/wake-up (measured: a 5 ms forward pass became 7.5 ms).
    """

    def __init__(self, *, name: str, express: bool = False) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"embedserve-backend-{name}", initializer=_lower_priority
        )
        self._express = express
        """This thread is the express lane's (:mod:`embedserve.core.express`): it takes high-lane batches only."""
        self._serving: Future[None] | None = None
        self._model: InferenceModel | None = None
        self._queue: BatchQueue | None = None
        self._on_batch: Callable[[Batch], None] | None = None
        self.batches_run = 0
        self.largest_batch = 0

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the backend thread (before serving starts: loading, warm-up)."""
        return await asyncio.wrap_future(self._executor.submit(fn, *args))

    def serve(self, model: InferenceModel, queue: BatchQueue, on_batch: Callable[[Batch], None] | None = None) -> None:
        """Start pulling batches from ``queue`` and running them through ``model``; ``on_batch`` observes each
        finished batch on this thread before its results are handed back."""
        self._model, self._queue, self._on_batch = model, queue, on_batch
        self._serving = self._executor.submit(self._run)

    @property
    def alive(self) -> bool:
        """True while serving; False before, after a stop, or after a crash."""
        return self._serving is not None and not self._serving.done()

    def stop(self, timeout: float | None = None) -> list[Any]:
        """Close the queue, let the batch in hand finish (up to ``timeout``). Returns entries that never ran."""
        left = self._queue.close() if self._queue is not None else []
        if self._serving is not None:
            with contextlib.suppress(TimeoutError):
                self._serving.result(timeout)
        self._executor.shutdown(wait=False)
        # The model's memory (weights, the runtime's buffers) goes with the last reference to it, whatever still
        # references this thread: a process that stops one app and starts another (the tests) gets it back.
        self._model = None
        return left

    def _run(self) -> None:
        assert self._queue is not None
        try:
            self._loop()
        except BaseException as exc:  # never die silently: health turns 503 and queued work fails instead of hanging
            log.exception("backend thread crashed")
            self._queue.fail_pending(exc)

    def _loop(self) -> None:
        model, queue = self._model, self._queue
        assert model is not None
        assert queue is not None
        if getattr(model, "passes", 1) > 1 and not self._express:
            self._parallel(cast(ParallelModel, model), queue)
            return
        ahead: tuple[Batch, Any] | None = None
        while True:
            if ahead is None:
                batch = queue.take(block=True, express=self._express)
                if batch is None:
                    return
                ahead = self._prepare(batch)
                if ahead is None:
                    continue
            batch, prepared = ahead
            ahead = None
            batch.t_start = time.perf_counter()
            try:
                launched = model.launch(prepared)
                # Overlap: on an asynchronous device the next batch is padded and copied while this one computes.
                following = queue.take(block=False, express=self._express)
                if following is not None:
                    ahead = self._prepare(following)
                outputs = model.finish(launched)
            except Exception as exc:
                self._failed(batch, exc)
                continue
            batch.t_end = time.perf_counter()
            self._deliver(batch, outputs)

    def _parallel(self, model: ParallelModel, queue: BatchQueue) -> None:
        """Up to ``model.passes`` batches compute at once while more than one is waiting. A batch that finds nothing
        else running or queued, or is larger than a parallel pass takes (after the running ones end), computes
        alone, on every thread. The engine's threads report each pass's end (``landed``, then a wake-up of the
        queue's wait), and this thread collects and delivers it."""
        landed: deque[Batch] = deque()
        running: dict[int, tuple[Batch, Any]] = {}

        def ended(batch: Batch) -> None:  # on the engine's thread
            batch.t_end = time.perf_counter()
            landed.append(batch)
            queue.wake()

        while queue.wait(room=len(running) < model.passes, woken=lambda: bool(landed)):
            while landed:
                done = running.pop(id(landed.popleft()), None)
                if done is not None:  # else collected already, while a large batch waited for it
                    self._collect(done[0], functools.partial(model.collect, done[1]))
            while len(running) < model.passes and (ahead := self._next(queue)) is not None:
                batch, prepared = ahead
                if batch.padded_tokens > model.most_tokens or (not running and not len(queue)):
                    self._collect_running(model, running)  # a large batch waits for the running passes
                    batch.t_start = time.perf_counter()
                    self._collect(batch, functools.partial(_alone, model, prepared))
                    break
                for other, _ in running.values():
                    other.shared += 1
                batch.shared = len(running) + 1
                batch.t_start = time.perf_counter()
                try:
                    running[id(batch)] = batch, model.start(prepared, functools.partial(ended, batch))
                except Exception as exc:
                    self._failed(batch, exc)
        self._collect_running(model, running)  # closed: the passes in flight still finish and answer

    def _collect_running(self, model: ParallelModel, running: dict[int, tuple[Batch, Any]]) -> None:
        """Wait for every pass in flight and deliver it; none is left running."""
        for batch, started in running.values():
            self._collect(batch, functools.partial(model.collect, started))
        running.clear()

    def _next(self, queue: BatchQueue) -> tuple[Batch, Any] | None:
        """The next batch, prepared, without waiting; None when nothing is queued."""
        while (batch := queue.take(block=False)) is not None:
            ahead = self._prepare(batch)
            if ahead is not None:
                return ahead
        return None

    def _collect(self, batch: Batch, results: Callable[[], Iterable[Any]]) -> None:
        try:
            outputs = results()
        except Exception as exc:
            self._failed(batch, exc)
            return
        batch.t_end = batch.t_end or time.perf_counter()
        self._deliver(batch, outputs)

    def _deliver(self, batch: Batch, outputs: Iterable[Any]) -> None:
        """A computed batch: its tokens leave the queue's count, the observer sees it, its results go back."""
        assert self._queue is not None
        self._queue.done(batch)
        self.batches_run += 1
        self.largest_batch = max(self.largest_batch, len(batch.entries))
        if self._on_batch is not None:
            try:
                self._on_batch(batch)
            except Exception:  # observing must never cost a request its answer
                log.exception("batch observer failed")
        batch.complete(outputs)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "batch of %d inputs (%d passes at once): %d tokens, %d padded, %.1f ms", len(batch.entries),
                batch.shared, batch.real_tokens, batch.padded_tokens, (batch.t_end - batch.t_start) * 1000,
            )  # fmt: skip

    def _prepare(self, batch: Batch) -> tuple[Batch, Any] | None:
        assert self._model is not None
        try:
            images = batch.images
            if images is not None:  # only a model with the image capability is ever sent images
                return batch, cast(ImageModel, self._model).prepare_images(images)
            return batch, self._model.prepare(batch.token_ids, batch.type_ids)
        except Exception as exc:
            self._failed(batch, exc)
            return None

    def _failed(self, batch: Batch, exc: Exception) -> None:
        if self._queue is not None:
            self._queue.done(batch)
        request_ids = sorted({entry.job.request_id for entry in batch.entries})
        log.error(
            "forward pass failed for a batch of %d inputs (requests %s)",
            len(batch.entries),
            ", ".join(request_ids),
            exc_info=exc,
        )
        batch.fail(exc)


def _alone(model: InferenceModel, prepared: Any) -> Iterable[Any]:
    return model.finish(model.launch(prepared))


COMPUTE_NICENESS = 10
"""The backend thread raises its own nice value by this much (up to 19) before it loads the model, and the
engine's threads (OpenVINO's streams, ONNX Runtime's and torch's workers), started from it, inherit it; the event
loop and the tokenizers keep the process's. When the cores are all busy, the event loop then gets them first for the
little it needs, so a refusal under a flood stays fast and admitted requests are not held behind computing threads
(a 10x flood on 2 cores with parallel passes, 20 s: 429 p99 11 ms against 86 ms, the same goodput); with a core free
nothing changes. Raising a nice value needs no privilege; where it fails, the threads keep the process's."""


def _lower_priority() -> None:
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: no setpriority on this platform
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + COMPUTE_NICENESS))
