"""Image inputs of the embedding bodies: the ``inputs`` (``/embed``) and ``input`` (``/v1/embeddings``) fields take
image objects among the texts, and the images are fetched and decoded before the work is queued.

Wire forms, each one input (see :mod:`embedserve.media.sources`)::

    {"image": "https://example.com/cat.jpg"}
    {"image": "data:image/png;base64,iVBORw0KGgo..."}
    {"image": "iVBORw0KGgo...", "type": "image/png"}

Fetching (:class:`~embedserve.media.fetch.Fetcher`, one per application) and decoding (on worker threads) happen in
the handler, before admission: a slow image server holds neither an admission slot nor a batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from starlette.requests import Request

from embedserve.core.capabilities import Capability
from embedserve.core.images import ImageInput
from embedserve.errors import EmbedServeError, EmptyInputError, ValidationError
from embedserve.http.edge import context
from embedserve.http.fields import Field, Served
from embedserve.media.decode import decode
from embedserve.media.fetch import Fetcher
from embedserve.media.sources import MEDIA_TYPES, ImageRef, inline_bytes, parse_image_item
from embedserve.settings import ServerSettings

_URL = "^([Hh][Tt][Tt][Pp][Ss]?://|[Dd][Aa][Tt][Aa]:)"
IMAGE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "object", "properties": {"image": {"type": "string", "pattern": _URL, "description": "An https:// "
         "URL or a base64 data: URL."}}, "required": ["image"], "additionalProperties": False},
        {"type": "object", "properties": {"image": {"type": "string", "minLength": 1, "contentEncoding": "base64",
         "description": "Raw base64."}, "type": {"type": "string", "enum": list(MEDIA_TYPES), "description": "Its "
         "media type."}}, "required": ["image", "type"], "additionalProperties": False},
    ]
}  # fmt: skip
"""One image input (models of kind multimodal)."""


def embed_inputs_field(key: str, texts: Callable[[dict[str, Any], str], list[str]], batch_note: str) -> Field:
    """The inputs field of an embedding body: ``texts`` parses text-only values (and words their errors); a list
    holding image objects is parsed here."""

    def parse(body: dict[str, Any]) -> list[str | ImageRef]:
        value = body.get(key)
        if isinstance(value, dict):
            return [parse_image_item(value, key, key)]
        if not isinstance(value, list) or not any(isinstance(item, dict) for item in value):
            return list(texts(body, key))
        items: list[str | ImageRef] = []
        for i, item in enumerate(value):
            where = f"{key}[{i}]"
            if isinstance(item, dict):
                items.append(parse_image_item(item, where, key))
            elif isinstance(item, str) and item:
                items.append(item)
            elif isinstance(item, str):
                raise EmptyInputError(f"`{where}` is an empty string", param=key)
            else:
                raise ValidationError(f"`{where}` must be a string or an image object", param=key)
        return items

    def schema(served: Served) -> dict[str, Any]:
        text = {"type": "string", "minLength": 1}
        # Image objects are documented only when a served model takes them: elsewhere they are refused.
        images = Capability.EMBED_IMAGE in served.capabilities
        item = {"anyOf": [text, IMAGE_SCHEMA]} if images else text
        many = {"type": "array", "items": item, "minItems": 1, "maxItems": served.max_client_batch_size}
        return {"anyOf": [text, IMAGE_SCHEMA, many] if images else [text, many]}

    description = (f"A text or a list of texts; {batch_note}. A multimodal model also takes images in place "
                   'of texts: {"image": "<https URL | data: URL | base64>", "type"?: "image/png"}.')  # fmt: skip
    return Field(key, parse, schema, description, attr="inputs", required=True)


def has_images(inputs: Sequence[object]) -> bool:
    """Whether a parsed inputs list holds an image."""
    return any(isinstance(item, ImageRef) for item in inputs)


async def load_images(request: Request, inputs: Sequence[str | ImageRef], param: str) -> list[str | ImageInput]:
    """The inputs with every image fetched (URLs) or unpacked (inline) and decoded, all at once; the first failure
    cancels the rest and is raised naming its input."""
    settings = context(request).settings.server
    fetcher = _fetcher(request, settings)

    async def one(i: int, ref: ImageRef) -> ImageInput:
        try:
            data = await fetcher.fetch(ref.url) if ref.url is not None else None
            image = await asyncio.to_thread(_decode, ref, data, settings)
        except EmbedServeError as exc:
            raise type(exc)(f"`{param}[{i}]`: {exc.message}", param=param) from None
        return ImageInput(image)

    jobs = {i: asyncio.ensure_future(one(i, item)) for i, item in enumerate(inputs) if isinstance(item, ImageRef)}
    try:
        await asyncio.gather(*jobs.values())
    finally:
        for job in jobs.values():
            job.cancel()
    return [jobs[i].result() if i in jobs else item for i, item in enumerate(inputs)]  # type: ignore[misc]


def _decode(ref: ImageRef, data: bytes | None, settings: ServerSettings) -> Any:
    """Worker thread: unpack an inline image (within the byte limit), then decode it within the pixel limit."""
    raw = data if data is not None else inline_bytes(ref, settings.image_max_bytes)
    return decode(raw, max_pixels=settings.image_max_pixels, formats=settings.image_formats)


def _fetcher(request: Request, settings: ServerSettings) -> Fetcher:
    """The application's fetcher, made on first use (its metrics join the application's registry)."""
    state = request.app.state
    fetcher: Fetcher | None = getattr(state, "image_fetcher", None)
    if fetcher is None:
        fetcher = Fetcher(
            max_bytes=settings.image_max_bytes, timeout=settings.image_fetch_timeout,
            max_redirects=settings.image_fetch_max_redirects, concurrency=settings.image_fetch_concurrency,
            allow_http=settings.image_fetch_allow_http, allow=settings.image_fetch_allow,
            registry=context(request).metrics.registry,
        )  # fmt: skip
        state.image_fetcher = fetcher
    return fetcher
