"""The client libraries people point at a TEI or OpenAI server, unmodified, against a real embedserve: huggingface_hub's
InferenceClient (``POST /``, ``/similarity``), the Cohere SDK's v2 rerank, LangChain's and LlamaIndex's OpenAI
embeddings, and the OpenAI SDK. Everything stays on this machine: base URLs point at the local server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.conftest import RunningServer, model_settings, package_dir, run_server

pytestmark = pytest.mark.integration

TEXTS = ["The cat sat on the mat.", "A feline rested on a rug.", "Stock markets fell sharply today."]
QUERY = "how do volcanoes erupt"
DOCS = ["Magma rises through the crust and erupts.", "The stock market closed higher.", "Lava flows downhill."]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def no_telemetry(monkeypatch):
    """Whatever the developer's environment says: no LangSmith tracing, no Hugging Face telemetry."""
    for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGCHAIN_TRACING"):
        monkeypatch.setenv(name, "false")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="module")
def server(minilm_path, splade_path, reranker_path, classifier_path) -> Iterator[RunningServer]:
    """An embedding model first (the default, which ``POST /`` serves), then one model of every other kind."""
    models = [model_settings(minilm_path, engine="torch"),
              model_settings(splade_path, served_model_name="splade", engine="torch"),
              model_settings(reranker_path, served_model_name="reranker", engine="torch"),
              model_settings(classifier_path, served_model_name="classifier", engine="torch")]  # fmt: skip
    with run_server(*models) as running:
        yield running


@pytest.fixture(scope="module")
def classifier_server(classifier_path, tmp_path_factory) -> Iterator[RunningServer]:
    """A classifier as the only model, loaded from a Hugging Face cache snapshot (as a hub id resolves to)."""
    snapshot = tmp_path_factory.mktemp("hub") / "models--acme--classifier" / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for path in classifier_path.iterdir():
        (snapshot / path.name).symlink_to(path)
    with run_server(model_settings(snapshot, served_model_name="classifier", engine="torch")) as running:
        yield running


@pytest.fixture
def inference_client(monkeypatch):
    """huggingface_hub's InferenceClient class. The tests run with HF_HUB_OFFLINE=1, which makes huggingface_hub refuse
    every URL, a local server's included; the client only ever calls the local server here."""
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    return hub.InferenceClient


def post(server: RunningServer, path: str, body: dict) -> httpx.Response:
    with server.client() as client:
        return client.post(path, json=body)


def test_huggingface_hub_feature_extraction_posts_to_root_and_gets_the_embed_vectors(server, inference_client):
    client = inference_client(base_url=server.url)
    vectors = client.feature_extraction(TEXTS[0])
    expected = post(server, "/embed", {"inputs": TEXTS[0]}).json()
    assert vectors.shape == (1, 384)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    unnormalized = client.feature_extraction(TEXTS[0], normalize=False, truncate=True)
    assert np.linalg.norm(unnormalized[0]) > 1.5  # MiniLM's raw mean-pooled vectors are far from unit length


def test_huggingface_hub_sentence_similarity_at_root_and_at_similarity(server, inference_client, reference_model):
    reference = reference_model.encode(TEXTS, normalize_embeddings=True)
    expected = (reference[1:] @ reference[0]).tolist()
    at_root = inference_client(base_url=server.url).sentence_similarity(TEXTS[0], TEXTS[1:])
    at_route = inference_client(base_url=f"{server.url}/similarity").sentence_similarity(TEXTS[0], TEXTS[1:])
    assert at_root == pytest.approx(expected, abs=1e-5)
    assert at_route == pytest.approx(expected, abs=1e-5)
    assert at_root[0] > at_root[1]  # the paraphrase is closer than the unrelated sentence


