"""API keys, rate limits, CORS, metrics and the access log, through HTTP with the real model."""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from embedserve.http.keys import key_id
from embedserve.logs import JsonFormatter
from embedserve.settings import CacheSettings, EdgeSettings
from tests.conftest import model_settings, run_server

pytestmark = pytest.mark.integration

KEY = "sk-test-0123456789"
SECRET_TEXT = "a confidential sentence about the merger"


@pytest.fixture(scope="module")
def keyed_server(minilm_path):
    edge = EdgeSettings(api_key=(KEY, "second-key"), rate_limit_rps=0, cors_allow_origin=("https://app.example",))
    with run_server(model_settings(minilm_path, max_client_batch_size=8), edge=edge) as server:
        yield server


def auth(key: str = KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_requests_without_a_valid_key_get_401_with_www_authenticate_in_both_shapes(keyed_server):
    with keyed_server.client() as client:
        missing = client.post("/embed", json={"inputs": "x"})
        wrong = client.post("/v1/embeddings", json={"input": "x", "model": "minilm"}, headers=auth("nope"))
        info = client.get("/info")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error_type"] == "Unauthorized"
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"].startswith("Bearer")
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert info.status_code == 401


def test_every_response_carries_a_request_id_echoing_the_clients(keyed_server):
    with keyed_server.client() as client:
        responses = [
            client.get("/health"),
            client.get("/info", headers=auth()),
            client.get("/v1/models"),
            client.get("/metrics"),
            client.get("/nowhere"),
            client.post("/embed", json={"inputs": "x"}),
        ]
        echoed = client.get("/v1/models", headers={**auth(), "x-request-id": "trace-me-7"})
    for response in responses:
        assert len(response.headers["x-request-id"]) == 32
    assert echoed.headers["x-request-id"] == "trace-me-7"


def test_a_valid_key_is_served_and_health_and_metrics_stay_open(keyed_server):
    with keyed_server.client() as client:
        assert client.post("/embed", json={"inputs": "x"}, headers=auth()).status_code == 200
        assert client.post("/embed", json={"inputs": "x"}, headers=auth("second-key")).status_code == 200
        assert client.get("/health").status_code == 200
        assert client.get("/metrics").status_code == 200


def test_metrics_can_require_the_key(minilm_path):
    edge = EdgeSettings(api_key=(KEY,), metrics_auth=True, rate_limit_rps=0)
    with run_server(model_settings(minilm_path), edge=edge) as server, server.client() as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=auth()).status_code == 200
        assert client.get("/health").status_code == 200


