"""/embed and /v1/embeddings give sentence-transformers' vectors for all-MiniLM-L6-v2, whatever the batching."""

from __future__ import annotations

import base64

import numpy as np
import pytest

pytestmark = pytest.mark.integration

EATING = "A man is eating food."
BREAD = "A man is eating a piece of bread."
BABY = "The girl is carrying a baby."
LONG = "The quick brown fox jumps over the lazy dog while the farmer watches from the porch. " * 20
MIXED = ["hi", LONG, "ok", BREAD, LONG.upper(), "x", EATING, "A" * 3, LONG[:400]]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def embed(server, texts: list[str], **extra) -> np.ndarray:
    with server.client() as client:
        response = client.post("/embed", json={"inputs": texts, **extra})
    assert response.status_code == 200, response.text
    return np.array(response.json(), dtype=np.float32)


def openai_embed(server, texts: list[str], **extra) -> tuple[np.ndarray, dict]:
    with server.client() as client:
        response = client.post("/v1/embeddings", json={"input": texts, "model": "minilm", **extra})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["index"] for item in body["data"]] == list(range(len(texts)))
    if extra.get("encoding_format") == "base64":
        rows = [np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in body["data"]]
    else:
        rows = [np.array(item["embedding"], dtype=np.float32) for item in body["data"]]
    return np.stack(rows), body


def test_golden_pair_has_the_published_cosine_and_first_dimensions(minilm_server):
    vectors = embed(minilm_server, [EATING, BREAD, BABY])
    assert float(vectors[0] @ vectors[1]) == pytest.approx(0.7553, abs=1e-4)
    assert float(vectors[0] @ vectors[2]) == pytest.approx(-0.105, abs=1e-3)
    np.testing.assert_allclose(vectors[0, :5], [0.03324, 0.00441, -0.00628, 0.04838, -0.1387], atol=1e-4)


@pytest.mark.parametrize("text", [EATING, "x", LONG], ids=["sentence", "one-char", "over-256-tokens"])
def test_single_inputs_match_sentence_transformers_on_both_routes(minilm_server, reference_model, text):
    reference = reference_model.encode([text])
    assert cosines(embed(minilm_server, [text]), reference)[0] >= 0.9999
    assert cosines(openai_embed(minilm_server, [text])[0], reference)[0] >= 0.9999


def test_a_batch_mixing_short_and_256_token_inputs_matches_each_input_alone(minilm_server, reference_model):
    reference = np.stack([reference_model.encode([text])[0] for text in MIXED])  # one at a time: no padding
    assert np.all(cosines(embed(minilm_server, MIXED), reference) >= 0.9999)
    assert np.all(cosines(openai_embed(minilm_server, MIXED)[0], reference) >= 0.9999)


def test_base64_encoding_decodes_to_the_float_vectors(minilm_server):
    floats, _ = openai_embed(minilm_server, [EATING, BREAD])
    decoded, _ = openai_embed(minilm_server, [EATING, BREAD], encoding_format="base64")
    np.testing.assert_allclose(decoded, floats, atol=1e-6)


def test_vectors_are_unit_length_by_default_and_raw_mean_pooled_with_normalize_false(minilm_server, reference_model):
    normalized = embed(minilm_server, [EATING])
    raw = embed(minilm_server, [EATING], normalize=False)
    assert np.linalg.norm(normalized[0]) == pytest.approx(1.0, abs=1e-5)
    assert np.linalg.norm(raw[0]) != pytest.approx(1.0, abs=1e-2)
    np.testing.assert_allclose(raw[0] / np.linalg.norm(raw[0]), normalized[0], atol=1e-6)


def test_dimensions_keeps_the_first_n_values_then_normalizes(minilm_server):
    full = embed(minilm_server, [EATING], normalize=False)[0]
    short = embed(minilm_server, [EATING], dimensions=64)[0]
    assert short.shape == (64,)
    np.testing.assert_allclose(short, full[:64] / np.linalg.norm(full[:64]), atol=1e-6)
    short_openai, _ = openai_embed(minilm_server, [EATING], dimensions=64)
    np.testing.assert_allclose(short_openai[0], short, atol=1e-6)


def test_usage_counts_the_real_tokens_including_special_tokens(minilm_server, reference_model):
    texts = [EATING, "hi", LONG]
    expected = sum(min(len(reference_model.tokenizer(t)["input_ids"]), 256) for t in texts)
    _, body = openai_embed(minilm_server, texts)
    assert body["usage"] == {"prompt_tokens": expected, "total_tokens": expected}
    assert body["model"] == "minilm"
    assert body["object"] == "list"


def test_left_truncation_keeps_the_end_of_the_input(minilm_server):
    tail = "the farmer watches the fox " * 60
    head = "completely different opening words about astronomy and distant galaxies " * 3
    right = embed(minilm_server, [head + tail], truncation_direction="right")[0]
    left = embed(minilm_server, [head + tail], truncation_direction="Left")[0]
    tail_only = embed(minilm_server, [tail], truncation_direction="left")[0]
    assert float(left @ tail_only) >= 0.9999
    assert float(left @ right) < 0.99


def test_timing_and_request_id_headers_are_set_and_a_client_request_id_is_echoed(minilm_server):
    with minilm_server.client() as client:
        response = client.post("/embed", json={"inputs": EATING}, headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    for header in ("x-compute-time", "x-tokenization-time", "x-queue-time", "x-inference-time"):
        assert int(response.headers[header]) >= 0
    assert response.headers["x-compute-tokens"] == "8"
