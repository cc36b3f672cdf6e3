"""Dense embeddings of requests that hold images (:attr:`Capability.EMBED_IMAGE`): texts through the model's text
tower, images through its vision tower, both through the one pipeline (admission, queue, batches; the packer keeps
the two apart and weighs each image at the model's image cost).

Images arrive decoded (the HTTP layer fetched and decoded them with :mod:`embedserve.media`); the engine's own
image processor turns them into model inputs on a worker thread, like tokenizing. Core layer: no starlette, no
torch, no URLs.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedserve.core.capabilities import Capability
from embedserve.core.priority import Priority
from embedserve.core.results import RunResult
from embedserve.core.runtime import ModelRuntime
from embedserve.core.tasks import EmbedResult, _postprocess
from embedserve.core.tokenization import Direction, Encoded, TokenizerPool
from embedserve.errors import ValidationError


@dataclass(frozen=True, slots=True)
class ImageInput:
    """A decoded image among a request's inputs (a Pillow image in RGB; the core never looks inside)."""

    image: Any


async def embed_with_images(
    runtime: ModelRuntime,
    inputs: Sequence[str | ImageInput],
    *,
    dimensions: int | None,
    normalize: bool,
    truncate: bool | None,
    direction: Direction,
    prompt_name: str | None,
    param: str = "inputs",
    request_id: str = "",
    deadline: float | None = None,
    priority: Priority = Priority.NORMAL,
) -> EmbedResult:
    """One vector per input, in input order; a prompt applies to the texts only."""
    _, info = runtime.require(Capability.EMBED_IMAGE)
    model = runtime.image_model
    assert model is not None
    runtime.check_batch_size(len(inputs), param)
    runtime.check_dimensions(dimensions, info.dim)
    text_at = [i for i, item in enumerate(inputs) if isinstance(item, str)]
    image_at = [i for i, item in enumerate(inputs) if isinstance(item, ImageInput)]
    texts = runtime.texts([str(inputs[i]) for i in text_at], prompt_name)
    images = [item.image for item in inputs if isinstance(item, ImageInput)]
    cut = runtime.truncate(truncate)

    async def encode(pool: TokenizerPool, inline: bool) -> Encoded:
        ids: list[list[int]] = [[] for _ in inputs]
        pixels: list[Any] = [None] * len(inputs)
        preprocessed = asyncio.ensure_future(asyncio.to_thread(model.preprocess_images, images))
        try:
            if texts:
                try:
                    encoded = await pool.encode(texts, truncate=cut, direction=direction, param=param, inline=inline)
                except ValidationError as exc:  # it numbers the texts among themselves: renumber among all inputs
                    raise ValidationError(_renumber(exc.message, param, text_at), param=exc.param) from None
                for i, row in zip(text_at, encoded.ids, strict=True):
                    ids[i] = row
            for i, array in zip(image_at, await preprocessed, strict=True):
                pixels[i] = array
        finally:
            preprocessed.cancel()
        return Encoded(ids, None, pixels)

    characters = [0] * len(inputs)
    for i, text in zip(text_at, texts, strict=True):
        characters[i] = len(text)
    run: RunResult[np.ndarray] = await runtime.run(
        characters, encode, request_id, deadline, images=len(images), priority=priority
    )
    vectors = _postprocess(np.stack(run.rows), dimensions, normalize)
    return EmbedResult(vectors, run.tokens, run.timings, run.batch_links)


def _renumber(message: str, param: str, positions: list[int]) -> str:
    return re.sub(rf"`{re.escape(param)}\[(\d+)\]`", lambda m: f"`{param}[{positions[int(m[1])]}]`", message)
