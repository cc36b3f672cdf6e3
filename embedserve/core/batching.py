"""Queue entries, batch packing and the hand-off to the backend thread (admission is in
:mod:`embedserve.core.admission`).

* :class:`Job` lives on the event loop and is only touched there (its deadline is read by the packer).
* :class:`BatchQueue` is the one structure shared with the backend thread. The loop appends entries under its lock;
  the backend thread takes a packed :class:`Batch` under the same lock at the moment it is ready for one, so a batch
  holds everything that arrived while the previous forward pass ran (continuous batching, no wait timer, no polling).
  Results go back to the loop with ``call_soon_threadsafe``: one callback per batch, never a future per input.
* The queue counts the real tokens it holds and the tokens of the batch running, for admission's predicted wait.
* Each priority lane (:mod:`embedserve.core.priority`) has its own queue; a batch holds one lane's inputs, the lane
  chosen by :class:`~embedserve.core.priority.LaneChooser` (higher first, a waiting lane passed over at most
  :data:`~embedserve.core.priority.MAX_PASSES` batches in a row). While a higher lane is in use, a lower lane's
  batches are cut short (:class:`~embedserve.core.priority.YieldBudget`).
* An input whose job's deadline passed while it waited is never computed: the packer drops it and fails its job
  with :class:`~embedserve.errors.DeadlineExceededError`.
* An engine that pads texts to a multiple of some tokens (``length_multiple``, see
  :func:`~embedserve.engines.base.padded_length`) has the packer weigh each text at its padded length, so inputs
  that pad to the same length batch together at no padding cost, and its batches hold one of fewer row counts
  (:func:`~embedserve.engines.base.shape_rows`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from embedserve.core.packing import pack
from embedserve.core.priority import LANES, LaneChooser, Priority, YieldBudget
from embedserve.engines.base import padded_length, shape_rows
from embedserve.errors import DeadlineExceededError, UnhealthyError

MIN_PACK_WINDOW = 32
MAX_PACK_WINDOW = 1024
"""The packer looks at the oldest queued entries only: four times the last batch's size, within these bounds.

