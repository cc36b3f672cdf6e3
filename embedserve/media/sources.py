"""Image inputs as clients send them: ``{"image": "data:image/png;base64,..."}``, ``{"image": "<base64>", "type":
"image/png"}`` or ``{"image": "https://..."}``, parsed into :class:`ImageRef` and, for the inline forms, into bytes."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from embedserve.errors import ImageTooLargeError, InvalidImageError, ValidationError

MEDIA_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp")
"""What a ``type`` field or a ``data:`` URL may say. Decoding trusts the bytes, not the label: the label only tells
base64 apart from a URL and names the client's intent."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    """One image input: a URL (``https://``, ``http://``) to fetch, or base64 bytes from a ``data:`` URL or a raw
    string with a ``type``."""

    url: str | None = None
    data: str | None = None
    """The base64 text of an inline image."""

    def __len__(self) -> int:
        """No text characters (what the timing headers and admission count for texts)."""
        return 0

    def __bool__(self) -> bool:
        return True


def parse_image_item(item: dict[str, Any], where: str, param: str) -> ImageRef:
    """An input object ``{"image": ..., "type"?: ...}``; raises naming ``where`` (e.g. ``input[2]``)."""
    unknown = set(item) - {"image", "type"}
    if unknown or not isinstance(item.get("image"), str):
        raise ValidationError(f'`{where}` must be a string or an image object {{"image": "<https URL, data: URL or '
                              f'base64>", "type"?: "image/png"}}', param=param)  # fmt: skip
    value: str = item["image"]
    kind = item.get("type")
    if kind is not None and kind not in MEDIA_TYPES:
        raise ValidationError(f"`{where}.type` must be one of {', '.join(MEDIA_TYPES)}", param=param)
    if not value:
        raise ValidationError(f"`{where}.image` is empty", param=param)
    lowered = value[:8].lower()
    if lowered.startswith("data:"):
        return ImageRef(data=_data_url(value, where, param))
    if kind is not None:
        return ImageRef(data=value)
    if lowered.startswith(("https://", "http://")):
        return ImageRef(url=value)
    raise ValidationError(f"`{where}.image` must be an https:// URL or a data: URL; raw base64 needs a `type` "
                          "such as image/png", param=param)  # fmt: skip


def _data_url(value: str, where: str, param: str) -> str:
    head, comma, payload = value.partition(",")
    media, _, encoding = head[5:].partition(";")
    if not comma or encoding.lower() != "base64":
        raise InvalidImageError(f"`{where}.image` must be a base64 data: URL (data:image/png;base64,...)",
                                param=param)  # fmt: skip
    if media.lower() not in MEDIA_TYPES:
        raise InvalidImageError(f"`{where}.image` is a data: URL of {media or 'no type'!r}, not one of "
                                f"{', '.join(MEDIA_TYPES)}", param=param)  # fmt: skip
    return payload


def inline_bytes(ref: ImageRef, max_bytes: int) -> bytes:
    """The bytes of an inline image, refused (413) when they would be over ``max_bytes`` before decoding them."""
    assert ref.data is not None
    if len(ref.data) * 3 // 4 > max_bytes + 2:
        raise ImageTooLargeError(f"the image is over --image-max-bytes ({max_bytes:,} bytes)")
    try:
        raw = base64.b64decode(ref.data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImageError("the image is not valid base64") from None
    if len(raw) > max_bytes:
        raise ImageTooLargeError(f"the image is over --image-max-bytes ({max_bytes:,} bytes)")
    return raw
