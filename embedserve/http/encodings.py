"""How dense vectors go on the wire: what each element is (``output_dtype``) and how a vector is written
(``encoding_format``), on ``/embed`` and ``/v1/embeddings`` alike.

The core hands over float32 vectors; this module turns them into the requested form. The two fields are independent,
as in Voyage AI's API: ``encoding_format`` keeps the OpenAI API's meaning ('float': a JSON list; 'base64': the
vector's bytes), so the OpenAI SDK, which asks for base64 float32 by default, decodes what it gets; ``output_dtype``
picks the elements: float32, float16, or sentence-transformers' ``quantize_embeddings`` precisions.

- ``int8`` / ``uint8``: each component is cut into 256 equal steps of the fixed range [-1, 1], the range of a
  normalized vector's components (the server has no calibration set, and a fixed range keeps vectors of different
  requests comparable): ``level = clip(floor((x + 1) / (2 / 255)), 0, 255)``; uint8 sends ``level``, int8
  ``level - 128``, exactly as ``quantize_embeddings(..., ranges=[[-1] * d, [1] * d])``. Components outside [-1, 1]
  (only possible with ``normalize: false``) are clipped to it.
- ``binary`` / ``ubinary``: one bit per component, 1 where it is above zero, packed eight to a byte, the first
  component in the most significant bit (``numpy.packbits``), the last byte padded with zero bits; ubinary sends
  the bytes, binary each byte minus 128 as an int8, as ``quantize_embeddings`` does.
- ``float16``: each component rounded to the nearest IEEE half-precision value.

Base64 carries the elements' bytes, little-endian, one string per vector.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, Literal, cast, get_args

import numpy as np

from embedserve.core.chunking import ChunkedResult
from embedserve.core.tasks import EmbedResult
from embedserve.errors import ValidationError
from embedserve.http.fields import Field, fixed, nullable

OutputDtype = Literal["float", "float16", "int8", "uint8", "binary", "ubinary"]
EncodingFormat = Literal["float", "base64"]
OUTPUT_DTYPES: tuple[OutputDtype, ...] = get_args(OutputDtype)
ENCODING_FORMATS: tuple[EncodingFormat, ...] = get_args(EncodingFormat)

QUANTIZATION_RANGE = (-1.0, 1.0)
"""The range int8 and uint8 cut into 256 steps: a normalized vector's components lie in it."""
_START = np.float32(QUANTIZATION_RANGE[0])
_STEP = np.float32(QUANTIZATION_RANGE[1] - QUANTIZATION_RANGE[0]) / np.float32(255)  # as quantize_embeddings: float32


def quantize(vectors: np.ndarray, dtype: OutputDtype) -> np.ndarray:
    """``vectors`` (n x d) as ``dtype``'s elements: n x d, or n x ceil(d / 8) bytes for the binary forms."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if dtype == "float":
        return vectors.astype("<f4", copy=False)
    if dtype == "float16":
        return vectors.astype("<f2")
    if dtype in ("int8", "uint8"):
        levels: np.ndarray = np.clip(np.floor((vectors - _START) / _STEP), 0, 255)
        return levels.astype(np.uint8) if dtype == "uint8" else (levels - 128).astype(np.int8)
    packed: np.ndarray = np.packbits(vectors > 0, axis=-1)
    return packed if dtype == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)


def render(vectors: np.ndarray, dtype: OutputDtype, encoding: EncodingFormat) -> np.ndarray | list[str]:
    """What an answer carries for ``vectors``: an array orjson writes as nested JSON lists, or one base64 string
    per vector."""
    values = quantize(vectors, dtype)
    if encoding == "base64":
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in values]
    return values


def render_result(
    result: EmbedResult, dtype: OutputDtype, encoding: EncodingFormat, *, chunks: bool = False
) -> np.ndarray | Sequence[Any]:
    """Per input, its vector; with ``chunks``, the list of its chunks' vectors in text order (one for an input
    that was not chunked)."""
    if not chunks:
        return render(result.vectors, dtype, encoding)
    groups = result.chunks if isinstance(result, ChunkedResult) else tuple(row[None] for row in result.vectors)
    return [render(group, dtype, encoding) for group in groups]


def _choice(body: dict[str, Any], key: str, allowed: tuple[str, ...], hint: str = "") -> str:
    value = body.get(key)
    if value is None:
        return allowed[0]
    if isinstance(value, str) and value in allowed:
        return value
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    names = ", ".join(f"'{name}'" for name in allowed)
    raise ValidationError(f"`{key}` must be one of {names}, got {shown}{hint}", param=key)


def _encoding_format(body: dict[str, Any]) -> EncodingFormat:
    value = body.get("encoding_format")
    hint = f" (for {value} elements, set output_dtype)" if value in OUTPUT_DTYPES else ""
    return cast(EncodingFormat, _choice(body, "encoding_format", ENCODING_FORMATS, hint))


def _output_dtype(body: dict[str, Any]) -> OutputDtype:
    return cast(OutputDtype, _choice(body, "output_dtype", OUTPUT_DTYPES))


ENCODING_FORMAT = Field(
    "encoding_format",
    _encoding_format,
    fixed(nullable({"type": "string", "enum": list(ENCODING_FORMATS), "default": "float"})),
    "'float': each vector a JSON list of its elements; 'base64': each vector its elements' little-endian bytes in "
    "base64 (float32 unless output_dtype says otherwise).",
)
OUTPUT_DTYPE = Field(
    "output_dtype",
    _output_dtype,
    fixed(nullable({"type": "string", "enum": list(OUTPUT_DTYPES), "default": "float"})),
    "The vectors' elements: 'float' (float32), 'float16', 'int8' or 'uint8' (256 steps of [-1, 1]), 'binary' or "
    "'ubinary' (sign bits packed eight to a byte, as sentence-transformers' quantize_embeddings; binary is each "
    "byte minus 128).",
)