def test_similarity_takes_tei_parameters_and_refuses_a_malformed_inputs_object(server):
    body = {"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[1:]}, "parameters": {"truncate": True}}
    assert len(post(server, "/similarity", body).json()) == 2
    empty = post(server, "/similarity", {"inputs": {"source_sentence": TEXTS[0], "sentences": []}})
    assert empty.status_code == 400
    assert empty.json() == {"error": "`inputs.sentences` cannot be empty", "error_type": "Empty"}
    flat = post(server, "/similarity", {"inputs": TEXTS})
    assert flat.status_code == 422
    assert "source_sentence" in flat.json()["error"]
    sparse = post(server, "/similarity", {**body, "model": "splade"})
    assert sparse.status_code == 422


def test_huggingface_hub_text_classification_gets_every_label_ranked(classifier_server, inference_client):
    client = inference_client(base_url=classifier_server.url)
    labels = client.text_classification("I love this place")
    logits = post(classifier_server, "/predict", {"inputs": "I love this place", "raw_scores": True}).json()
    raw = {item["label"]: item["score"] for item in logits}
    softmax = np.exp(list(raw.values())) / np.exp(list(raw.values())).sum()
    assert [item.label for item in labels] == sorted(raw, key=lambda label: -raw[label])
    assert [item.score for item in labels] == pytest.approx(sorted(softmax, reverse=True), abs=1e-5)
    top = client.text_classification("I love this place", top_k=1, function_to_apply="none")
    assert len(top) == 1
    assert (top[0].label, top[0].score) == (labels[0].label, pytest.approx(raw[labels[0].label], abs=1e-5))


def test_only_root_reads_the_inference_api_parameters(classifier_server):
    body = {"inputs": "I love this place", "parameters": {"top_k": 1}}
    flat = post(classifier_server, "/predict", body).json()
    assert [set(item) for item in flat] == [{"label", "score"}] * 3  # TEI's /predict ignores `parameters`
    assert [len(ranked) for ranked in post(classifier_server, "/", body).json()] == [1]
    wrong = post(classifier_server, "/", {**body, "parameters": {"function_to_apply": "tanh"}})
    assert wrong.status_code == 422
    assert wrong.json()["error"] == "`parameters.function_to_apply` must be 'sigmoid', 'softmax' or 'none', got 'tanh'"


def test_root_keeps_tei_shapes_for_tei_bodies_of_every_kind(server, classifier_server):
    assert post(server, "/", {"inputs": TEXTS[0]}).json() == post(server, "/embed", {"inputs": TEXTS[0]}).json()
    sparse = {"inputs": TEXTS[0], "model": "splade"}
    assert post(server, "/", sparse).json() == post(server, "/embed_sparse", sparse).json()
    rerank = {"query": QUERY, "texts": DOCS, "model": "reranker"}
    assert post(server, "/", rerank).json() == post(server, "/rerank", rerank).json()
    predict = {"inputs": "I love this place"}
    single = post(classifier_server, "/", predict).json()
    assert single == post(classifier_server, "/predict", predict).json()
    assert {"label", "score"} == set(single[0])  # one input, no `parameters`: TEI's flat list
    wrong = post(server, "/", {"query": QUERY, "model": "reranker"})
    assert (wrong.status_code, wrong.json()["error_type"]) == (422, "Validation")


def test_cohere_client_v2_rerank_ranks_like_rerank(server):
    cohere = pytest.importorskip("cohere")
    client = cohere.ClientV2(api_key="unused", base_url=server.url, timeout=60)
    response = client.rerank(model="reranker", query=QUERY, documents=DOCS, top_n=2)
    tei = post(server, "/rerank", {"query": QUERY, "texts": DOCS, "model": "reranker"}).json()
    assert [r.index for r in response.results] == [r["index"] for r in tei[:2]]
    assert [r.relevance_score for r in response.results] == pytest.approx([r["score"] for r in tei[:2]], abs=1e-6)
    assert response.meta is not None
    assert response.meta.api_version.version == "2"
    assert response.meta.tokens.input_tokens > 0
    with pytest.raises(cohere.errors.NotFoundError):
        client.rerank(model="no-such-model", query=QUERY, documents=DOCS)


@pytest.fixture
def tiktoken_offline(monkeypatch):
    """tiktoken downloads its encodings on first use; llama-index-core ships cl100k_base (OpenAI's embedding models'
    encoding) in its package, and tiktoken reads a directory of such files from TIKTOKEN_CACHE_DIR."""
    core = package_dir("llama_index.core")
    if core is None:
        pytest.skip("llama-index-core is not installed")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(core / "_static" / "tiktoken_cache"))


def test_langchain_openai_embeddings_default_gets_a_422_naming_the_flag_to_set(server, tiktoken_offline):
    langchain_openai = pytest.importorskip("langchain_openai")
    openai = pytest.importorskip("openai")
    default = langchain_openai.OpenAIEmbeddings(model="minilm", base_url=f"{server.url}/v1", api_key="unused")
    with pytest.raises(openai.UnprocessableEntityError, match="check_embedding_ctx_length=False"):
        default.embed_documents(TEXTS)
    texts_only = langchain_openai.OpenAIEmbeddings(
        model="minilm", base_url=f"{server.url}/v1", api_key="unused", check_embedding_ctx_length=False
    )
    expected = post(server, "/embed", {"inputs": TEXTS}).json()
    np.testing.assert_allclose(texts_only.embed_documents(TEXTS), expected, atol=1e-6)
    np.testing.assert_allclose(texts_only.embed_query(TEXTS[0]), expected[0], atol=1e-6)


def test_llama_index_openai_like_embedding_embeds_texts_and_queries(server):
    openai_like = pytest.importorskip("llama_index.embeddings.openai_like")
    model = openai_like.OpenAILikeEmbedding(model_name="minilm", api_base=f"{server.url}/v1", api_key="unused",
                                            embed_batch_size=2)  # fmt: skip
    expected = post(server, "/embed", {"inputs": TEXTS}).json()
    np.testing.assert_allclose(model.get_text_embedding_batch(TEXTS), expected, atol=1e-6)
    np.testing.assert_allclose(model.get_query_embedding(TEXTS[0]), expected[0], atol=1e-6)


def test_openai_sdk_sending_token_ids_gets_the_openai_error_shape_with_the_langchain_hint(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.embeddings.create(model="minilm", input=[[101, 7592, 102]])
    error = caught.value.body
    assert isinstance(error, dict)
    assert (error["param"], error["code"]) == ("input", "invalid_value")
    assert "check_embedding_ctx_length=False" in error["message"]
    vectors = client.embeddings.create(model="minilm", input=TEXTS[:2]).data
    assert [v.index for v in vectors] == [0, 1]


def test_info_has_tei_build_fields_and_the_snapshot_commit(server, classifier_server, monkeypatch):
    monkeypatch.delenv("EMBEDSERVE_GIT_SHA", raising=False)
    monkeypatch.delenv("EMBEDSERVE_DOCKER_LABEL", raising=False)
    info = get_json(server, "/info")
    assert (info["sha"], info["docker_label"], info["model_sha"]) == (None, None, None)
    monkeypatch.setenv("EMBEDSERVE_GIT_SHA", "c0ffee")
    monkeypatch.setenv("EMBEDSERVE_DOCKER_LABEL", "cpu")
    info = get_json(classifier_server, "/info")
    assert (info["sha"], info["docker_label"], info["model_sha"]) == ("c0ffee", "cpu", COMMIT)


def get_json(server: RunningServer, path: str) -> dict:
    with server.client() as client:
        response = client.get(path)
    assert response.status_code == 200
    body: dict = response.json()
    return body
