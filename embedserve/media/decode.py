"""Decoding image bytes with Pillow, within limits: allowed formats only, the pixel count read from the header
before any pixel is decoded (a decompression bomb is refused for the cost of its header), one frame, RGB out.

Blocking: callers run :func:`decode` on a worker thread, never on the event loop.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from embedserve.errors import InvalidImageError


def decode(data: bytes, *, max_pixels: int, formats: tuple[str, ...]) -> Image.Image:
    """An RGB image from encoded bytes; :class:`InvalidImageError` names what is wrong (never the bytes)."""
    allowed = tuple(f.upper() for f in formats)
    try:
        with warnings.catch_warnings():
            # Pillow warns (and past twice its own limit raises) about bombs; the pixel limit below decides first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=allowed)
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidImageError(f"the image is {width}x{height} pixels, over --image-max-pixels "
                                        f"({max_pixels:,})")  # fmt: skip
            image.seek(0)  # the first frame of an animation
            image.load()
            return _rgb(image)
    except InvalidImageError:
        raise
    except UnidentifiedImageError:
        raise InvalidImageError(f"the input is not an image in an allowed format ({', '.join(allowed)})") from None
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError, EOFError):
        raise InvalidImageError("the image is corrupt or truncated and cannot be decoded") from None


def _rgb(image: Image.Image) -> Image.Image:
    """RGB with any transparency composited onto white: what transformers' image processors do (``convert_to_rgb``)
    to the images they are given, so the vectors equal a direct run on the same file."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")
