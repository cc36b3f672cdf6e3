"""Every malformed request gets its documented status and a JSON error in its route family's shape, and the
server keeps answering correctly afterwards."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pytest

from tests.conftest import model_settings, run_server

pytestmark = pytest.mark.integration

LIMIT = 20_000
V1 = "/v1/embeddings"
LONG = "word " * 400


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: bytes | Any
    status: int
    kind: str
    """TEI error_type on native routes, OpenAI code on /v1/*."""
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    mentions: str = ""
    """A word the message must contain (it names the field or the limit)."""


CASES = [
    Case("not-json", "/embed", b"{bad", 400, "InvalidJson"),
    Case("not-json-openai", V1, b"{bad", 400, "invalid_json"),
    Case("empty-body", "/embed", b"", 400, "InvalidJson"),
    Case("invalid-utf8", "/embed", b'{"inputs": "\xff\xfe"}', 400, "InvalidJson"),
    Case("lone-surrogate-escape", "/embed", b'{"inputs": "\\ud800"}', 400, "InvalidJson"),
    Case("nan-literal", "/embed", b'{"inputs": NaN}', 400, "InvalidJson"),
    Case("nested-too-deep", "/embed", b"[" * 5000, 400, "InvalidJson"),
    Case("body-is-array", "/embed", [1, 2], 422, "Validation", mentions="object"),
    Case("inputs-missing", "/embed", {"normalize": True}, 422, "Validation", mentions="inputs"),
    Case("inputs-null", "/embed", {"inputs": None}, 422, "Validation", mentions="inputs"),
    Case("inputs-number", "/embed", {"inputs": 5}, 422, "Validation", mentions="inputs"),
    Case("inputs-empty-list", "/embed", {"inputs": []}, 400, "Empty", mentions="inputs"),
    Case("inputs-empty-string", "/embed", {"inputs": ""}, 400, "Empty", mentions="inputs"),
    Case("empty-string-in-list", "/embed", {"inputs": ["a", ""]}, 400, "Empty", mentions="inputs[1]"),
    Case("null-in-list", "/embed", {"inputs": ["a", None]}, 422, "Validation", mentions="inputs[1]"),
    Case("nested-list", "/embed", {"inputs": [["a"]]}, 422, "Validation", mentions="inputs[0]"),
    Case("input-empty-openai", V1, {"input": [], "model": "minilm"}, 400, "empty_input"),
    Case("token-ids", V1, {"input": [1, 2, 3], "model": "minilm"}, 422, "invalid_value", mentions="token"),
    Case("token-id-lists", V1, {"input": [[1, 2], [3]]}, 422, "invalid_value", mentions="token"),
    Case("normalize-string", "/embed", {"inputs": "a", "normalize": "yes"}, 422, "Validation", mentions="normalize"),
    Case("truncate-number", "/embed", {"inputs": "a", "truncate": 1}, 422, "Validation", mentions="truncate"),
    Case("direction-up", "/embed", {"inputs": "a", "truncation_direction": "up"}, 422, "Validation", mentions="left"),
    Case("dimensions-zero", "/embed", {"inputs": "a", "dimensions": 0}, 422, "Validation", mentions="dimensions"),
    Case("dimensions-negative", "/embed", {"inputs": "a", "dimensions": -5}, 422, "Validation", mentions="positive"),
    Case("dimensions-float", "/embed", {"inputs": "a", "dimensions": 1.5}, 422, "Validation", mentions="integer"),
    Case("dimensions-bool", "/embed", {"inputs": "a", "dimensions": True}, 422, "Validation", mentions="integer"),
    Case("dimensions-huge", V1, {"input": "a", "dimensions": 10**6}, 422, "invalid_value", mentions="384"),
    Case("too-many-inputs", "/embed", {"inputs": ["a"] * 9}, 422, "Validation", mentions="8"),
    Case("too-long-no-truncate", "/embed", {"inputs": LONG, "truncate": False}, 422, "Validation", mentions="256"),
    Case("oversized-body", "/embed", {"inputs": "a" * LIMIT}, 413, "PayloadTooLarge"),
    Case("oversized-openai", V1, {"input": "a" * LIMIT}, 413, "payload_too_large"),
    Case("unknown-model-openai", V1, {"input": "a", "model": "gpt-9"}, 404, "model_not_found", mentions="'gpt-9'"),
    Case("unknown-model-tei", "/embed", {"inputs": "a", "model": "gpt-9"}, 404, "ModelNotFound", mentions="gpt-9"),
    Case("model-number", V1, {"input": "a", "model": 5}, 422, "invalid_value", mentions="model"),
    Case("unknown-prompt", "/embed", {"inputs": "a", "prompt_name": "query"}, 422, "Validation", mentions="query"),
    Case("prompt-number", "/embed", {"inputs": "a", "prompt_name": 3}, 422, "Validation", mentions="prompt_name"),
    Case("encoding-int8", V1, {"input": "a", "encoding_format": "int8"}, 422, "invalid_value"),
    Case("user-number", V1, {"input": "a", "user": 12}, 422, "invalid_value", mentions="user"),
    Case("text-plain", "/embed", b'{"inputs": "a"}', 415, "UnsupportedMediaType", headers={"content-type": "text/x"}),
    Case(
        "form-urlencoded",
        V1,
        b"input=a",
        415,
        "unsupported_media_type",
        headers={"content-type": "application/x-www-form-urlencoded"},
    ),  # fmt: skip
    Case("unknown-route-tei", "/nothing", {"inputs": "a"}, 404, "NotFound"),
    Case("unknown-route-openai", "/v1/nothing", {"input": "a"}, 404, "not_found"),
    Case("wrong-method", "/embed", None, 405, "MethodNotAllowed", method="GET"),
    Case("wrong-method-openai", V1, None, 405, "method_not_allowed", method="GET"),
]


@pytest.fixture(scope="module")
def strict_server(minilm_path):
    with run_server(model_settings(minilm_path, max_client_batch_size=8), payload_limit=LIMIT) as server:
        yield server


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_request_gets_its_status_and_a_json_error(strict_server, case):
    content = case.body if isinstance(case.body, bytes) or case.body is None else orjson.dumps(case.body)
    headers = {"content-type": "application/json", **case.headers}
    with strict_server.client() as client:
        response = client.request(case.method, case.path, content=content, headers=headers)
    assert response.status_code == case.status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    if case.path.startswith("/v1/"):
        error = body["error"]
        assert error["code"] == case.kind
        assert set(error) == {"message", "type", "param", "code"}
        message = error["message"]
    else:
        assert body["error_type"] == case.kind
        message = body["error"]
    assert isinstance(message, str)
    assert message
    assert case.mentions in message


def test_the_server_still_answers_correctly_after_every_malformed_request(strict_server):
    with strict_server.client() as client:
        for case in CASES:
            content = case.body if isinstance(case.body, bytes) or case.body is None else orjson.dumps(case.body)
            client.request(case.method, case.path, content=content, headers={"content-type": "application/json"})
        assert client.get("/health").status_code == 200
        pair = ["A man is eating food.", "A man is eating a piece of bread."]
        response = client.post("/embed", json={"inputs": pair})
    vectors = np.array(response.json())
    assert float(vectors[0] @ vectors[1]) == pytest.approx(0.7553, abs=1e-4)
    assert strict_server.runtime.admission.in_use == 0


def test_a_streamed_body_without_content_length_is_cut_off_at_the_limit(strict_server):
    def chunks():
        yield b'{"inputs": "'
        for _ in range(LIMIT // 1000 + 2):
            yield b"a" * 1000
        yield b'"}'

    with strict_server.client() as client:
        response = client.post("/embed", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.json()["error_type"] == "PayloadTooLarge"
