"""The steps every inference route shares: read the body, pick the model, run the work, time it."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar, cast

from starlette.requests import Request

from embedserve.core import chunking, images, tasks
from embedserve.core.capabilities import Capability
from embedserve.core.results import Timings
from embedserve.core.runtime import ModelRuntime
from embedserve.http.deadline import deadline
from embedserve.http.edge import context, facts
from embedserve.http.image_inputs import has_images, load_images
from embedserve.http.priority import note_priority, request_priority
from embedserve.http.schemas import EmbedRequest, decode_json_object
from embedserve.http.web import read_json_body, request_id, timing_headers, until_disconnect


class Computed(Protocol):
    """What every pipeline result reports."""

    @property
    def prompt_tokens(self) -> int: ...
    @property
    def timings(self) -> Timings: ...
    @property
    def batch_links(self) -> tuple[Any, ...]: ...


R = TypeVar("R", bound=Computed)


async def read_body(request: Request, *, batched: bool = True) -> dict[str, Any]:
    """The JSON object body, within --payload-limit and --body-timeout. For work that goes through the batch queue
    (``batched``), a flood is refused first, before the body is read (see :meth:`Registry.shed`), by the limit of
    the lane the header or the API key gives; then the request's lane is noted with its body
    (:mod:`embedserve.http.priority`)."""
    ctx = context(request)
    if batched:
        ctx.registry.shed(request_priority(request))
    server = ctx.settings.server
    body = decode_json_object(await read_json_body(request, server.payload_limit, server.body_timeout))
    if batched:
        note_priority(request, body)
    return body


def resolve(request: Request, model: str | None) -> ModelRuntime:
    """The runtime of the requested (or default) model, noted for the edge."""
    runtime = context(request).registry.resolve(model)
    facts(request).model = runtime.name
    return runtime


async def compute(request: Request, work: Awaitable[R], inputs: int, characters: int) -> tuple[R, dict[str, str]]:
    """Await the pipeline (dropped if the client disconnects); note the facts; the timing headers."""
    noted = facts(request)
    noted.inputs = inputs
    result = await until_disconnect(request.receive, work)
    noted.tokens, noted.timings, noted.batch_links = result.prompt_tokens, result.timings, result.batch_links
    headers = timing_headers(request_id(request), result.timings, result.prompt_tokens, characters)
    if isinstance(result, tasks.EmbedResult):
        headers["x-cache-hits"] = str(result.cache_hits)  # inputs of this answer that were not computed for it
    return result, headers


def embed_work(request: Request, runtime: ModelRuntime, parsed: EmbedRequest) -> Awaitable[tasks.EmbedResult]:
    """The dense-embedding work for a parsed ``/embed`` or ``/v1/embeddings`` body (both parse to one shape)."""
    if has_images(parsed.inputs):
        return _embed_images(request, runtime, parsed)
    if parsed.return_chunks or chunking.enabled(runtime, parsed.chunk):
        return chunking.embed_chunked(
            runtime, cast(list[str], parsed.inputs), dimensions=parsed.dimensions, normalize=parsed.normalize,
            prompt_name=parsed.prompt_name, param=parsed.input_param, request_id=request_id(request),
            deadline=deadline(request), priority=request_priority(request),
        )  # fmt: skip
    return tasks.embed(
        runtime, cast(list[str], parsed.inputs), dimensions=parsed.dimensions, normalize=parsed.normalize,
        truncate=parsed.truncate, direction=parsed.truncation_direction, prompt_name=parsed.prompt_name,
        param=parsed.input_param, request_id=request_id(request), deadline=deadline(request),
        priority=request_priority(request),
    )  # fmt: skip


async def _embed_images(request: Request, runtime: ModelRuntime, parsed: EmbedRequest) -> tasks.EmbedResult:
    """Texts and images: the model and the batch size are checked before anything is fetched; the images are
    fetched and decoded before admission (see :mod:`embedserve.http.image_inputs`)."""
    runtime.require(Capability.EMBED_IMAGE)
    runtime.check_batch_size(len(parsed.inputs), parsed.input_param)
    inputs = await load_images(request, parsed.inputs, parsed.input_param)
    return await images.embed_with_images(
        runtime, inputs, dimensions=parsed.dimensions, normalize=parsed.normalize, truncate=parsed.truncate,
        direction=parsed.truncation_direction, prompt_name=parsed.prompt_name, param=parsed.input_param,
        request_id=request_id(request), deadline=deadline(request), priority=request_priority(request),
    )  # fmt: skip
