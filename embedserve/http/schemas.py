"""Request bodies: JSON bytes -> typed, validated dataclasses.

Parsing is total: any input either yields a request object or raises an :mod:`embedserve.errors` error naming the
offending field (``param``). Unknown fields are ignored, as TEI and the OpenAI API do. Model-dependent limits
(``max_client_batch_size``, ``dimensions`` against the model size, prompt names) are checked later by the pipeline,
which knows the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, TypeGuard

import orjson

from embedserve.core.capabilities import Capability
from embedserve.core.tokenization import Direction
from embedserve.errors import EmptyInputError, InvalidJSONError, ValidationError
from embedserve.http.encodings import ENCODING_FORMAT, OUTPUT_DTYPE, EncodingFormat, OutputDtype
from embedserve.http.fields import Body, Field, Served, fixed, nullable
from embedserve.http.image_inputs import embed_inputs_field
from embedserve.http.priority import PRIORITY
from embedserve.media.sources import ImageRef

TOKEN_IDS_MESSAGE = (
    "`{name}` holds token ids; embedserve accepts text only: send the strings instead. LangChain's OpenAIEmbeddings "
    "sends tiktoken ids unless built with check_embedding_ctx_length=False"
)
"""Token-id inputs (TEI and the OpenAI API accept them; ids of another model's tokenizer would embed garbage here)."""


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    """One embedding request, whichever route it came from."""

    inputs: list[str | ImageRef]
    """Texts, and for a multimodal model images (see :mod:`embedserve.http.image_inputs`)."""
    normalize: bool = True
    truncate: bool | None = None
    truncation_direction: Direction = "right"
    prompt_name: str | None = None
    dimensions: int | None = None
    model: str | None = None
    encoding_format: EncodingFormat = "float"
    output_dtype: OutputDtype = "float"
    """How the vectors are sent (see :mod:`embedserve.http.encodings`)."""
    chunk: bool | None = None
    """Embed over-long inputs in chunks (see :mod:`embedserve.core.chunking`); the model's default when None."""
    return_chunks: bool = False
    input_param: str = "inputs"
    """The name of the inputs field on the route it came from, for error messages."""


def decode_json_object(body: bytes) -> dict[str, Any]:
    """Decode a request body that must be a JSON object."""
    if not body.strip():
        raise InvalidJSONError("request body is empty; send a JSON object")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSONError(f"request body is not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise ValidationError(f"request body must be a JSON object, got {_json_type(value)}")
    return value


def _texts(body: dict[str, Any], name: str) -> list[str]:
    if name not in body or body[name] is None:
        raise ValidationError(f"`{name}` is required: a string or a list of strings", param=name)
    value = body[name]
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list):
        if not value:
            raise EmptyInputError(f"`{name}` cannot be empty", param=name)
        for i, item in enumerate(value):
            if isinstance(item, str):
                continue
            if _is_int(item) or _is_int_list(item):
                raise ValidationError(TOKEN_IDS_MESSAGE.format(name=name), param=name)
            raise ValidationError(f"`{name}[{i}]` must be a string, got {_json_type(item)}", param=name)
        texts = value
    else:
        raise ValidationError(f"`{name}` must be a string or a list of strings, got {_json_type(value)}", param=name)
    for i, text in enumerate(texts):
        if not text:
            where = name if isinstance(value, str) else f"{name}[{i}]"
            raise EmptyInputError(f"`{where}` is an empty string", param=name)
    return texts


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(value: Any) -> int | None:
    """An integer, also when sent as a float with nothing after the point (JSON has one number type: JSON Schema's
    ``integer`` includes 384.0); None for anything else, booleans included."""
    if _is_int(value):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _is_int_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_int(v) for v in value)


def _bool(body: dict[str, Any], name: str, *, default: bool) -> bool:
    value = _optional_bool(body, name)
    return default if value is None else value


