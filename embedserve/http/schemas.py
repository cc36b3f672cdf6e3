"""Request bodies: JSON bytes -> typed, validated dataclasses.

Parsing is total: any input either yields a request object or raises an :mod:`embedserve.errors` error naming the
offending field (``param``). Unknown fields are ignored, as TEI and the OpenAI API do. Model-dependent limits
(``max_client_batch_size``, ``dimensions`` against the model size, prompt names) are checked later by the pipeline,
which knows the model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, TypeGuard

import orjson

from embedserve.core.tokenization import Direction
from embedserve.errors import EmptyInputError, InvalidJSONError, ValidationError

EncodingFormat = Literal["float", "base64"]


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    """One embedding request, whichever route it came from."""

    inputs: list[str]
    normalize: bool = True
    truncate: bool | None = None
    truncation_direction: Direction = "right"
    prompt_name: str | None = None
    dimensions: int | None = None
    model: str | None = None
    encoding_format: EncodingFormat = "float"
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


def parse_tei_embed(body: dict[str, Any]) -> EmbedRequest:
    """``POST /embed``: ``inputs``, ``normalize``, ``truncate``, ``truncation_direction``, ``prompt_name``,
    ``dimensions`` and an optional ``model``."""
    return _parse_embed(body, "inputs")


def parse_openai_embeddings(body: dict[str, Any]) -> EmbedRequest:
    """``POST /v1/embeddings``: the OpenAI fields plus the TEI extras ``truncate``, ``truncation_direction``,
    ``prompt_name`` and ``normalize``. ``user`` is accepted and ignored."""
    _optional_str(body, "user")
    raw = body.get("encoding_format")
    fmt: EncodingFormat
    if raw is None or raw == "float":
        fmt = "float"
    elif raw == "base64":
        fmt = "base64"
    else:
        raise ValidationError(
            f"`encoding_format` must be 'float' or 'base64', got {_short(raw)}", param="encoding_format"
        )
    return replace(_parse_embed(body, "input"), encoding_format=fmt)


def _parse_embed(body: dict[str, Any], input_name: str) -> EmbedRequest:
    return EmbedRequest(
        inputs=_texts(body, input_name),
        normalize=_bool(body, "normalize", default=True),
        truncate=_optional_bool(body, "truncate"),
        truncation_direction=_direction(body),
        prompt_name=_optional_str(body, "prompt_name"),
        dimensions=_dimensions(body),
        model=_optional_str(body, "model"),
        input_param=input_name,
    )


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
                raise ValidationError(
                    f"`{name}` holds token ids; embedserve accepts text only: send the strings instead",
                    param=name,
                )
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
    if not _is_int(value):
        raise ValidationError(f"`dimensions` must be an integer, got {_json_type(value)}", param="dimensions")
    if value < 1:
        raise ValidationError(f"`dimensions` must be positive, got {value}", param="dimensions")
    return value


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


def parse_sparse(body: dict[str, Any]) -> SparseRequest:
    """``inputs``, ``truncate``, ``truncation_direction``, ``prompt_name``, ``model`` and the extensions ``top_k``
    (keep the k heaviest terms) and ``return_tokens`` (the vocabulary entry of each term)."""
    return SparseRequest(
        inputs=_texts(body, "inputs"),
        truncate=_optional_bool(body, "truncate"),
        truncation_direction=_direction(body),
        prompt_name=_optional_str(body, "prompt_name"),
        model=_optional_str(body, "model"),
        top_k=_positive_int(body, "top_k"),
        return_tokens=_bool(body, "return_tokens", default=False),
    )


@dataclass(frozen=True, slots=True)
class RerankRequest:
    """``POST /rerank`` (TEI) and ``POST /v1/rerank`` (Cohere/Jina), normalized."""

    query: str
    documents: list[str]
    truncate: bool | None = None
    truncation_direction: Direction = "right"
    raw_scores: bool = False
    return_documents: bool = False
    top_n: int | None = None
    model: str | None = None


def parse_tei_rerank(body: dict[str, Any]) -> RerankRequest:
    """``query``, ``texts``, ``truncate``, ``truncation_direction``, ``raw_scores``, ``return_text``, ``model``."""
    return RerankRequest(
        query=_required_str(body, "query"),
        documents=_texts(body, "texts"),
        truncate=_optional_bool(body, "truncate"),
        truncation_direction=_direction(body),
        raw_scores=_bool(body, "raw_scores", default=False),
        return_documents=_bool(body, "return_text", default=False),
        model=_optional_str(body, "model"),
    )


def parse_cohere_rerank(body: dict[str, Any]) -> RerankRequest:
    """``model``, ``query``, ``documents`` (strings or ``{"text": ...}``), ``top_n``, ``return_documents``, plus the
    extensions ``truncate``, ``truncation_direction`` and ``raw_scores``."""
    raw = body.get("documents")
    if isinstance(raw, list):
        body = {**body, "documents": [d.get("text") if isinstance(d, dict) else d for d in raw]}
    return RerankRequest(
        query=_required_str(body, "query"),
        documents=_texts(body, "documents"),
        truncate=_optional_bool(body, "truncate"),
        truncation_direction=_direction(body),
        raw_scores=_bool(body, "raw_scores", default=False),
        return_documents=_bool(body, "return_documents", default=False),
        top_n=_positive_int(body, "top_n"),
        model=_optional_str(body, "model"),
    )


@dataclass(frozen=True, slots=True)
class PredictRequest:
    """``POST /predict``: single texts or text pairs; ``batched`` when the request sent a list of them."""

    inputs: list[tuple[str, str | None]]
    batched: bool
    truncate: bool | None = None
    truncation_direction: Direction = "right"
    raw_scores: bool = False
    model: str | None = None


def parse_predict(body: dict[str, Any]) -> PredictRequest:
    """``inputs`` as TEI reads it: ``"text"``, a pair ``["a", "b"]``, or a batch ``["a", ["b"], ["c", "d"], ...]``
    (a list of exactly two strings is one pair)."""
    value = body.get("inputs")
    if value is None:
        raise ValidationError("`inputs` is required: a text, a pair [text, text], or a list of them", param="inputs")
    if isinstance(value, str) or (_is_pair(value) and len(value) == 2):
        items, batched = [value], False
    elif isinstance(value, list):
        if not value:
            raise EmptyInputError("`inputs` cannot be empty", param="inputs")
        items, batched = value, True
    else:
        raise ValidationError(f"`inputs` must be a text, a pair or a list, got {_json_type(value)}", param="inputs")
    inputs: list[tuple[str, str | None]] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = [item]
        if not _is_pair(item) or not 1 <= len(item) <= 2:
            raise ValidationError(f"`inputs[{i}]` must be a text or a list of one or two texts", param="inputs")
        if not all(item):
            raise EmptyInputError(f"`inputs[{i}]` holds an empty string", param="inputs")
        inputs.append((item[0], item[1] if len(item) == 2 else None))
    return PredictRequest(
        inputs=inputs,
        batched=batched,
        truncate=_optional_bool(body, "truncate"),
        truncation_direction=_direction(body),
        raw_scores=_bool(body, "raw_scores", default=False),
        model=_optional_str(body, "model"),
    )


@dataclass(frozen=True, slots=True)
class TokenizeRequest:
    """``POST /tokenize``."""

    inputs: list[str]
    add_special_tokens: bool = True
    prompt_name: str | None = None
    model: str | None = None


def parse_tokenize(body: dict[str, Any]) -> TokenizeRequest:
    """``inputs``, ``add_special_tokens`` (default true), ``prompt_name``, ``model``."""
    return TokenizeRequest(
        inputs=_texts(body, "inputs"),
        add_special_tokens=_bool(body, "add_special_tokens", default=True),
        prompt_name=_optional_str(body, "prompt_name"),
        model=_optional_str(body, "model"),
    )


@dataclass(frozen=True, slots=True)
class DecodeRequest:
    """``POST /decode``."""

    ids: list[list[int]]
    skip_special_tokens: bool = True
    model: str | None = None


def parse_decode(body: dict[str, Any]) -> DecodeRequest:
    """``ids`` (a list of token ids, or a list of such lists), ``skip_special_tokens`` (default true), ``model``."""
    value = body.get("ids")
    if not isinstance(value, list) or not value:
        raise ValidationError("`ids` must be a non-empty list of token ids or of lists of token ids", param="ids")
    rows = [value] if all(_is_int(v) for v in value) else value
    if not all(isinstance(row, list) and all(_is_int(v) for v in row) for row in rows):
        raise ValidationError("`ids` must hold integers only, or lists of integers", param="ids")
    return DecodeRequest(
        ids=rows,
        skip_special_tokens=_bool(body, "skip_special_tokens", default=True),
        model=_optional_str(body, "model"),
    )


def _is_pair(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


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
    if not _is_int(value) or value < 1:
        raise ValidationError(f"`{name}` must be a positive integer, got {_short(value)}", param=name)
    return value
