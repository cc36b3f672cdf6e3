"""Served model name -> runtime; loading them, resolving the ``model`` field, aggregate health and draining."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from embedserve import engines
from embedserve.core.batching import Batch
from embedserve.core.embedding_cache import EmbeddingCache
from embedserve.core.priority import Priority
from embedserve.core.runtime import Loader, ModelRuntime, State
from embedserve.engines.base import InferenceModel, ModelInfo
from embedserve.errors import ModelLoadError, ModelNotFoundError, OverloadedError
from embedserve.settings import ModelSettings, Settings

log = logging.getLogger("embedserve.registry")


def default_loader(spec: ModelSettings) -> tuple[ModelInfo, InferenceModel]:
    """Load with the engines (:func:`embedserve.engines.load`), which import their runtime (torch) only when called,
    so that importing the server does not."""
    return engines.load(spec)


class Registry:
    """Every model this process serves, in configuration order; the first is the default."""

    def __init__(self, settings: Settings, loader: Loader = default_loader) -> None:
        self.cache = EmbeddingCache.from_settings(settings.cache)
        """One embedding cache for every model (the model is part of each key); None when off."""
        self.runtimes: dict[str, ModelRuntime] = {
            spec.served_name: ModelRuntime(spec, loader, self.cache) for spec in settings.models
        }
        self.default = next(iter(self.runtimes.values()))
        self.partial = False

    def resolve(self, name: str | None) -> ModelRuntime:
        """The runtime serving ``name``; the default model when ``name`` is None."""
        if name is None:
            return self.default
        runtime = self.runtimes.get(name)
        if runtime is None:
            served = ", ".join(repr(n) for n in self.runtimes)
            raise ModelNotFoundError(f"model {name!r} is not served here; served models: {served}", param="model")
        return runtime

    def shed(self, priority: Priority = Priority.NORMAL) -> None:
        """429 at once when every model is over its predicted-wait limit for a ``priority`` request, before the
        request is read: whichever model it names, it would be refused. With one model that is exact; with several, a
        request for a model with room is read and routed as usual."""
        first: Exception | None = None
        for runtime in self.runtimes.values():
            try:
                runtime.shed(priority)
            except OverloadedError as exc:
                first = first or exc
                continue
            return
        if first is not None:
            raise first

    async def start(self, on_batch: Callable[[str, Batch], None] | None = None, *, partial: bool = False) -> None:
        """Load every model, one after the other (they may share a GPU). Raises on the first failure, unless
        ``partial``: then a model that fails is reported as failed and the others carry on (if any loads)."""
        self.partial = partial
        for runtime in self.runtimes.values():
            try:
                await runtime.start(on_batch)
            except Exception as exc:
                if not partial:
                    if len(self.runtimes) > 1:
                        raise ModelLoadError(f"model {runtime.name!r}: {runtime.error or exc}") from exc
                    raise
                log.exception("model %s failed to load; serving the others (--allow-partial-start)", runtime.name)
        if not any(runtime.healthy for runtime in self.runtimes.values()):
            raise ModelLoadError("no model could be loaded")

    def stop_admitting(self) -> None:
        """Every model answers new requests with 503 from now on (draining)."""
        for runtime in self.runtimes.values():
            runtime.stop_admitting()

    async def wait_idle(self) -> None:
        """Return once no model has admitted work in flight."""
        await asyncio.gather(*(runtime.admission.wait_idle() for runtime in self.runtimes.values()))

    @property
    def healthy(self) -> bool:
        """True when every model is ready with a live backend (with a partial start: every model that loaded)."""
        serving = [r for r in self.runtimes.values() if not (self.partial and r.state is State.FAILED)]
        return bool(serving) and all(runtime.healthy for runtime in serving)

    def states(self) -> dict[str, str]:
        """Each model's state, for /health."""
        return {name: runtime.state.value for name, runtime in self.runtimes.items()}

    @property
    def state(self) -> str:
        """A one-word summary for /health: the least ready model's state."""
        for state in (State.FAILED, State.STOPPED, State.DRAINING, State.LOADING):
            if any(runtime.state is state for runtime in self.runtimes.values()):
                return state.value
        return "ready" if self.healthy else "unhealthy"

    async def drain(self, grace_seconds: float) -> None:
        """Drain every model in parallel within one grace period, then close the shared cache's connections."""
        await asyncio.gather(*(runtime.drain(grace_seconds) for runtime in self.runtimes.values()))
        if self.cache is not None:
            await self.cache.close()
