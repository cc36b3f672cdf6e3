"""Dense, sparse, rerank and classify models in one real embedserve process started from a YAML file: each route
against its reference implementation, routing by `model`, and 422 for a route a model cannot serve."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration.test_command import serving

pytestmark = pytest.mark.integration

FRANCE = "what is the capital of france"
QUERY = "how do volcanoes erupt"
DOCS = ["Magma rises through the crust and erupts.", "The stock market closed higher.", "Lava flows downhill."]


def write_config(path: Path, minilm: Path, splade: Path, reranker: Path, classifier: Path) -> Path:
    path.write_text(
        f"""
models:
  - name: minilm
    model_id: {minilm}
    max_client_batch_size: 16
  - name: splade
    model_id: {splade}
    dtype: float32  # compared with sentence-transformers' float32 weights to 1e-4 below
  - name: reranker
    model_id: {reranker}
    max_batch_requests: 8
  - name: classifier
    model_id: {classifier}
    kind: classify
"""
    )
    return path


@pytest.fixture(scope="module")
def fleet(minilm_path, splade_path, reranker_path, classifier_path, tmp_path_factory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("fleet")
    config = write_config(root / "models.yaml", minilm_path, splade_path, reranker_path, classifier_path)
    with serving(["--config", str(config), "--rate-limit-rps", "0"], root / "server.log", timeout=240) as url:
        yield url


def post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=60)


def test_every_model_is_listed_with_its_kind_dimensions_and_limits(fleet):
    models = {m["id"]: m for m in httpx.get(f"{fleet}/v1/models").json()["data"]}
    assert {name: m["kind"] for name, m in models.items()} == {
        "minilm": "embedding", "splade": "sparse", "reranker": "rerank", "classifier": "classify"
    }  # fmt: skip
    assert models["minilm"]["dimensions"] == 384
    assert models["splade"]["dimensions"] == 30522
    assert models["minilm"]["max_input_length"] == 256  # sentence-transformers' max_seq_length
    assert models["reranker"]["max_input_length"] == 512  # no sentence-transformers files: the tokenizer's limit
    info = httpx.get(f"{fleet}/info").json()
    assert info["served_model_name"] == "minilm"  # the first model is the default
    described = {m["served_model_name"]: m for m in info["models"]}
    assert described["reranker"]["model_type"] == {"reranker": {"id2label": {"0": "relevance"},
                                                                "label2id": {"relevance": 0}}}  # fmt: skip
    assert described["classifier"]["model_type"]["classifier"]["id2label"]["2"] == "positive"
    assert described["splade"]["model_type"] == {"embedding": {"pooling": "splade"}}
    assert described["minilm"]["max_client_batch_size"] == 16


def test_sparse_vectors_expand_a_query_and_match_sentence_transformers(fleet, splade_path):
    response = post(fleet, "/embed_sparse", {"inputs": [FRANCE, "symptoms of influenza in adults"], "model": "splade",
                                             "return_tokens": True})  # fmt: skip
    assert response.status_code == 200
    france, flu = response.json()
    weights = {term["token"]: term["value"] for term in france}
    assert weights["capital"] > 1.0
    assert weights["france"] > 1.0
    assert weights.get("paris", 0) > 0
    assert "flu" in {term["token"] for term in flu}
    assert [term["index"] for term in france] == sorted(term["index"] for term in france)
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SparseEncoder(str(splade_path), device="cpu").encode([FRANCE])[0]
    dense = reference.to_dense().numpy()
    got = np.zeros_like(dense)
    for term in france:
        got[term["index"]] = term["value"]
    np.testing.assert_allclose(got, dense, atol=1e-4)


def test_top_k_keeps_the_heaviest_terms(fleet):
    full = post(fleet, "/embed_sparse", {"inputs": FRANCE, "model": "splade"}).json()[0]
    top = post(fleet, "/embed_sparse", {"inputs": FRANCE, "model": "splade", "top_k": 3}).json()[0]
    heaviest = sorted(full, key=lambda term: -term["value"])[:3]
    assert sorted(top, key=lambda term: term["index"]) == sorted(heaviest, key=lambda term: term["index"])


def cross_encoder(path: Path):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    return sentence_transformers.CrossEncoder(str(path), device="cpu")


def test_rerank_scores_equal_sentence_transformers_cross_encoder(fleet, reranker_path):
    expected = cross_encoder(reranker_path).predict([(QUERY, doc) for doc in DOCS])
    response = post(fleet, "/rerank", {"query": QUERY, "texts": DOCS, "model": "reranker", "return_text": True})
    assert response.status_code == 200
    ranked = response.json()
    assert [item["score"] for item in ranked] == sorted((item["score"] for item in ranked), reverse=True)
    for item in ranked:
        assert item["score"] == pytest.approx(float(expected[item["index"]]), abs=1e-5)
        assert item["text"] == DOCS[item["index"]]
    raw = post(fleet, "/rerank", {"query": QUERY, "texts": DOCS, "model": "reranker", "raw_scores": True}).json()
    for item in raw:
        assert 1 / (1 + np.exp(-item["score"])) == pytest.approx(float(expected[item["index"]]), abs=1e-5)


def test_v1_rerank_speaks_the_cohere_shape(fleet, reranker_path):
    expected = cross_encoder(reranker_path).predict([(QUERY, doc) for doc in DOCS])
    body = {"model": "reranker", "query": QUERY, "documents": [DOCS[0], {"text": DOCS[1]}, DOCS[2]], "top_n": 2,
            "return_documents": True}  # fmt: skip
    answer = post(fleet, "/v1/rerank", body).json()
    assert answer["model"] == "reranker"
    assert len(answer["results"]) == 2
    best = int(np.argmax(expected))
    assert answer["results"][0]["index"] == best
    assert answer["results"][0]["relevance_score"] == pytest.approx(float(expected[best]), abs=1e-5)
    assert answer["results"][0]["document"] == {"text": DOCS[best]}
    assert answer["usage"]["total_tokens"] > 0
    plain = post(fleet, "/v1/rerank", {"model": "reranker", "query": QUERY, "documents": DOCS}).json()
    assert len(plain["results"]) == 3
    assert "document" not in plain["results"][0]


def test_long_documents_are_truncated_on_the_document_side(fleet, reranker_path):
    long_doc = "lava " * 600
    expected = cross_encoder(reranker_path).predict([(QUERY, long_doc)])[0]  # truncates the pair to 512 tokens
    got = post(fleet, "/rerank", {"query": QUERY, "texts": [long_doc], "model": "reranker"}).json()[0]["score"]
    assert got == pytest.approx(float(expected), abs=1e-4)
    refused = post(fleet, "/rerank", {"query": QUERY, "texts": [long_doc], "model": "reranker", "truncate": False})
    assert refused.status_code == 422
    assert "512" in refused.json()["error"]


def test_predict_gives_softmax_labels_for_texts_pairs_and_batches(fleet, classifier_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    tokenizer = transformers.AutoTokenizer.from_pretrained(classifier_path)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(classifier_path).eval()

    def reference(*texts: str) -> dict[str, float]:
        with torch.inference_mode():
            logits = model(**tokenizer(*texts, return_tensors="pt")).logits[0]
        probs = torch.softmax(logits, dim=-1).tolist()
        return {model.config.id2label[i]: p for i, p in enumerate(probs)}

    single = post(fleet, "/predict", {"inputs": "I love this", "model": "classifier"}).json()
    assert [item["label"] for item in single] == sorted(
        reference("I love this"), key=lambda k: -reference("I love this")[k]
    )
    assert sum(item["score"] for item in single) == pytest.approx(1.0, abs=1e-5)
    for item in single:
        assert item["score"] == pytest.approx(reference("I love this")[item["label"]], abs=1e-5)
    pair = post(fleet, "/predict", {"inputs": ["I love this", "It is great"], "model": "classifier"}).json()
    assert {item["label"]: item["score"] for item in pair} == pytest.approx(reference("I love this", "It is great"),
                                                                            abs=1e-5)  # fmt: skip
    batch = post(fleet, "/predict", {"inputs": ["a", ["b"], ["c", "d"]], "model": "classifier"}).json()
    assert len(batch) == 3
    assert {item["label"]: item["score"] for item in batch[2]} == pytest.approx(reference("c", "d"), abs=1e-5)
    raw = post(fleet, "/predict", {"inputs": "I love this", "model": "classifier", "raw_scores": True}).json()
    assert sum(item["score"] for item in raw) != pytest.approx(1.0, abs=1e-3)


def test_tokenize_and_decode_work_for_every_model(fleet):
    for model in ("minilm", "splade", "reranker", "classifier"):
        tokens = post(fleet, "/tokenize", {"inputs": "Hello world", "model": model}).json()[0]
        assert [t["text"] for t in tokens] == ["[CLS]", "Hello", "world", "[SEP]"]  # the input's own text, as TEI
        assert [t["special"] for t in tokens] == [True, False, False, True]
        assert (tokens[1]["start"], tokens[1]["stop"], tokens[0]["start"]) == (0, 5, None)
        ids = [t["id"] for t in tokens]
        assert post(fleet, "/decode", {"ids": ids, "model": model}).json() == ["hello world"]
        assert post(fleet, "/decode", {"ids": [ids], "skip_special_tokens": False, "model": model}).json() == [
            "[CLS] hello world [SEP]"
        ]
    plain = post(fleet, "/tokenize", {"inputs": ["a b"], "add_special_tokens": False}).json()[0]
    assert [t["text"] for t in plain] == ["a", "b"]
    assert post(fleet, "/decode", {"ids": [10**9]}).status_code == 422


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/rerank", {"query": "q", "texts": ["t"], "model": "minilm"},
         "model 'minilm' is an embedding model: it can embed, tokenize; not rerank"),
        ("/embed", {"inputs": "x", "model": "reranker"},
         "model 'reranker' is a rerank model: it can rerank, classify, tokenize; not embed"),
        ("/v1/embeddings", {"input": "x", "model": "splade"},
         "model 'splade' is a sparse model: it can sparse, tokenize; not embed"),
        ("/embed_sparse", {"inputs": "x", "model": "classifier"},
         "model 'classifier' is a classify model: it can classify, tokenize; not sparse"),
        ("/v1/rerank", {"query": "q", "documents": ["d"], "model": "classifier"},
         "model 'classifier' is a classify model: it can classify, tokenize; not rerank"),
        ("/predict", {"inputs": "x"}, "model 'minilm' is an embedding model: it can embed, tokenize; not classify"),
    ],
)  # fmt: skip
def test_a_route_the_model_cannot_serve_gets_422_naming_what_it_can(fleet, path, body, message):
    response = post(fleet, path, body)
    assert response.status_code == 422
    if path.startswith("/v1/"):
        assert response.json()["error"] == {
            "message": message, "type": "invalid_request_error", "param": None, "code": "unsupported_for_model"
        }  # fmt: skip
    else:
        assert response.json() == {"error": message, "error_type": "Validation"}


def test_the_model_field_routes_and_native_routes_default_to_the_first_model(fleet):
    dense = post(fleet, "/embed", {"inputs": "x"}).json()
    assert len(dense[0]) == 384
    assert post(fleet, "/v1/embeddings", {"input": "x", "model": "nope"}).status_code == 404
    assert post(fleet, "/rerank", {"query": "q", "texts": ["t"], "model": "nope"}).json()["error_type"] == (
        "ModelNotFound"
    )
