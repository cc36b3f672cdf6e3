"""One status table, two body shapes; request parsing into typed requests."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedserve.errors import (
    ERROR_TABLE,
    BackendError,
    EmbedServeError,
    EmptyInputError,
    ModelNotFoundError,
    OverloadedError,
    RateLimitedError,
    ValidationError,
    from_http_status,
    render_openai,
    render_tei,
)
from embedserve.http.schemas import decode_json_object, parse_openai_embeddings, parse_tei_embed

pytestmark = pytest.mark.unit


def test_statuses_follow_the_design_table():
    statuses = {cls.__name__: cls.status for cls in ERROR_TABLE}
    assert statuses["EmptyInputError"] == 400
    assert statuses["InvalidJSONError"] == 400
    assert statuses["UnauthorizedError"] == 401
    assert statuses["ModelNotFoundError"] == 404
    assert statuses["PayloadTooLargeError"] == 413
    assert statuses["ValidationError"] == 422
    assert statuses["CapabilityError"] == 422
    assert statuses["OverloadedError"] == statuses["RateLimitedError"] == 429
    assert statuses["UnhealthyError"] == 503
    assert statuses["BackendError"] == 500


def test_the_error_table_lists_every_error_class_once():
    def subclasses(cls: type[EmbedServeError]) -> set[type[EmbedServeError]]:
        found = set(cls.__subclasses__())
        return found.union(*(subclasses(sub) for sub in found))

    assert len(ERROR_TABLE) == len(set(ERROR_TABLE))
    assert set(ERROR_TABLE) == subclasses(EmbedServeError)
    assert readme_rows() == [(cls.status, cls.error_type, cls.code) for cls in ERROR_TABLE]


def readme_rows() -> list[tuple[int, str, str | None]]:
    """(status, TEI error_type, OpenAI code) of each row of the README's error table, in order."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme.split("| status | TEI `error_type` | OpenAI `code` | when |", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in table.strip().splitlines()[1:]:
        status, error_type, code = (cell.strip().strip("`") for cell in line.split("|")[1:4])
        rows.append((int(status), error_type, code))
    return rows


def test_tei_shape_is_flat_and_openai_shape_is_an_envelope():
    err = ModelNotFoundError("model 'x' is not served here", param="model")
    assert render_tei(err) == {"error": "model 'x' is not served here", "error_type": "ModelNotFound"}
    assert render_openai(err) == {
        "error": {
            "message": "model 'x' is not served here",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def test_overloaded_and_rate_limited_are_told_apart():
    assert render_tei(OverloadedError("x"))["error_type"] != render_tei(RateLimitedError("x"))["error_type"]
    assert render_openai(OverloadedError("x"))["error"]["code"] != render_openai(RateLimitedError("x"))["error"]["code"]


def test_framework_statuses_map_into_the_taxonomy():
    assert from_http_status(404, "no route").error_type == "NotFound"
    assert from_http_status(405, "no").error_type == "MethodNotAllowed"
    assert isinstance(from_http_status(500, "boom"), BackendError)
    assert from_http_status(500, "secret detail").message == "internal error"


def test_tei_request_defaults():
    request = parse_tei_embed({"inputs": "hello"})
    assert request.inputs == ["hello"]
    assert request.normalize is True
    assert request.truncate is None
    assert request.truncation_direction == "right"
    assert request.dimensions is None


def test_openai_request_with_extras():
    request = parse_openai_embeddings(
        {"input": ["a", "b"], "model": "m", "encoding_format": "base64", "dimensions": 8, "user": "u",
         "truncate": False, "prompt_name": "query", "normalize": False, "truncation_direction": "LEFT"}
    )  # fmt: skip
    assert request.inputs == ["a", "b"]
    assert (request.model, request.encoding_format, request.dimensions) == ("m", "base64", 8)
    assert (request.truncate, request.prompt_name, request.normalize) == (False, "query", False)
    assert request.truncation_direction == "left"
    assert request.input_param == "input"


def test_unknown_fields_are_ignored():
    assert parse_tei_embed({"inputs": "a", "something_new": 1}).inputs == ["a"]


@pytest.mark.parametrize("body", [{"inputs": []}, {"inputs": ""}, {"inputs": ["a", ""]}])
def test_empty_inputs_are_empty_errors(body):
    with pytest.raises(EmptyInputError):
        parse_tei_embed(body)


@pytest.mark.parametrize("body", [b"[]", b"1", b'"text"', b"null"])
def test_a_body_that_is_not_an_object_is_a_validation_error(body):
    with pytest.raises(ValidationError, match="JSON object"):
        decode_json_object(body)
