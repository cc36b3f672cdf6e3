"""What each route answers with 200, as JSON schemas for the OpenAPI document.

Each handler names its answer in its :func:`~embedserve.http.edge.endpoint` declaration, next to the code that
builds it; CI's schemathesis run checks every answer the live server gives against these schemas, so a handler that
drifts from its schema fails there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Answer:
    """A route's successful answer."""

    schema: dict[str, Any]
    description: str
    media_type: str = "application/json"


_INT: dict[str, Any] = {"type": "integer"}
_NUMBER: dict[str, Any] = {"type": "number"}
_STRING: dict[str, Any] = {"type": "string"}
_OPTIONAL_INT: dict[str, Any] = {"type": ["integer", "null"]}
_OPTIONAL_STRING: dict[str, Any] = {"type": ["string", "null"]}


def _object(properties: dict[str, Any], *, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """An object with these properties, all present but ``optional``."""
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
    }


def _list(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


USAGE = _object({"prompt_tokens": _INT, "total_tokens": _INT})
VECTOR = _list(_NUMBER)

EMBEDDINGS = Answer(
    {"anyOf": [_list(VECTOR), _list(_STRING), _list(_list(VECTOR)), _list(_list(_STRING))]},
    "One vector per input, in input order: lists of numbers (integers for the quantized output_dtype values), or "
    "base64 strings of the elements' bytes; with return_chunks, per input the list of its chunks' vectors.",
)
SPARSE = Answer(
    _list(_list(_object({"index": _INT, "value": _NUMBER, "token": _STRING}, optional=("token",)))),
    "One sparse vector per input: its non-zero terms (``token`` with ``return_tokens``).",
)
SIMILARITIES = Answer(_list(_NUMBER), "The cosine similarity of each sentence to the source sentence.")
TEI_RANKING = Answer(
    _list(_object({"index": _INT, "score": _NUMBER, "text": _STRING}, optional=("text",))),
    "The documents' indices and scores, best first (``text`` with ``return_text``).",
)
COHERE_RANKING = Answer(
    _object({
        "id": _STRING,
        "results": _list(_object({"index": _INT, "relevance_score": _NUMBER, "document": _object({"text": _STRING})},
                                 optional=("document",))),
        "model": _STRING,
        "usage": USAGE,
    }),
    "The documents' indices and scores, best first (``document`` with ``return_documents``).",
)  # fmt: skip
COHERE_V2_RANKING = Answer(
    _object({
        "id": _STRING,
        "results": _list(_object({"index": _INT, "relevance_score": _NUMBER})),
        "meta": {"type": "object"},
    }),
    "The documents' indices and scores, best first, in Cohere's v2 shape.",
)  # fmt: skip
_LABELS = _list(_object({"score": _NUMBER, "label": _STRING}))
PREDICTIONS = Answer(
    {"anyOf": [_LABELS, _list(_LABELS)]},
    "Each label's score, best first; a list of those when the request sent a list.",
)
TOKENS = Answer(
    _list(_list(_object({"id": _INT, "text": _STRING, "special": {"type": "boolean"}, "start": _OPTIONAL_INT,
                         "stop": _OPTIONAL_INT}))),
    "The tokens of each input; ``start`` and ``stop`` are character offsets in the input (null for added special "
    "tokens).",
)  # fmt: skip
TEXTS = Answer(_list(_STRING), "One text per list of ids.")
HEALTH = Answer(
    _object({"status": {"const": "ready"}, "models": {"type": "object", "additionalProperties": _STRING}}),
    "Every model is ready.",
)
_MODEL_PROPERTIES: dict[str, Any] = {
    "model_id": _STRING,
    "model_sha": _OPTIONAL_STRING,
    "served_model_name": _STRING,
    "model_dtype": _OPTIONAL_STRING,
    "model_device": _OPTIONAL_STRING,
    "kind": _OPTIONAL_STRING,
    "dimensions": _OPTIONAL_INT,
    "max_input_length": _OPTIONAL_INT,
    "max_client_batch_size": _INT,
    "max_batch_tokens": _INT,
    "max_concurrent_requests": _INT,
    "state": _STRING,
    "error": _OPTIONAL_STRING,
}
_MODEL_REQUIRED = ("model_id", "served_model_name", "kind", "max_client_batch_size", "state")
_MODEL_INFO = _object(_MODEL_PROPERTIES, optional=tuple(set(_MODEL_PROPERTIES) - set(_MODEL_REQUIRED)))
INFO = Answer(
    _object({**_MODEL_PROPERTIES, "version": _STRING, "models": _list(_MODEL_INFO)},
            optional=tuple(set(_MODEL_PROPERTIES) - set(_MODEL_REQUIRED))),
    "The default model and every limit (TEI's shape), and every served model under ``models``.",
)  # fmt: skip
METRICS = Answer(_STRING, "Prometheus text exposition.", media_type="text/plain")
_EMBEDDING = {"anyOf": [VECTOR, _STRING, _list(VECTOR), _list(_STRING)]}
OPENAI_EMBEDDINGS = Answer(
    _object({
        "object": {"const": "list"},
        "data": _list(_object({"object": {"const": "embedding"}, "embedding": _EMBEDDING,
                               "index": _INT})),
        "model": _STRING,
        "usage": USAGE,
    }),
    "One embedding per input, in input order: a list of numbers (integers for the quantized output_dtype values), "
    "or base64 of the elements' little-endian bytes (float32 unless output_dtype says otherwise); with "
    "return_chunks, a list of the input's chunk vectors.",
)  # fmt: skip
MODEL = _object({
    "id": _STRING, "object": {"const": "model"}, "created": _INT, "owned_by": _STRING, "kind": _OPTIONAL_STRING,
    "dimensions": _OPTIONAL_INT, "max_input_length": _OPTIONAL_INT, "state": _STRING,
})  # fmt: skip
OPENAI_MODEL = Answer(MODEL, "The model, in OpenAI's shape with embedserve's extras.")
OPENAI_MODELS = Answer(_object({"object": {"const": "list"}, "data": _list(MODEL)}), "Every served model.")
ROOT = Answer(
    {"anyOf": [EMBEDDINGS.schema, SIMILARITIES.schema, SPARSE.schema, TEI_RANKING.schema, PREDICTIONS.schema]},
    "What /embed, /similarity, /embed_sparse, /rerank or /predict answers, by the model's kind.",
)