def _optional_bool(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise ValidationError(f"`{name}` must be true or false, got {_json_type(value)}", param=name)


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None or isinstance(value, str):
        return value
    raise ValidationError(f"`{name}` must be a string, got {_json_type(value)}", param=name)


def _direction(body: dict[str, Any]) -> Direction:
    value = body.get("truncation_direction")
    if value is None:
        return "right"
    if isinstance(value, str):
        lowered = value.lower()
        if lowered == "right":
            return "right"
        if lowered == "left":
            return "left"
    raise ValidationError(
        f"`truncation_direction` must be 'right' or 'left', got {_short(value)}", param="truncation_direction"
    )


def _dimensions(body: dict[str, Any]) -> int | None:
    value = body.get("dimensions")
    if value is None:
        return None
    number = _integer(value)
    if number is None:
        raise ValidationError(f"`dimensions` must be an integer, got {_json_type(value)}", param="dimensions")
    if number < 1:
        raise ValidationError(f"`dimensions` must be positive, got {value}", param="dimensions")
    return number


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True, slots=True)
class SparseRequest:
    """``POST /embed_sparse``."""

    inputs: list[str]
    truncate: bool | None = None
    truncation_direction: Direction = "right"
    prompt_name: str | None = None
    model: str | None = None
    top_k: int | None = None
    return_tokens: bool = False


@dataclass(frozen=True, slots=True)
class TokenizeRequest:
    """``POST /tokenize``."""

    inputs: list[str]
    add_special_tokens: bool = True
    prompt_name: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class DecodeRequest:
    """``POST /decode``."""

    ids: list[list[int]]
    skip_special_tokens: bool = True
    model: str | None = None


def _ids(body: dict[str, Any]) -> list[list[int]]:
    """``ids``: a list of token ids, or a list of such lists."""
    value = body.get("ids")
    if not isinstance(value, list) or not value:
        raise ValidationError("`ids` must be a non-empty list of token ids or of lists of token ids", param="ids")
    rows = [value] if all(_integer(v) is not None for v in value) else value
    ids: list[list[int]] = []
    for row in rows:
        numbers = [n for n in map(_integer, row) if n is not None] if isinstance(row, list) else None
        if numbers is None or len(numbers) != len(row):
            raise ValidationError("`ids` must hold integers only, or lists of integers", param="ids")
        ids.append(numbers)
    return ids


def _required_str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise ValidationError(f"`{name}` is required and must be a string, got {_json_type(value)}", param=name)
    if not value:
        raise EmptyInputError(f"`{name}` cannot be empty", param=name)
    return value


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    number = _integer(value)
    if number is None or number < 1:
        raise ValidationError(f"`{name}` must be a positive integer, got {_short(value)}", param=name)
    return number


# The bodies, field by field: each field's parser (the functions above) next to its JSON schema. The OpenAPI
# document is composed from these same objects (embedserve.http.openapi).

TEXT: dict[str, Any] = {"type": "string", "minLength": 1}
_BATCH_NOTE = "at most --max-client-batch-size (see /info) per request"


def _texts_field(key: str, description: str, *, attr: str = "inputs") -> Field:
    def schema(served: Served) -> dict[str, Any]:
        many = {"type": "array", "items": TEXT, "minItems": 1, "maxItems": served.max_client_batch_size}
        return {"anyOf": [TEXT, many]}

    description = f"{description}; {_BATCH_NOTE}."
    return Field(key, lambda body: _texts(body, key), schema, description, attr=attr, required=True)


def _flag(key: str, default: bool, description: str, *, attr: str = "") -> Field:
    schema = fixed(nullable({"type": "boolean", "default": default}))
    return Field(key, lambda body: _bool(body, key, default=default), schema, description, attr=attr)


def _optional_flag(key: str, description: str) -> Field:
    return Field(key, lambda body: _optional_bool(body, key), fixed(nullable({"type": "boolean"})), description)


def _positive(key: str, description: str) -> Field:
    schema = fixed(nullable({"type": "integer", "minimum": 1}))
    return Field(key, lambda body: _positive_int(body, key), schema, description)


def _model_schema(served: Served) -> dict[str, Any]:
    names = {"type": "string", "enum": list(served.models)} if served.models else {"type": "string"}
    return nullable(names) if served.default_capable else names


def _prompt_schema(served: Served) -> dict[str, Any]:
    return nullable({"type": "string", "enum": list(served.prompts)}) if served.prompts else {"type": "null"}


def _dimensions_schema(served: Served) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": 1}
    if served.max_dimensions is not None:
        schema["maximum"] = served.max_dimensions
    return nullable(schema)


MODEL = Field("model", lambda body: _optional_str(body, "model"), _model_schema,
              "A served model's name (see /v1/models); the default model when absent.",
              required=lambda served: not served.default_capable)  # fmt: skip
