"""Wrappers around the real loaded model for tests: they delegate every call and only control timing (a gate) or
inject the one failure a test needs. The vectors still come from the real model."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any, cast

import httpx

from embedserve.core.registry import default_loader
from embedserve.engines.base import InferenceModel, ModelInfo, ParallelModel
from embedserve.engines.warmup import ForwardCost
from embedserve.settings import ModelSettings


class Delegating:
    """Passes everything to the real model and records the token ids of every prepared batch."""

    def __init__(self, inner: InferenceModel) -> None:
        self.inner = inner
        self.seen: list[list[int]] = []
        self._lock = threading.Lock()

    def prepare(self, token_ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]] | None = None) -> Any:
        with self._lock:
            self.seen.extend(list(ids) for ids in token_ids)
        return self.inner.prepare(token_ids, type_ids)

    def launch(self, prepared: Any) -> Any:
        return self.inner.launch(prepared)

    def finish(self, launched: Any) -> Any:
        return self.inner.finish(launched)

    def warmup(self, max_batch_tokens: int) -> ForwardCost:
        return self.inner.warmup(max_batch_tokens)

    def express(self) -> InferenceModel | None:
        """None: the wrapper controls timing, and a second runner would go around it."""
        return None


class Gated(Delegating):
    """Forward passes wait at a gate the test opens: a backend made as slow as the test needs."""

    def __init__(self, inner: InferenceModel) -> None:
        super().__init__(inner)
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Semaphore(0)

    async def hold(self, client: httpx.AsyncClient, body: dict[str, Any]) -> asyncio.Task[httpx.Response]:
        """Close the gate and POST ``body`` to /embed; returns its pending response once its first batch is held in
        the forward pass."""
        self.gate.clear()
        held = asyncio.create_task(client.post("/embed", json=body))
        if not await asyncio.to_thread(self.waiting.acquire, True, 30):
            raise TimeoutError("no forward pass reached the gate")
        return held

    def launch(self, prepared: Any) -> Any:
        self.waiting.release()
        if not self.gate.wait(timeout=60):
            raise TimeoutError("test gate never opened")
        return super().launch(prepared)


class GatedMain(Gated):
    """Gated, but its express lane (a second runner from the real model) is not: only the main thread's forward
    passes wait at the gate."""

    def express(self) -> InferenceModel | None:
        return self.inner.express()


class Poisoned(Delegating):
    """Raises inside the forward pass of any batch holding the poison token id, like a failing kernel would."""

    def __init__(self, inner: InferenceModel, poison_id: int) -> None:
        super().__init__(inner)
        self.poison_id = poison_id

    def prepare(self, token_ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]] | None = None) -> Any:
        poisoned = any(self.poison_id in ids for ids in token_ids)
        return poisoned, super().prepare(token_ids, type_ids)

    def launch(self, prepared: Any) -> Any:
        poisoned, inner = prepared
        if poisoned:
            raise RuntimeError("CUDA error: device-side assert triggered (secret internal detail)")
        return super().launch(inner)


class Parallel(Delegating):
    """Delegates parallel passes (:class:`~embedserve.engines.base.ParallelModel`) too, counting how many computed
    at once and how many batches ran alone; a pass whose batch holds ``poison_id`` fails (when collected, or when
    launched alone), like a failing kernel would."""

    def __init__(self, inner: InferenceModel, poison_id: int = -1) -> None:
        super().__init__(inner)
        self.passes = cast(ParallelModel, inner).passes
        self.most_tokens = cast(ParallelModel, inner).most_tokens
        self.poison_id = poison_id
        self.computing = 0
        self.most_at_once = 0
        self.started = 0
        self.alone = 0

    def launch(self, prepared: Any) -> Any:
        with self._lock:
            self.alone += 1
        if (prepared.feeds["input_ids"] == self.poison_id).any():
            raise RuntimeError("oneDNN primitive failed (secret internal detail)")
        return super().launch(prepared)

    def start(self, prepared: Any, landed: Callable[[], None]) -> Any:
        def ended() -> None:
            with self._lock:
                self.computing -= 1
            landed()

        with self._lock:
            self.computing += 1
            self.started += 1
            self.most_at_once = max(self.most_at_once, self.computing)
        poisoned = bool((prepared.feeds["input_ids"] == self.poison_id).any())
        return poisoned, cast(ParallelModel, self.inner).start(prepared, ended)

    def collect(self, started: Any) -> Any:
        poisoned, inner = started
        results = cast(ParallelModel, self.inner).collect(inner)
        if poisoned:
            raise RuntimeError("oneDNN primitive failed (secret internal detail)")
        return results


def wrapping(make: Callable[[InferenceModel], Delegating]) -> tuple[Callable[..., Any], list[Delegating]]:
    """A loader that wraps the real model, and a list that receives the wrapper once it is built."""
    built: list[Delegating] = []

    def loader(spec: ModelSettings) -> tuple[ModelInfo, InferenceModel]:
        info, model = default_loader(spec)
        wrapper = make(model)
        built.append(wrapper)
        return info, wrapper

    return loader, built
