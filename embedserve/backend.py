"""The backend thread: the one thread that owns a model and runs its forward passes.

The thread pulls packed batches from a :class:`~embedserve.batching.BatchQueue` and drives the model through three
steps, so that on a GPU the next batch is taken and copied to the device while the current one computes:

``prepare`` (pad, host -> device copy) -> ``launch`` (forward pass, pooling; may return before the device is done)
-> ``finish`` (wait, device -> host, one result per input).

On CPU ``launch`` computes synchronously, so the next batch is taken only after the forward pass and holds
everything that arrived meanwhile. An exception fails only the batch it happened in; the thread carries on. This
module does not import torch: the model object does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from embedserve.batching import Batch, BatchQueue

log = logging.getLogger("embedserve.backend")


@dataclass(frozen=True)
class ModelInfo:
    """What the rest of the server needs to know about a loaded model."""

    model_id: str
    revision: str | None
    path: str
    architecture: str
    kind: str
    pooling: str
    dim: int
    max_input_length: int
    dtype: str
    device: str
    tokenizer_json: str = field(repr=False)
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    lowercase: bool = False


class InferenceModel(Protocol):
    """What the backend thread needs from a model. Implemented by :mod:`embedserve.modeling`."""

    def prepare(self, token_ids: Sequence[Sequence[int]]) -> Any:
        """Pad a batch and move it to the device."""

    def launch(self, prepared: Any) -> Any:
        """Start the forward pass (and pooling) for a prepared batch."""

    def finish(self, launched: Any) -> Iterable[Any]:
        """Wait for a launched batch; one host-side result per input, in batch order."""

    def warmup(self, max_batch_tokens: int) -> float:
        """Run representative batches so slow first calls and out-of-memory show at start-up. Returns the fixed cost
        of one forward pass expressed in padded tokens (what the packer weighs batch count against padding with)."""


class BackendThread:
    """Runs one model's batches, one at a time, on a dedicated daemon thread."""

    def __init__(self, model: InferenceModel, queue: BatchQueue, *, name: str) -> None:
        self._model = model
        self._queue = queue
        self._thread = threading.Thread(target=self._run, name=f"embedserve-backend-{name}", daemon=True)
        self.batches_run = 0
        self.largest_batch = 0

    def start(self) -> None:
        """Start pulling batches."""
        self._thread.start()

    @property
    def alive(self) -> bool:
        """False once the thread has stopped, on purpose or not."""
        return self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> list[Any]:
        """Close the queue, let the batch in hand finish, and join. Returns entries that never ran."""
        left = self._queue.close()
        self._thread.join(timeout)
        return left

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # never die silently: health turns 503 and queued work fails instead of hanging
            log.exception("backend thread crashed")
            self._queue.fail_pending(exc)

    def _loop(self) -> None:
        ahead: tuple[Batch, Any] | None = None
        while True:
            if ahead is None:
                batch = self._queue.take(block=True)
                if batch is None:
                    return
                ahead = self._prepare(batch)
                if ahead is None:
                    continue
            batch, prepared = ahead
            ahead = None
            batch.t_start = time.perf_counter()
            try:
                launched = self._model.launch(prepared)
                # Overlap: on an asynchronous device the next batch is padded and copied while this one computes.
                following = self._queue.take(block=False)
                if following is not None:
                    ahead = self._prepare(following)
                outputs = self._model.finish(launched)
            except Exception as exc:
                self._failed(batch, exc)
                continue
            batch.t_end = time.perf_counter()
            self.batches_run += 1
            self.largest_batch = max(self.largest_batch, len(batch.entries))
            batch.complete(outputs)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "batch of %d inputs: %d tokens, %d padded, %.1f ms",
                    len(batch.entries), batch.real_tokens, batch.padded_tokens, (batch.t_end - batch.t_start) * 1000,
                )  # fmt: skip

    def _prepare(self, batch: Batch) -> tuple[Batch, Any] | None:
        try:
            return batch, self._model.prepare(batch.token_ids)
        except Exception as exc:
            self._failed(batch, exc)
            return None

    @staticmethod
    def _failed(batch: Batch, exc: Exception) -> None:
        request_ids = sorted({entry.job.request_id for entry in batch.entries})
        log.error(
            "forward pass failed for a batch of %d inputs (requests %s)",
            len(batch.entries),
            ", ".join(request_ids),
            exc_info=exc,
        )
        batch.fail(exc)