Inputs are packed by length, so a younger input may ride an earlier batch than an older one; the window bounds how
far ahead it can jump to about four batches of work, which keeps a queued input's wait close to the wait admission
predicted for it (with the whole queue in view, a flood's inputs waited up to twice the prediction). Four batches
still give the packer inputs of similar lengths to choose from, and on a GPU, whose batches are large, the window
grows with them. It also bounds the packer's cost when the admission bound is huge."""


class Job:
    """One request's inputs in flight, and the future its handler awaits."""

    __slots__ = (
        "_last_batch",
        "batch_links",
        "deadline",
        "future",
        "inference_seconds",
        "priority",
        "remaining",
        "request_id",
        "rows",
        "t_enqueued",
        "t_first_start",
        "t_last_end",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, size: int, request_id: str = "", deadline: float | None = None,
        priority: Priority = Priority.NORMAL,
    ) -> None:  # fmt: skip
        self.future: asyncio.Future[None] = loop.create_future()
        self.priority = priority
        """The lane its inputs queue in."""
        self.deadline = deadline
        """``time.perf_counter()`` after which the client no longer wants the result (None: no deadline)."""
        self.rows: list[Any] = [None] * size
        self.remaining = size
        self.request_id = request_id
        self.t_enqueued = time.perf_counter()
        self.t_first_start: float | None = None
        self.t_last_end = 0.0
        self.inference_seconds = 0.0
        self.batch_links: list[Any] = []
        self._last_batch: Batch | None = None

    @property
    def cancelled(self) -> bool:
        """True once the handler gave up (client gone); the packer then skips this job's entries."""
        return self.future.done() and self.remaining > 0

    def deliver(self, index: int, row: Any, batch: Batch) -> None:
        """Store the result of input ``index``; resolve the future when the last one lands. Loop only."""
        if self.future.done():
            return
        self.rows[index] = row
        self.remaining -= 1
        if batch is not self._last_batch:
            self._last_batch = batch
            self.inference_seconds += batch.t_end - batch.t_start
            if self.t_first_start is None or batch.t_start < self.t_first_start:
                self.t_first_start = batch.t_start
            self.t_last_end = max(self.t_last_end, batch.t_end)
            if batch.span_context is not None:
                self.batch_links.append(batch.span_context)
        if self.remaining == 0:
            self.future.set_result(None)

    def fail(self, exc: BaseException) -> None:
        """Fail the whole job. Loop only."""
        if not self.future.done():
            self.future.set_exception(exc)


class Entry:
    """One input of one job, waiting in the queue: token ids, or an image the engine preprocessed (``pixels``).

    ``cost`` is what it adds to a batch's padded cost: its token count, or for an image the positions the vision
    tower computes for it (the same for every image of a model, so images batch by count)."""

    __slots__ = ("cost", "ids", "index", "job", "pixels", "type_ids")

    def __init__(
        self, job: Job, index: int, ids: list[int], type_ids: list[int] | None = None, pixels: Any = None,
        cost: int | None = None,
    ) -> None:  # fmt: skip
        self.job = job
        self.index = index
        self.ids = ids
        self.type_ids = type_ids
        self.pixels = pixels
        self.cost = len(ids) if cost is None else cost


class Batch:
    """Entries packed into one forward pass. Created and timed on the backend thread; resolved on the loop."""

    __slots__ = ("entries", "express", "loop", "shared", "span_context", "t_end", "t_start", "width")

    def __init__(
        self, entries: list[Entry], loop: asyncio.AbstractEventLoop, width: int | None = None, express: bool = False
    ) -> None:  # fmt: skip
        self.entries = entries
        self.loop = loop
        self.express = express
        """Taken by the express lane's thread (:mod:`embedserve.core.express`)."""
        self.width = max(entry.cost for entry in entries) if width is None else width
        """The padded length of each input: the longest input's, or the engine's padded length for it."""
        self.t_start = 0.0
        self.t_end = 0.0
        self.shared = 1
        """Forward passes computing while this one started, itself included: they shared the cores."""
        self.span_context: Any = None
        """Set by tracing, when on, so that the requests served by this batch can link to its span."""

    @property
    def token_ids(self) -> list[list[int]]:
        """The inputs' token ids, in batch order."""
        return [entry.ids for entry in self.entries]

    @property
    def images(self) -> list[Any] | None:
        """The preprocessed images of an image batch, in batch order; None for a batch of texts (the packer never
        mixes the two)."""
        if self.entries[0].pixels is None:
            return None
        return [entry.pixels for entry in self.entries]

    @property
    def type_ids(self) -> list[list[int]] | None:
        """Token type ids, for models fed text pairs; None otherwise (one model is fed one form)."""
        if self.entries[0].type_ids is None:
            return None
        return [entry.type_ids or [0] * len(entry.ids) for entry in self.entries]

    @property
    def padded_tokens(self) -> int:
        """What the forward pass computes: inputs x padded length."""
        return len(self.entries) * self.width

    @property
    def real_tokens(self) -> int:
        """Tokens that are not padding (an image counts its vision positions)."""
        return sum(entry.cost for entry in self.entries)

    def complete(self, outputs: Iterable[Any]) -> None:
        """Hand per-input results (in batch order) back to the loop. Thread-safe."""
        self.loop.call_soon_threadsafe(self._resolve, outputs)

    def fail(self, exc: BaseException) -> None:
        """Fail every job with an input in this batch. Thread-safe."""
        self.loop.call_soon_threadsafe(self._reject, exc)

    def _resolve(self, outputs: Iterable[Any]) -> None:
        for entry, row in zip(self.entries, outputs, strict=True):
            entry.job.deliver(entry.index, row, self)

    def _reject(self, exc: BaseException) -> None:
        for entry in self.entries:
            entry.job.fail(exc)


class BatchQueue:
    """Queued inputs of one model, shared between the event loop (producer) and its backend thread (consumer)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        max_batch_tokens: int,
        max_batch_requests: int | None,
        overhead_tokens: float = 0.0,
        lane_yield: bool = True,
        length_multiple: int = 1,
        max_length: int = 0,
    ) -> None:
        self._loop = loop
        self._multiple = length_multiple
        self._max_length = max_length
        """Texts are padded to a multiple of ``length_multiple`` tokens, but not past ``max_length``."""
        self._max_tokens = max_batch_tokens
        self._max_requests = max_batch_requests
        self._overhead_tokens = overhead_tokens
        self._cond = threading.Condition()
        self._lanes: dict[Priority, list[Entry]] = {lane: [] for lane in LANES}
        self._lane_tokens = dict.fromkeys(LANES, 0)
        self._chooser = LaneChooser()
        self._closed = False
        self._running_tokens = 0
        self._main_running = 0
        """Batches the main backend thread has taken and not yet finished (the express lane works only meanwhile)."""
        self._window = MIN_PACK_WINDOW
        self._yield = YieldBudget() if lane_yield else None

    def __len__(self) -> int:
        return sum(map(len, self._lanes.values()))

    def queued(self, lane: Priority) -> int:
        """Inputs waiting in one lane."""
        return len(self._lanes[lane])

    @property
    def tokens_ahead(self) -> int:
        """Real tokens queued (every lane) plus those of the batch being computed."""
        return sum(self._lane_tokens.values()) + self._running_tokens

    def tokens_ahead_of(self, lane: Priority) -> int:
        """The work a new request of ``lane`` waits behind: tokens queued in it and higher lanes, plus the running
        batch (lower lanes get at most one batch in :data:`~embedserve.core.priority.MAX_PASSES` + 1 meanwhile)."""
        return sum(self._lane_tokens[higher] for higher in lane.at_or_above()) + self._running_tokens

    def put(
        self, job: Job, token_ids: list[list[int]], type_ids: list[list[int]] | None = None,
        pixels: Sequence[Any] | None = None, image_cost: int = 0,
    ) -> None:  # fmt: skip
        """Queue every input of ``job``. Loop side. Raises UnhealthyError once the queue is closed. ``pixels`` has
        one entry per input: a preprocessed image (costing ``image_cost``), or None for a text input."""
        if pixels is not None:
            entries = [Entry(job, i, ids) if image is None else Entry(job, i, ids, pixels=image, cost=image_cost)
                       for i, (ids, image) in enumerate(zip(token_ids, pixels, strict=True))]  # fmt: skip
        else:
            types = [None] * len(token_ids) if type_ids is None else type_ids
            entries = [Entry(job, i, ids, t) for i, (ids, t) in enumerate(zip(token_ids, types, strict=True))]
        with self._cond:
            if self._closed:
                raise UnhealthyError("the model is shutting down")
            self._lanes[job.priority].extend(entries)
            self._lane_tokens[job.priority] += sum(entry.cost for entry in entries)
            if self._yield is not None:
                self._yield.queued(job.priority, time.perf_counter())
            self._cond.notify_all()  # the main thread and, for a high job, the express lane's

    def wait(self, *, room: bool, woken: Callable[[], bool]) -> bool:
        """Block until an input is queued (only with ``room``: a forward pass could start) or ``woken()`` holds,
        which is checked under the lock that :meth:`wake` takes. False once the queue is closed. Backend side."""
        with self._cond:
            while not self._closed:
                if woken() or (room and len(self)):
                    return True
                self._cond.wait()
            return False

    def wake(self) -> None:
        """Wake :meth:`wait` to check its ``woken`` again (a forward pass ended). Any thread."""
        with self._cond:
            self._cond.notify_all()

    def stop_yielding(self) -> None:
        """From now on lower lanes' batches are not cut short for higher ones (the express lane is open)."""
        with self._cond:
            self._yield = None

    def discard(self, job: Job) -> None:
        """Drop the still-queued inputs of a job whose client went away. Loop side."""
        with self._cond:
            self._keep(lambda entry: entry.job is not job)

    def _keep(self, wanted: Callable[[Entry], bool]) -> list[Entry]:
        """Keep the pending entries ``wanted`` accepts, in every lane; returns the others. Under the lock."""
        dropped: list[Entry] = []
        for lane, pending in self._lanes.items():
            kept: list[Entry] = []
            gone: list[Entry] = []
            for entry in pending:
                (kept if wanted(entry) else gone).append(entry)
            self._lanes[lane] = kept
            self._lane_tokens[lane] -= sum(entry.cost for entry in gone)
            dropped.extend(gone)
        return dropped

    def done(self, batch: Batch) -> None:
        """A batch from :meth:`take` has been computed (or failed): its tokens are no longer ahead, and a computed
        one's time joins the lanes' timings (:class:`~embedserve.core.priority.YieldBudget`). Backend side."""
        with self._cond:
            self._running_tokens = max(0, self._running_tokens - batch.real_tokens)
            if not batch.express:
                self._main_running = max(0, self._main_running - 1)
            if self._yield is not None and batch.entries and batch.t_end > batch.t_start:
                lane = batch.entries[0].job.priority
                self._yield.computed(lane, batch.t_end - batch.t_start, batch.padded_tokens)

    def take(self, *, block: bool, express: bool = False) -> Batch | None:
        """The next packed batch. Backend side. Returns None when closed (or, with ``block=False``, when empty).
        ``express``: for the express lane, high-lane inputs only, and only while a main batch computes."""
        with self._cond:
            while True:
                if any(pending and pending[0].job.cancelled for pending in self._lanes.values()):
                    self._keep(lambda entry: not entry.job.cancelled)
                    continue
                if len(self):
                    self._drop_expired()
                if (self._lanes[Priority.HIGH] and self._main_running) if express else len(self):
                    break
                if self._closed or not block:
                    return None
                self._cond.wait()
            if express:
                lane = Priority.HIGH
            else:
                lane = self._chooser.choose([lane for lane, pending in self._lanes.items() if pending])
            pending = self._lanes[lane]
            size = self._window
            window = pending[:size]
            # Texts and images run through different towers: a batch holds the oldest input's modality only.
            image = window[0].pixels is not None
            alike = [i for i, entry in enumerate(window) if (entry.pixels is not None) is image]
            lengths = [window[i].cost if image else self._padded(window[i].cost) for i in alike]
            budget = None if self._yield is None else self._yield.tokens(lane, time.perf_counter())
            limit = self._max_tokens if budget is None else min(self._max_tokens, budget)
            chosen = [alike[k] for k in self._shaped(pack(lengths, limit, self._max_requests, self._overhead_tokens))]
            picked = set(chosen)
            entries = [window[i] for i in chosen]
            self._lanes[lane] = [entry for i, entry in enumerate(window) if i not in picked] + pending[size:]
            self._window = max(MIN_PACK_WINDOW, min(MAX_PACK_WINDOW, 4 * len(chosen)))
            taken = sum(window[i].cost for i in chosen)
            self._lane_tokens[lane] -= taken
            self._running_tokens += taken
            if not express:
                self._main_running += 1
                if self._lanes[Priority.HIGH]:
                    self._cond.notify_all()  # high inputs left waiting: the express lane may take them now
        longest = max(entry.cost for entry in entries)
        return Batch(entries, self._loop, longest if image else self._padded(longest, len(entries)), express)

    def _shaped(self, chosen: list[int]) -> list[int]:
        """``chosen`` (ascending length; 0 is the oldest) cut to :func:`~embedserve.engines.base.shape_rows` inputs
        for an engine that pads (it compiles per shape): the longest go, or the shortest if the oldest would."""
        keep = shape_rows(len(chosen)) if self._multiple > 1 else len(chosen)
        return chosen[:keep] if chosen.index(0) < keep else chosen[len(chosen) - keep :]

    def _padded(self, length: int, rows: int = 2) -> int:
        return padded_length(length, self._multiple, self._max_length or length, rows)

    def _drop_expired(self) -> None:
        """Fail the jobs whose deadline passed while their inputs waited; their inputs are never computed."""
        now = time.perf_counter()
        expired = self._keep(lambda entry: entry.job.deadline is None or entry.job.deadline > now)
        if expired:
            jobs = {id(entry.job): entry.job for entry in expired}
            self._loop.call_soon_threadsafe(_expire, list(jobs.values()))

    def close(self) -> list[Entry]:
        """Stop handing out batches; returns what was still queued so the caller can fail it."""
        with self._cond:
            self._closed = True
            left = [entry for lane in LANES for entry in self._lanes[lane]]
            self._lanes = {lane: [] for lane in LANES}
            self._lane_tokens = dict.fromkeys(LANES, 0)
            self._cond.notify_all()
        return left

    def fail_pending(self, exc: BaseException) -> None:
        """Close, and fail every job that still had inputs queued. Thread-safe."""
        left = self.close()
        if left:
            Batch(left, self._loop).fail(exc)


def _expire(jobs: list[Job]) -> None:
    for job in jobs:
        waited = time.perf_counter() - job.t_enqueued
        job.fail(DeadlineExceededError(f"the request's deadline passed after {waited * 1000:.0f} ms in the queue; "
                                       "nothing was computed for it"))  # fmt: skip