def test_browsers_may_send_the_authorization_header_from_an_allowed_origin(keyed_server):
    preflight = {
        "origin": "https://app.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    }
    with keyed_server.client() as client:
        allowed = client.options("/v1/embeddings", headers=preflight)
        other = client.options("/v1/embeddings", headers={**preflight, "origin": "https://evil.example"})
        actual = client.post("/embed", json={"inputs": "x"}, headers={**auth(), "origin": "https://app.example"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert other.status_code == 400
    assert actual.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-request-id" in actual.headers["access-control-expose-headers"]


def test_over_the_request_rate_a_key_gets_429_rate_limited_with_retry_after(minilm_path):
    edge = EdgeSettings(api_key=(KEY, "other"), rate_limit_rps=0.5, rate_limit_burst=3)
    with run_server(model_settings(minilm_path), edge=edge) as server, server.client() as client:
        statuses = [client.post("/embed", json={"inputs": "x"}, headers=auth()).status_code for _ in range(4)]
        limited = client.post("/v1/embeddings", json={"input": "x", "model": "minilm"}, headers=auth())
        other_key = client.post("/embed", json={"inputs": "x"}, headers=auth("other"))
        health = client.get("/health")
    assert statuses == [200, 200, 200, 429]
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert limited.headers["retry-after"] == "2"
    assert other_key.status_code == 200
    assert health.status_code == 200


def test_the_token_budget_is_charged_with_the_real_token_count(minilm_path):
    edge = EdgeSettings(rate_limit_rps=0, rate_limit_tpm=60)  # one token per second, per client address
    with run_server(model_settings(minilm_path), edge=edge) as server, server.client() as client:
        first = client.post("/embed", json={"inputs": "word " * 100})  # 102 tokens: 42 in debt
        second = client.post("/embed", json={"inputs": "x"})
    assert first.status_code == 200
    assert second.status_code == 429
    assert second.json()["error_type"] == "RateLimited"
    assert 40 <= int(second.headers["retry-after"]) <= 43


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_add_up_to_the_traffic_sent(minilm_path, reference_model):
    edge = EdgeSettings(rate_limit_rps=0)
    texts = [["hello"], ["a b c", "d e f g"], ["the quick brown fox"] * 3, ["x"]]
    off = CacheSettings(cache_bytes=0)  # every input computed, repeats too (the cache's metrics: test_cache.py)
    settings = model_settings(minilm_path, max_client_batch_size=4)
    with run_server(settings, edge=edge, cache=off) as server, server.client() as c:
        tokens = 0
        for batch in texts:
            response = c.post("/v1/embeddings", json={"input": batch, "model": "minilm"})
            tokens += response.json()["usage"]["prompt_tokens"]
        assert c.post("/embed", json={"inputs": []}).status_code == 400
        assert c.post("/embed", json={"inputs": ["a"] * 5}).status_code == 422
        assert c.get("/no-such-route").status_code == 404
        found = samples(c.get("/metrics").text)
    model = {"model": "minilm"}
    ok = {"route": "/v1/embeddings", "model": "minilm", "status": "200"}
    assert value(found, "embedserve_requests_total", **ok) == 4
    assert value(found, "embedserve_requests_total", route="/embed", model="-", status="400") == 1
    assert value(found, "embedserve_requests_total", route="/embed", model="-", status="422") == 0  # model known
    assert value(found, "embedserve_requests_total", route="/embed", model="minilm", status="422") == 1
    assert value(found, "embedserve_rejected_requests_total", reason="validation") == 2
    assert value(found, "embedserve_rejected_requests_total", reason="not_found") == 1
    assert value(found, "embedserve_embedded_inputs_total", **model) == 7
    assert value(found, "embedserve_embedded_tokens_total", **model) == tokens
    batches = value(found, "embedserve_batch_size_inputs_count", **model)
    assert 4 <= batches <= 7
    assert value(found, "embedserve_batch_size_inputs_sum", **model) == 7
    assert value(found, "embedserve_batch_tokens_sum", **model) - tokens == value(
        found, "embedserve_padding_tokens_total", **model
    )
    assert value(found, "embedserve_request_duration_seconds_count", route="/v1/embeddings", model="minilm") == 4
    stages = ("parse", "tokenization", "queue", "inference", "serialization")
    for stage in stages:
        assert value(found, f"embedserve_{stage}_duration_seconds_count", **model) == 4
    assert value(found, "embedserve_inference_duration_seconds_sum", **model) > 0
    assert value(found, "embedserve_serialization_duration_seconds_sum", **model) > 0
    # The stages are disjoint parts of each request's time in the server.
    in_stages = sum(value(found, f"embedserve_{stage}_duration_seconds_sum", **model) for stage in stages)
    assert in_stages <= value(found, "embedserve_request_duration_seconds_sum", route="/v1/embeddings", model="minilm")
    assert value(found, "embedserve_queue_size_inputs", **model) == 0
    assert value(found, "embedserve_inflight_inputs", **model) == 0
    assert value(found, "embedserve_model_load_seconds", **model) > 0
    assert any(name == "embedserve_build_info" for name, _ in found)


def test_metrics_can_be_served_on_their_own_port(minilm_path):
    import socket

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    edge = EdgeSettings(rate_limit_rps=0, prometheus_port=port)
    with run_server(model_settings(minilm_path), edge=edge) as server, server.client() as client:
        client.post("/embed", json={"inputs": "x"})
        scraped = samples(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
    assert value(scraped, "embedserve_requests_total", route="/embed", model="minilm", status="200") == 1


def test_one_access_line_per_request_with_key_id_and_never_text_or_key(keyed_server, reference_model, caplog):
    with caplog.at_level(logging.INFO, logger="embedserve.access"), keyed_server.client() as client:
        client.post("/embed", json={"inputs": [SECRET_TEXT, "x"]}, headers={**auth(), "x-request-id": "rid-1"})
        client.post("/embed", json={"inputs": SECRET_TEXT}, headers=auth("wrong-key"))
    records = [r for r in caplog.records if r.name == "embedserve.access"]
    assert len(records) == 2
    lines = [json.loads(JsonFormatter().format(record)) for record in records]
    served, denied = lines
    assert served["request_id"] == "rid-1"
    assert (served["route"], served["model"], served["status"]) == ("/embed", "minilm", 200)
    expected_tokens = sum(len(reference_model.tokenizer(t)["input_ids"]) for t in (SECRET_TEXT, "x"))
    assert (served["inputs"], served["tokens"]) == (2, expected_tokens)
    assert served["key_id"] == key_id(KEY)
    assert served["latency_ms"] > 0
    assert {"timestamp", "level"} <= set(served)
    assert denied["status"] == 401
    assert denied["key_id"] == "-"
    for record, line in zip(records, lines, strict=True):
        text = json.dumps(line) + record.getMessage()
        assert SECRET_TEXT not in text
        assert KEY not in text
        assert "wrong-key" not in text
