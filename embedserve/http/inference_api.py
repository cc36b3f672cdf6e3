"""Request bodies of the Hugging Face Inference API's tasks, as TEI reads them and huggingface_hub's InferenceClient
sends them: sentence-similarity (``/similarity``, and ``POST /`` for an embedding model) and the text-classification
``parameters`` (``POST /`` for a classifier). Same rules as :mod:`embedserve.http.schemas`, whose field readers
they use: every wrong value raises an :mod:`embedserve.errors` error naming the field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from embedserve.core.tokenization import Direction
from embedserve.errors import ValidationError
from embedserve.http.schemas import (
    _direction,
    _json_type,
    _optional_bool,
    _optional_str,
    _positive_int,
    _required_str,
    _short,
    _texts,
)

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


def parse_similarity(body: dict[str, Any]) -> SimilarityRequest:
    """``inputs``: ``{"source_sentence": text, "sentences": [text, ...]}``; ``parameters`` (optional):
    ``truncate``, ``truncation_direction``, ``prompt_name``; and embedserve's ``model``."""
    inputs = body.get("inputs")
    if not isinstance(inputs, dict):
        raise ValidationError(
            '`inputs` must be an object: {"source_sentence": text, "sentences": [text, ...]}, got '
            f"{_json_type(inputs)}",
            param="inputs",
        )
    parameters = _parameters(body)
    return SimilarityRequest(
        # Keys spelled as paths, so that messages and ``param`` name the nested field.
        source=_required_str({"inputs.source_sentence": inputs.get("source_sentence")}, "inputs.source_sentence"),
        sentences=_texts({"inputs.sentences": inputs.get("sentences")}, "inputs.sentences"),
        truncate=_optional_bool(parameters, "truncate"),
        truncation_direction=_direction(parameters),
        prompt_name=_optional_str(parameters, "prompt_name"),
        model=_optional_str(body, "model"),
    )


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
