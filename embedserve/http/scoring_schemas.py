"""Request bodies of the cross-encoder routes: ``/rerank`` (TEI), ``/v1/rerank`` and ``/v2/rerank`` (Cohere, Jina)
and ``/predict`` (TEI's classify). Same rules as :mod:`embedserve.http.schemas`, whose field readers and field kinds
they use: every wrong value raises an :mod:`embedserve.errors` error naming the field, and each body declares its
JSON schema field by field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from embedserve.core.capabilities import Capability
from embedserve.core.tokenization import Direction
from embedserve.errors import EmptyInputError, ValidationError
from embedserve.http.fields import Body, Field, Served, fixed
from embedserve.http.priority import PRIORITY
from embedserve.http.schemas import (
    _BATCH_NOTE,
    DIRECTION,
    MODEL,
    TEXT,
    TRUNCATE,
    _flag,
    _json_type,
    _positive,
    _required_str,
    _texts,
    _texts_field,
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


def _cohere_documents(body: dict[str, Any]) -> list[str]:
    """Cohere's ``documents``: strings or ``{"text": ...}`` objects."""
    raw = body.get("documents")
    if isinstance(raw, list):
        body = {"documents": [d.get("text") if isinstance(d, dict) else d for d in raw]}
    return _texts(body, "documents")


@dataclass(frozen=True, slots=True)
class PredictRequest:
    """``POST /predict``: single texts or text pairs; ``batched`` when the request sent a list of them."""

    inputs: list[tuple[str, str | None]]
    batched: bool
    truncate: bool | None = None
    truncation_direction: Direction = "right"
    raw_scores: bool = False
    model: str | None = None


def _predict_inputs(body: dict[str, Any]) -> tuple[list[tuple[str, str | None]], bool]:
    """``inputs`` as TEI reads it: ``"text"``, a pair ``["a", "b"]``, or a batch ``["a", ["b"], ["c", "d"], ...]``
    (a list of exactly two strings is one pair); and whether it was a batch."""
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
    return inputs, batched


def _predict_request(inputs: tuple[list[tuple[str, str | None]], bool], **fields: Any) -> PredictRequest:
    return PredictRequest(inputs=inputs[0], batched=inputs[1], **fields)


def _is_pair(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


_RAW_SCORES = _flag("raw_scores", False, "Logits instead of the activated scores.")

parse_tei_rerank = Body(
    "RerankRequest",
    RerankRequest,
    (Field("query", lambda body: _required_str(body, "query"), fixed(TEXT), "The query.", required=True),
     _texts_field("texts", "The documents to score against the query", attr="documents"), TRUNCATE, DIRECTION,
     _RAW_SCORES, _flag("return_text", False, "Echo each document's text.", attr="return_documents"), MODEL,
     PRIORITY),
    Capability.RERANK,
    "Rerank (TEI's /rerank).",
    ({"query": "What is Deep Learning?", "texts": ["Deep Learning is...", "cheese"]},),
)  # fmt: skip


def _cohere_documents_schema(served: Served) -> dict[str, Any]:
    document = {"anyOf": [TEXT, {"type": "object", "properties": {"text": TEXT}, "required": ["text"]}]}
    return {"anyOf": [TEXT, {"type": "array", "items": document, "minItems": 1,
                              "maxItems": served.max_client_batch_size}]}  # fmt: skip


parse_cohere_rerank = Body(
    "CohereRerankRequest",
    RerankRequest,
    (Field("query", lambda body: _required_str(body, "query"), fixed(TEXT), "The query.", required=True),
     Field("documents", _cohere_documents, _cohere_documents_schema,
           f'Texts or {{"text": ...}} objects; {_BATCH_NOTE}.', required=True),
     TRUNCATE, DIRECTION, _RAW_SCORES, _flag("return_documents", False, "Echo each document."),
     _positive("top_n", "Return only the n best documents."), MODEL, PRIORITY),
    Capability.RERANK,
    "Rerank in Cohere's and Jina's shape.",
    ({"query": "What is Deep Learning?", "documents": ["Deep Learning is...", "cheese"]},),
)  # fmt: skip


def _predict_schema(served: Served) -> dict[str, Any]:
    pair = {"type": "array", "items": TEXT, "minItems": 1, "maxItems": 2}
    batch = {"type": "array", "items": {"anyOf": [TEXT, pair]}, "minItems": 1,
             "maxItems": served.max_client_batch_size}  # fmt: skip
    return {"anyOf": [TEXT, pair, batch]}


parse_predict = Body(
    "PredictRequest",
    _predict_request,
    (Field("inputs", _predict_inputs, _predict_schema, "A text, a pair [text, text], or a list of texts and pairs "
           f"(a list of exactly two texts is one pair); {_BATCH_NOTE}.", required=True),
     TRUNCATE, DIRECTION, _RAW_SCORES, MODEL, PRIORITY),
    Capability.CLASSIFY,
    "Classify texts or text pairs (TEI's /predict).",
    ({"inputs": "I like you. I love you"},),
)  # fmt: skip
