"""Reduced precision on a CPU: bfloat16 only where the CPU has it and the start-up check agrees, int8 on request,
each with its agreement to float32 measured at start-up on the built-in texts and shown in /info."""

from __future__ import annotations

import numpy as np
import pytest

from embedserve.hardware import native_bf16
from tests.conftest import model_settings, run_server
from tests.integration.test_embedding_correctness import MIXED, cosines

pytestmark = pytest.mark.integration


def served(path, **settings) -> tuple[dict, np.ndarray]:
    with run_server(model_settings(path, **settings)) as server, server.client() as client:
        info = client.get("/info").json()
        vectors = np.array(client.post("/embed", json={"inputs": MIXED}).json())
    return info, vectors


@pytest.mark.parametrize("engine", ["openvino", "torch"])
def test_dtype_auto_serves_bfloat16_only_where_the_cpu_has_it_and_it_agrees(minilm_path, reference_model, engine):
    info, vectors = served(minilm_path, engine=engine, dtype="auto")
    agreement = info["engine"]["agreement"]
    if native_bf16():
        assert info["model_dtype"] == "bfloat16"
        assert agreement["compared"] == "bfloat16 vs float32"
        assert agreement["texts"] >= 256
        assert agreement["mean_cosine"] >= 0.9999
        assert agreement["min_cosine"] <= agreement["mean_cosine"]
        assert np.all(cosines(vectors, reference_model.encode(MIXED)) >= 0.999)
    else:
        assert info["model_dtype"] == "float32"
        assert agreement is None
        assert np.all(cosines(vectors, reference_model.encode(MIXED)) >= 0.9999)


def test_dtype_auto_keeps_scoring_models_in_float32(reranker_path):
    with run_server(model_settings(reranker_path, engine="openvino", dtype="auto")) as server, server.client() as c:
        info = c.get("/info").json()
    assert info["model_dtype"] == "float32"  # a score has no cosine to check a reduced precision with
    assert info["engine"]["agreement"] is None


def test_explicit_bfloat16_serves_a_reranker_without_a_cosine_to_report(reranker_path):
    with run_server(model_settings(reranker_path, engine="openvino", dtype="bfloat16")) as server, server.client() as c:
        info = c.get("/info").json()
        scores = c.post("/rerank", json={"query": "q", "texts": ["a", "b"]}).json()
    assert info["model_dtype"] == "bfloat16"
    assert info["engine"]["agreement"] is None
    assert all(0.0 <= item["score"] <= 1.0 for item in scores)


@pytest.mark.parametrize("engine", ["openvino", "torch"])
def test_explicit_bfloat16_reports_its_agreement(splade_path, engine):
    with run_server(model_settings(splade_path, engine=engine, dtype="bfloat16")) as server, server.client() as c:
        info = c.get("/info").json()
    assert info["model_dtype"] == "bfloat16"
    agreement = info["engine"]["agreement"]
    assert agreement["compared"] == "bfloat16 vs float32"
    assert agreement["texts"] >= 256
    assert 0.99 <= agreement["min_cosine"] <= agreement["mean_cosine"] <= 1.0


def test_quantize_int8_measures_and_shows_its_agreement(minilm_path, reference_model):
    info, vectors = served(minilm_path, quantize="int8")
    assert info["engine"]["name"] == "onnx"
    assert info["engine"]["quantize"] == "int8"
    agreement = info["engine"]["agreement"]
    assert agreement["compared"] == "int8 vs float32"
    assert agreement["texts"] >= 256
    assert 0.9 <= agreement["min_cosine"] <= agreement["mean_cosine"] < 0.9999  # int8 really changes the vectors
    assert agreement["mean_cosine"] >= 0.98
    assert np.all(cosines(vectors, reference_model.encode(MIXED)) >= 0.95)
