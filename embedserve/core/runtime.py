"""One served model: its tokenizer pool, admission, queue and backend thread, and the pipeline they form.

The pipeline is the same for every capability: check that the model can do it and the request's limits, pass
admission (slots and predicted wait, see :mod:`embedserve.core.admission`; or fail with 429 at once, before any
tokenizing), tokenize on the pool, queue, await the batch results. :mod:`embedserve.core.tasks` adds what each
capability computes on top (``dimensions``, normalization, ``top_k``, activations). Core layer: no starlette, no
torch, no URLs.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from embedserve import logs
from embedserve.core.admission import Admission, Throughput
from embedserve.core.backend import BackendThread
from embedserve.core.batch_limits import CPU_MAX_BATCH_REQUESTS, largest_batch
from embedserve.core.batching import Batch, BatchQueue, Job
from embedserve.core.cache import model_scope
from embedserve.core.capabilities import KIND_CAPABILITIES, Capability
from embedserve.core.embedding_cache import EmbeddingCache
from embedserve.core.express import ExpressLane, LaneState
from embedserve.core.priority import Priority
from embedserve.core.results import RunResult, Timings
from embedserve.core.tokenization import Encoded, TokenizerPool
from embedserve.engines.base import ImageModel, InferenceModel, ModelInfo
from embedserve.errors import (
    BackendError,
    CapabilityError,
    EmbedServeError,
    ModelLoadError,
    UnhealthyError,
    ValidationError,
)
from embedserve.settings import ModelSettings

log = logging.getLogger("embedserve.runtime")

Loader = Callable[[ModelSettings], tuple[ModelInfo, InferenceModel]]


class State(enum.StrEnum):
    """Life cycle of a runtime."""

    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


Encoder = Callable[[TokenizerPool, bool], Awaitable[Encoded]]
"""Tokenizes a request on the pool: token ids per input, with token type ids for text pairs. The flag allows a small
request to be tokenized inline (see :data:`~embedserve.core.tokenization.INLINE_CHARACTERS`)."""


class ModelRuntime:
    """Everything that serves one model. Create it anywhere; :meth:`start` it on the event loop."""

    def __init__(self, spec: ModelSettings, loader: Loader, cache: EmbeddingCache | None = None) -> None:
        self.spec = spec
        self.cache = cache
        """The process's embedding cache (None when off); :mod:`embedserve.core.tasks` consults it for vectors."""
        self.cache_scope = b""
        """The part of this model's cache keys that names it and how it computes (set once loaded)."""
        self.name = spec.served_name
        self.state = State.LOADING
        self.error: str | None = None
        self.info: ModelInfo | None = None
        self.admission = Admission(
            spec.max_concurrent_requests, spec.max_queue_time, reserve=spec.priority_reserve,
            low_share=spec.low_priority_share,
        )  # fmt: skip
        self.loaded_in: float | None = None
        self.batch_overhead_tokens = 0.0
        self.max_batch_requests: int | None = spec.max_batch_requests  # unset on a CPU: CPU_MAX_BATCH_REQUESTS
        self._loader = loader
        self._prompt: str | None = None
        self._max_input_length = 0
        self._tokenizers: TokenizerPool | None = None
        self._queue: BatchQueue | None = None
        self._backend: BackendThread | None = None
        self._express: ExpressLane | None = None
        self.image_model: ImageModel | None = None
        """The model, when it embeds images too: its image preprocessing runs on worker threads."""

    async def start(self, on_batch: Callable[[str, Batch], None] | None = None) -> None:
        """Load, check against the settings, warm up, start the backend thread. Raises ModelLoadError.

        ``on_batch(model, batch)`` runs on the backend thread after every forward pass (metrics, trace spans)."""
        t0 = time.perf_counter()
        backend = BackendThread(name=self.name)
        try:
            info, model = await backend.call(self._loader, self.spec)
            self._configure(info)
            self.cache_scope = model_scope(info, self._max_input_length)
            with logs.step(log, "model %s: warming up (timing a small and a large batch)", self.name):
                largest = largest_batch(self.spec.max_batch_tokens, self.max_batch_requests, self._max_input_length)
                cost = await backend.call(model.warmup, largest)  # also the memory high-water mark
            # Debug only: on a CPU the fixed cost is a fraction of a millisecond, so this ratio of two small timings
            # swings from tens to thousands of tokens between starts of the same model (the packer copes with that).
            log.debug(
                "model %s: a forward pass costs %.2f ms + %.4f ms per padded token: %.0f tokens of overhead",
                self.name, cost.fixed_seconds * 1e3, cost.token_seconds * 1e3, cost.overhead_tokens,
            )  # fmt: skip
            self.batch_overhead_tokens = cost.overhead_tokens
            self.admission.throughput = Throughput(cost.tokens_per_second)
            assert self._tokenizers is not None
            await asyncio.to_thread(self._tokenizers.warm)
            self._tokenizers.warm_inline()
        except BaseException as exc:
            backend.stop(0)
            self.state = State.FAILED
            self.error = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
            raise
        self._queue = BatchQueue(
            asyncio.get_running_loop(),
            max_batch_tokens=self.spec.max_batch_tokens,
            max_batch_requests=self.max_batch_requests,
            overhead_tokens=self.batch_overhead_tokens,
            lane_yield=self.spec.lane_yield,
            length_multiple=info.length_multiple,
            max_length=info.max_input_length,
        )
        self._backend = backend
        backend.serve(model, self._queue, functools.partial(self._observe, on_batch))
        if self.spec.express_lane:  # its batches are in the metrics, not in admission's measured speed
            observer = None if on_batch is None else functools.partial(on_batch, self.name)
            self._express = ExpressLane(model, self.name, self._queue, observer)
        self.info = info
        self.image_model = cast(ImageModel, model) if info.image_tokens else None
        self.loaded_in = time.perf_counter() - t0
        self.state = State.READY
        log.info(
            "model %s ready in %.1fs: %s on %s with %s (%s%s), %s pooling, dim %d, max input %d tokens",
            self.name, self.loaded_in, info.architecture, info.device, info.engine, info.dtype,
            f", {info.quantize}" if info.quantize else "", info.pooling, info.dim, self._max_input_length,
        )  # fmt: skip

    def _observe(self, on_batch: Callable[[str, Batch], None] | None, batch: Batch) -> None:
        """After each forward pass, on the backend thread: the measured speed, then the caller's observer. A pass that
        computed beside others (parallel passes) had a share of the cores: its time counts divided among them."""
        self.admission.throughput.observe(batch.real_tokens, (batch.t_end - batch.t_start) / batch.shared)
        if on_batch is not None:
            on_batch(self.name, batch)

    def _configure(self, info: ModelInfo) -> None:
        spec = self.spec
        self._max_input_length = info.max_input_length
        if spec.max_batch_requests is None and info.device == "cpu":
            self.max_batch_requests = CPU_MAX_BATCH_REQUESTS
        if spec.max_batch_tokens < info.max_input_length:
            log.warning(
                "--max-batch-tokens %d is below the model's maximum input length %d; inputs are limited to %d tokens",
                spec.max_batch_tokens, info.max_input_length, spec.max_batch_tokens,
            )  # fmt: skip
            self._max_input_length = spec.max_batch_tokens
        if spec.default_prompt_name is not None:
            if spec.default_prompt_name not in info.prompts:
                raise ModelLoadError(
                    f"--default-prompt-name {spec.default_prompt_name!r} is not among the model's prompts "
                    f"({_names(info.prompts)})"
                )
            self._prompt = info.prompts[spec.default_prompt_name]
        elif spec.default_prompt is not None:
            self._prompt = spec.default_prompt
        elif info.default_prompt_name is not None:
            self._prompt = info.prompts.get(info.default_prompt_name)
        self._tokenizers = TokenizerPool(
            info.tokenizer_json,
            workers=spec.resolved_tokenization_workers(),
            max_input_length=self._max_input_length,
        )

    @property
    def max_input_length(self) -> int:
        """Longest input in tokens (the model's limit, capped by --max-batch-tokens)."""
        return self._max_input_length

    @property
    def healthy(self) -> bool:
        """Ready and its backend thread alive."""
        return self.state is State.READY and self._backend is not None and self._backend.alive

    @property
    def queued(self) -> int:
        """Inputs waiting for a batch."""
        return len(self._queue) if self._queue is not None else 0

    def queued_in(self, lane: Priority) -> int:
        """Inputs of one priority lane waiting for a batch."""
        return self._queue.queued(lane) if self._queue is not None else 0

    @property
    def predicted_wait(self) -> float:
        """Seconds a request arriving now is predicted to wait for its first forward pass."""
        ahead = self._queue.tokens_ahead if self._queue is not None else 0
        return self.admission.predicted_wait(ahead + self.admission.tokenizing_tokens)

    @property
    def express_lane(self) -> str:
        """The express lane's state (:class:`~embedserve.core.express.LaneState`), or ``off``."""
        return "off" if self._express is None else self._express.state.value

    @property
    def lane_yield(self) -> bool:
        """Lower lanes' batches are cut short for higher ones: --lane-yield, until the express lane opens."""
        return self.spec.lane_yield and self.express_lane != LaneState.OPEN

    @property
    def batches_run(self) -> int:
        """Forward passes run so far (the express lane's included)."""
        express = self._express.batches_run if self._express is not None else 0
        return express + (self._backend.batches_run if self._backend is not None else 0)

    @property
    def largest_batch(self) -> int:
        """Most inputs seen in one forward pass."""
        return self._backend.largest_batch if self._backend is not None else 0

    def require(self, capability: Capability) -> tuple[TokenizerPool, ModelInfo]:
        """The tokenizer pool and model info, once the model is ready and its kind can do ``capability``; else
        503 (not ready) or 422 (a model of another kind)."""
        tokenizers, _, info = self._ready()
        can = KIND_CAPABILITIES[info.kind]
        if capability not in can:
            article = "an" if info.kind[0] in "aeiou" else "a"
            raise CapabilityError(
                f"model {self.name!r} is {article} {info.kind} model: it can {', '.join(can)}; not {capability}"
            )
        return tokenizers, info

    def shed(self, priority: Priority = Priority.NORMAL) -> None:
        """429 at once when the work already ahead of a ``priority`` request is predicted to take longer than its
        lane's limit (see :meth:`Admission.shed`); nothing when the model is not ready (the pipeline answers that)."""
        if self._queue is not None and self.state is State.READY:
            self.admission.shed(self._queue.tokens_ahead_of(priority), self.name, priority)

    def check_batch_size(self, n: int, param: str) -> None:
        """Requests carry at most --max-client-batch-size inputs."""
        if n > self.spec.max_client_batch_size:
            raise ValidationError(
                f"batch size {n} > maximum allowed batch size {self.spec.max_client_batch_size}", param=param
            )

    def check_dimensions(self, dimensions: int | None, dim: int) -> None:
        """A request's ``dimensions`` (Matryoshka) fits within the model's ``dim``."""
        if dimensions is not None and dimensions > dim:
            raise ValidationError(
                f"`dimensions` {dimensions} is larger than the model's {dim} dimensions", param="dimensions"
            )

    def truncate(self, requested: bool | None) -> bool:
        """A request's truncation choice, defaulting to --auto-truncate."""
        return self.spec.auto_truncate if requested is None else requested

    def texts(self, inputs: list[str], prompt_name: str | None) -> list[str]:
        """Inputs with the request's prompt (or the default prompt) prepended, lower-cased if the model says so."""
        _, _, info = self._ready()
        prompt = self._prompt
        if prompt_name is not None:
            if prompt_name not in info.prompts:
                raise ValidationError(
                    f"prompt name {prompt_name!r} is not among the model's prompts ({_names(info.prompts)})",
                    param="prompt_name",
                )
            prompt = info.prompts[prompt_name]
        texts = inputs if prompt is None else [prompt + text for text in inputs]
        return [text.lower() for text in texts] if info.lowercase else texts

    async def run(
        self, characters: Sequence[int], encode: Encoder, request_id: str = "", deadline: float | None = None,
        images: int = 0, priority: Priority = Priority.NORMAL,
    ) -> RunResult[Any]:  # fmt: skip
        """The pipeline: admission (429 at once when full or when the predicted wait is too long), tokenization on
        the pool, the queue, the batches. ``characters`` has one count per input (what admission estimates its
        tokens from; 0 for an image, of which there are ``images``, each costing the model's image tokens);
        ``deadline`` is a ``time.perf_counter()`` time after which the client no longer wants the answer (504 at
        once when the predicted wait is longer; dropped from the queue once it passes); ``priority`` is the lane
        it is admitted and queued in (see :mod:`embedserve.core.priority`).

        The rows are whatever the model yields per input; callers annotate the ``RunResult`` with the row type their
        capability produces."""
        _, queue, info = self._ready()
        assert self._tokenizers is not None
        n = len(characters)
        admission = self.admission
        estimate = admission.estimate(characters, self._max_input_length) + images * info.image_tokens
        t0 = time.perf_counter()
        predicted = admission.admit(
            n, estimate, queue.tokens_ahead_of(priority), deadline_in=None if deadline is None else deadline - t0,
            name=self.name, priority=priority,
        )  # fmt: skip
        try:
            try:
                # A small request alone in flight, or ahead of every other one being tokenized, is tokenized inline.
                encoded = await encode(self._tokenizers, admission.may_tokenize_inline(n, priority))
            finally:
                admission.tokenized(estimate, priority)
            admission.learn(sum(characters), encoded.tokens)
            job = Job(asyncio.get_running_loop(), n, request_id, deadline, priority)
            if priority is Priority.HIGH and self._express is not None:
                self._express.wanted()
            queue.put(job, encoded.ids, encoded.type_ids, encoded.pixels, info.image_tokens)
            try:
                await job.future
            except asyncio.CancelledError:
                queue.discard(job)  # the client left: its inputs still queued are never computed
                raise
            except EmbedServeError:
                queue.discard(job)  # e.g. its deadline passed: inputs of it still queued are not computed either
                raise
            except Exception as exc:
                raise BackendError(f"inference failed (request id {request_id or 'unknown'})") from exc
        finally:
            admission.release(n)
        t_end = time.perf_counter()
        if job.t_first_start is not None:
            admission.waited(priority, predicted, job.t_first_start - t0)
        timings = Timings(
            started=t0,
            enqueued=job.t_enqueued,
            first_batch=job.t_first_start or t_end,
            computed=job.t_last_end or t_end,
            finished=t_end,
            inference=job.inference_seconds,
        )
        return RunResult(job.rows, encoded.tokens, timings, tuple(job.batch_links))

    def _ready(self) -> tuple[TokenizerPool, BatchQueue, ModelInfo]:
        if self.state is not State.READY or self._backend is None or not self._backend.alive:
            raise UnhealthyError(f"model {self.name!r} is {self._state_text()}")
        assert self._tokenizers is not None
        assert self._queue is not None
        assert self.info is not None
        return self._tokenizers, self._queue, self.info

    def _state_text(self) -> str:
        if self.state is State.READY:
            return "unavailable: its backend thread stopped"
        if self.state is State.FAILED:
            return f"unavailable: it failed to load ({self.error})"
        return self.state.value

    def stop_admitting(self) -> None:
        """From now on new requests get 503; admitted ones carry on."""
        if self.state is State.READY:
            self.state = State.DRAINING

    async def drain(self, grace_seconds: float) -> None:
        """Stop admitting (503), let admitted work finish within ``grace_seconds``, then stop the backend."""
        self.stop_admitting()
        deadline = time.monotonic() + grace_seconds
        try:
            async with asyncio.timeout(grace_seconds):
                await self.admission.wait_idle()
        except TimeoutError:
            log.warning("model %s: %d inputs still in flight after the grace period", self.name, self.admission.in_use)
        if self._backend is not None:
            left = await asyncio.to_thread(self._backend.stop, max(0.0, deadline - time.monotonic()))
            if left:
                Batch(left, asyncio.get_running_loop()).fail(UnhealthyError("the server shut down before this ran"))
        if self._express is not None:
            self._express.close()
        if self._tokenizers is not None:
            self._tokenizers.close()
        self.image_model = None
        self.state = State.STOPPED


def _names(prompts: dict[str, str]) -> str:
    return ", ".join(sorted(prompts)) or "it has none"