TRUNCATE = _optional_flag(
    "truncate", "Cut inputs longer than the model's limit (true) or refuse them (false); --auto-truncate when absent."
)
DIRECTION = Field(
    "truncation_direction",
    _direction,
    fixed(nullable({"type": "string", "pattern": "^([Rr][Ii][Gg][Hh][Tt]|[Ll][Ee][Ff][Tt])$", "default": "right"})),
    "Which end to cut from: 'right' or 'left', in any case.",
)
PROMPT = Field("prompt_name", lambda body: _optional_str(body, "prompt_name"), _prompt_schema,
                "One of the model's prompts (see /info), prepended to every input.")  # fmt: skip
_DIMENSIONS = Field("dimensions", _dimensions, _dimensions_schema,
                    "Keep the first N dimensions (Matryoshka), before normalizing.")  # fmt: skip
_NORMALIZE = _flag("normalize", True, "L2-normalize the vectors.")
_CHUNK = _optional_flag(
    "chunk", "Embed inputs longer than the model's limit in overlapping chunks pooled into one vector, instead of "
    "truncating them; the model's --chunk-long-inputs when absent."
)  # fmt: skip
_RETURN_CHUNKS = _flag(
    "return_chunks", False, "When chunking: each input's list of chunk vectors, in text order, instead of one vector."
)


parse_tei_embed = Body(
    "EmbedRequest",
    EmbedRequest,
    (embed_inputs_field("inputs", _texts, _BATCH_NOTE), _NORMALIZE, TRUNCATE, DIRECTION, PROMPT, _DIMENSIONS,
     MODEL, ENCODING_FORMAT, OUTPUT_DTYPE, _CHUNK, _RETURN_CHUNKS, PRIORITY),
    Capability.EMBED,
    "Dense embeddings (TEI's /embed), with encoding_format and output_dtype as on /v1/embeddings.",
    ({"inputs": ["What is Deep Learning?", "Deep Learning is not..."]},),
)  # fmt: skip
parse_openai_embeddings = Body(
    "OpenAIEmbeddingsRequest",
    partial(EmbedRequest, input_param="input"),
    (Field("user", lambda body: _optional_str(body, "user"), fixed(nullable({"type": "string"})),
           "Accepted and ignored.", attr=None),
     ENCODING_FORMAT, OUTPUT_DTYPE, _CHUNK, _RETURN_CHUNKS,
     embed_inputs_field("input", _texts, _BATCH_NOTE), _NORMALIZE, TRUNCATE, DIRECTION, PROMPT, _DIMENSIONS,
     MODEL, PRIORITY),
    Capability.EMBED,
    "OpenAI's embeddings request, with TEI's truncate, truncation_direction, prompt_name and normalize, and "
    "output_dtype (int8, uint8, binary, ubinary, float16).",
    ({"input": ["What is Deep Learning?"]},),
)  # fmt: skip
parse_sparse = Body(
    "SparseRequest",
    SparseRequest,
    (_texts_field("inputs", "A text or a list of texts"), TRUNCATE, DIRECTION, PROMPT, MODEL,
     _positive("top_k", "Keep the k heaviest terms of each vector."),
     _flag("return_tokens", False, "Add each term's vocabulary entry."), PRIORITY),
    Capability.SPARSE,
    "SPLADE vectors (TEI's /embed_sparse).",
    ({"inputs": ["What is Deep Learning?"]},),
)  # fmt: skip
parse_tokenize = Body(
    "TokenizeRequest",
    TokenizeRequest,
    (_texts_field("inputs", "A text or a list of texts"),
     _flag("add_special_tokens", True, "Add the model's special tokens."), PROMPT, MODEL),
    Capability.TOKENIZE,
    "Tokenize with the model's tokenizer.",
    ({"inputs": "What is Deep Learning?"},),
)  # fmt: skip


def _ids_schema(served: Served) -> dict[str, Any]:
    token: dict[str, Any] = {"type": "integer", "minimum": 0}
    if served.vocab_size is not None:
        token["maximum"] = served.vocab_size - 1
    return {"anyOf": [{"type": "array", "items": token, "minItems": 1},
                      {"type": "array", "items": {"type": "array", "items": token}, "minItems": 1,
                       "maxItems": served.max_client_batch_size}]}  # fmt: skip


parse_decode = Body(
    "DecodeRequest",
    DecodeRequest,
    (Field("ids", _ids, _ids_schema, f"Token ids of the model's vocabulary, or lists of them; {_BATCH_NOTE}.",
           required=True),
     _flag("skip_special_tokens", True, "Leave the special tokens out."), MODEL),
    Capability.TOKENIZE,
    "Decode token ids with the model's tokenizer.",
    ({"ids": [101, 2054, 2003, 102]},),
)  # fmt: skip
