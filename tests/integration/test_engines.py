"""Every engine (ONNX Runtime, OpenVINO, torch) serves every kind of model with float32 vectors equal to the
references: sentence-transformers for MiniLM, SPLADE and the cross-encoders, transformers itself for the
architecture matrix. One real server per engine serves all of them, so batching, truncation at the model's
``max_seq_length``, prompts and Matryoshka ``dimensions`` go through the same paths as in production."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ARCHITECTURES, RunningServer, model_settings, run_server
from tests.integration.test_architectures import TEXTS, reference
from tests.integration.test_embedding_correctness import BREAD, EATING, MIXED, cosines

pytestmark = pytest.mark.integration

ENGINES = ("onnx", "openvino", "torch")
QUERY = "how do volcanoes erupt"
DOCS = ["Magma rises through the crust and erupts.", "The stock market closed higher.", "Lava flows downhill."]
FRANCE = "what is the capital of france"


@pytest.fixture(scope="module", params=ENGINES)
def engine_server(
    request, minilm_path, splade_path, reranker_path, classifier_path, tiny_models
) -> Iterator[tuple[str, RunningServer]]:
    engine = request.param
    models = [
        model_settings(minilm_path, engine=engine, prompts={"query": "query: "}),
        model_settings(splade_path, served_model_name="splade", engine=engine),
        model_settings(reranker_path, served_model_name="reranker", engine=engine),
        model_settings(classifier_path, served_model_name="classifier", engine=engine, kind="classify"),
        *(model_settings(tiny_models[arch], served_model_name=arch, engine=engine) for arch in ARCHITECTURES),
    ]
    with run_server(*models) as server:
        yield engine, server


def post(server: RunningServer, path: str, body: dict) -> object:
    with server.client() as client:
        response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_each_model_reports_the_engine_it_runs_on_in_float32(engine_server):
    engine, server = engine_server
    with server.client() as client:
        models = client.get("/info").json()["models"]
    assert {m["served_model_name"]: m["engine"]["name"] for m in models} == dict.fromkeys(
        ["minilm", "splade", "reranker", "classifier", *ARCHITECTURES], engine
    )
    assert {m["model_dtype"] for m in models} == {"float32"}
    assert all(m["engine"]["agreement"] is None for m in models)


def test_torch_runs_dense_and_sparse_models_as_a_checked_trace_on_a_cpu(engine_server):
    """Every architecture of the matrix traces and passes the start-up check, so the vector tests of this module
    exercise the trace; the scoring models call the model with token types and stay eager; graph engines say none."""
    engine, server = engine_server
    with server.client() as client:
        graphs = {m["served_model_name"]: m["engine"]["graph"] for m in client.get("/info").json()["models"]}
    if engine != "torch":
        assert set(graphs.values()) == {None}
        return
    assert graphs == {"minilm": "torchscript", "splade": "torchscript", "reranker": "eager", "classifier": "eager",
                      **dict.fromkeys(ARCHITECTURES, "torchscript")}  # fmt: skip


def test_dense_vectors_equal_sentence_transformers_truncating_at_max_seq_length(engine_server, reference_model):
    _, server = engine_server
    got = np.array(post(server, "/embed", {"inputs": MIXED}))  # MIXED holds inputs over 256 tokens
    alone = np.stack([reference_model.encode([text])[0] for text in MIXED])
    assert np.all(cosines(got, alone) >= 0.9999)
    golden = np.array(post(server, "/embed", {"inputs": [EATING, BREAD]}))
    assert float(golden[0] @ golden[1]) == pytest.approx(0.7553, abs=1e-4)


def test_prompts_and_dimensions_behave_as_on_torch(engine_server, reference_model):
    _, server = engine_server
    prompted = np.array(post(server, "/embed", {"inputs": "rain", "prompt_name": "query"})[0])
    assert float(prompted @ reference_model.encode(["query: rain"])[0]) >= 0.9999
    full = reference_model.encode([EATING], normalize_embeddings=False)[0]
    short = np.array(post(server, "/v1/embeddings", {"input": EATING, "model": "minilm", "dimensions": 64})["data"][0]
                     ["embedding"])  # fmt: skip
    np.testing.assert_allclose(short, full[:64] / np.linalg.norm(full[:64]), atol=1e-5)


def test_sparse_vectors_equal_sentence_transformers(engine_server, splade_path):
    _, server = engine_server
    sentence_transformers = pytest.importorskip("sentence_transformers")
    texts = [FRANCE, "symptoms of influenza in adults", "lava " * 300]
    expected = sentence_transformers.SparseEncoder(str(splade_path), device="cpu").encode(texts)
    rows = post(server, "/embed_sparse", {"inputs": texts, "model": "splade"})
    for row, want in zip(rows, expected, strict=True):
        dense = want.to_dense().numpy()
        got = np.zeros_like(dense)
        got[[term["index"] for term in row]] = [term["value"] for term in row]
        np.testing.assert_allclose(got, dense, atol=1e-4)


def test_rerank_and_classify_scores_equal_the_references(engine_server, reranker_path, classifier_path):
    _, server = engine_server
    sentence_transformers = pytest.importorskip("sentence_transformers")
    expected = sentence_transformers.CrossEncoder(str(reranker_path), device="cpu").predict([(QUERY, d) for d in DOCS])
    ranked = post(server, "/rerank", {"query": QUERY, "texts": DOCS, "model": "reranker"})
    for item in ranked:
        assert item["score"] == pytest.approx(float(expected[item["index"]]), abs=1e-5)
    classifier = sentence_transformers.CrossEncoder(str(classifier_path), device="cpu")
    probabilities = classifier.predict([("I love this", "It is great")], apply_softmax=True)[0]
    labels = classifier.model.config.id2label
    pair = post(server, "/predict", {"inputs": ["I love this", "It is great"], "model": "classifier"})
    assert {item["label"]: item["score"] for item in pair} == pytest.approx(
        {labels[i]: float(p) for i, p in enumerate(probabilities)}, abs=1e-5
    )


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_equals_transformers_run_on_each_input_alone(engine_server, tiny_models, arch):
    _, server = engine_server
    got = np.array(post(server, "/embed", {"inputs": TEXTS, "model": arch, "normalize": False}))
    np.testing.assert_allclose(got, reference(tiny_models[arch], TEXTS, ARCHITECTURES[arch]), atol=2e-5)


def test_engine_auto_picks_a_cpu_engine_and_serves_the_same_vectors(minilm_path: Path, reference_model):
    with run_server(model_settings(minilm_path, engine="auto")) as server, server.client() as client:
        engine = client.get("/info").json()["engine"]["name"]
        got = np.array(client.post("/embed", json={"inputs": MIXED}).json())
    assert engine == "openvino"  # installed with embedserve: the fastest CPU engine measured (README)
    assert np.all(cosines(got, reference_model.encode(MIXED)) >= 0.9999)
