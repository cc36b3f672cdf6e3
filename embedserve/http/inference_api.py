"""Request bodies of the Hugging Face Inference API's tasks, as TEI reads them and huggingface_hub's InferenceClient
sends them: sentence-similarity (``/similarity``, and ``POST /`` for an embedding model) and the text-classification
``parameters`` (``POST /`` for a classifier). Same rules as :mod:`embedserve.http.schemas`, whose field readers
they use: every wrong value raises an :mod:`embedserve.errors` error naming the field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from embedserve.core.capabilities import Capability
from embedserve.core.tokenization import Direction
from embedserve.errors import ValidationError
from embedserve.http.fields import Body, Field, Served, nullable
from embedserve.http.priority import PRIORITY
from embedserve.http.schemas import (
    DIRECTION,
    MODEL,
    PROMPT,
    TEXT,
    TRUNCATE,
    _direction,
    _json_type,
    _optional_bool,
    _optional_str,
    _positive_int,
    _required_str,
    _short,
    _texts,
)
from embedserve.http.scoring_schemas import PredictRequest, parse_predict

Activation = Literal["sigmoid", "softmax", "none"]


@dataclass(frozen=True, slots=True)
class SimilarityRequest:
    """``POST /similarity``: the sentences to compare with the source sentence, and TEI's ``parameters``."""

    source: str
    sentences: list[str]
    truncate: bool | None = None
    truncation_direction: Direction = "right"
    prompt_name: str | None = None
    model: str | None = None


def _similarity_inputs(body: dict[str, Any]) -> tuple[str, list[str]]:
    """``inputs``: ``{"source_sentence": text, "sentences": [text, ...]}``."""
    inputs = body.get("inputs")
    if not isinstance(inputs, dict):
        raise ValidationError(
            '`inputs` must be an object: {"source_sentence": text, "sentences": [text, ...]}, got '
            f"{_json_type(inputs)}",
            param="inputs",
        )
    # Keys spelled as paths, so that messages and ``param`` name the nested field.
    source = _required_str({"inputs.source_sentence": inputs.get("source_sentence")}, "inputs.source_sentence")
    return source, _texts({"inputs.sentences": inputs.get("sentences")}, "inputs.sentences")


def _similarity_parameters(body: dict[str, Any]) -> dict[str, Any]:
    """``parameters`` (optional): ``truncate``, ``truncation_direction``, ``prompt_name``."""
    parameters = _parameters(body)
    return {
        "truncate": _optional_bool(parameters, "truncate"),
        "truncation_direction": _direction(parameters),
        "prompt_name": _optional_str(parameters, "prompt_name"),
    }


def _similarity_request(inputs: tuple[str, list[str]], parameters: dict[str, Any], **fields: Any) -> SimilarityRequest:
    return SimilarityRequest(source=inputs[0], sentences=inputs[1], **parameters, **fields)


def _similarity_inputs_schema(served: Served) -> dict[str, Any]:
    texts = {"type": "array", "items": TEXT, "minItems": 1, "maxItems": served.max_client_batch_size - 1}
    return {"type": "object", "properties": {"source_sentence": TEXT, "sentences": {"anyOf": [TEXT, texts]}},
            "required": ["source_sentence", "sentences"]}  # fmt: skip


def _similarity_parameters_schema(served: Served) -> dict[str, Any]:
    properties = {field.key: {**field.schema(served), "description": field.description}
                  for field in (TRUNCATE, DIRECTION, PROMPT)}  # fmt: skip
    return nullable({"type": "object", "properties": properties})


parse_similarity = Body(
    "SimilarityRequest",
    _similarity_request,
    (Field("inputs", _similarity_inputs, _similarity_inputs_schema, "The sentences to compare with the source "
           "sentence (with it, at most --max-client-batch-size texts per request).", required=True),
     Field("parameters", _similarity_parameters, _similarity_parameters_schema, "TEI's options."), MODEL,
     PRIORITY),
    Capability.EMBED,
    "Sentence similarity (the Inference API's task; TEI's /similarity).",
    ({"inputs": {"source_sentence": "What is Deep Learning?", "sentences": ["Deep Learning is...", "cheese"]}},),
)  # fmt: skip


def is_similarity(body: dict[str, Any]) -> bool:
    """Whether a body sent to ``POST /`` asks for sentence similarity: its ``inputs`` is an object, which no
    embedding request's is."""
    return isinstance(body.get("inputs"), dict)


@dataclass(frozen=True, slots=True)
class ClassificationParameters:
    """The Inference API's text-classification ``parameters``, which huggingface_hub's ``text_classification``
    sends (TEI's ``/predict`` has none)."""

    top_k: int | None = None
    """Keep the k best labels of each input."""
    function_to_apply: Activation | None = None
    """The activation instead of the model's own."""


def parse_classification_parameters(body: dict[str, Any]) -> ClassificationParameters | None:
    """``parameters.top_k`` and ``parameters.function_to_apply`` (``sigmoid``, ``softmax`` or ``none``); None when
    the body has no ``parameters`` (TEI's own ``/predict`` form)."""
    if "parameters" not in body:
        return None
    parameters = _parameters(body)
    function = parameters.get("function_to_apply")
    if function is not None and function not in ("sigmoid", "softmax", "none"):
        raise ValidationError(
            f"`parameters.function_to_apply` must be 'sigmoid', 'softmax' or 'none', got {_short(function)}",
            param="parameters.function_to_apply",
        )
    top_k = _positive_int({"parameters.top_k": parameters.get("top_k")}, "parameters.top_k")
    return ClassificationParameters(top_k=top_k, function_to_apply=function)


def _parameters(body: dict[str, Any]) -> dict[str, Any]:
    value = body.get("parameters")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError(f"`parameters` must be an object, got {_json_type(value)}", param="parameters")
    return value


def _classification_parameters_schema(served: Served) -> dict[str, Any]:
    activations = {"type": "string", "enum": ["sigmoid", "softmax", "none"]}
    properties = {"top_k": nullable({"type": "integer", "minimum": 1}), "function_to_apply": nullable(activations)}
    return nullable({"type": "object", "properties": properties})


def _classification(
    parameters: ClassificationParameters | None, **fields: Any
) -> tuple[PredictRequest, ClassificationParameters | None]:
    return parse_predict.build(**fields), parameters


parse_classification = Body(
    "InferenceClassificationRequest",
    _classification,
    (*parse_predict.fields,
     Field("parameters", parse_classification_parameters, _classification_parameters_schema,
           "The Inference API's text-classification options (huggingface_hub's text_classification sends them); "
           "with them the answer is one ranked list per input, even for one text, cut to top_k.")),
    Capability.CLASSIFY,
    parse_predict.description,
    parse_predict.examples,
)  # fmt: skip
"""``/predict``'s body (TEI's fields, read by :data:`~embedserve.http.scoring_schemas.parse_predict`'s fields) and the
Inference API's ``parameters``; the request and its options, None without ``parameters``."""
