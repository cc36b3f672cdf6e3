"""The CUDA path, end to end on a real GPU: float16 by default, vectors that agree with a float32 CPU run of the same
weights, every text kind served, padding that changes nothing, and a batch too large for the GPU refused at start-up.

Skipped where torch sees no GPU (CI never has one); run on a lent GPU machine with ``pytest tests/gpu``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from embedserve import engines
from embedserve.settings import CacheSettings
from tests.conftest import model_settings, run_server

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

LONG = "The quick brown fox jumps over the lazy dog near the river bank. " * 60  # well over 512 tokens
TEXTS = ["A man is eating food.", "hi", LONG, "A man is eating bread.", "Retrieval on a GPU, batched by tokens."]
NO_CACHE = CacheSettings(cache_bytes=0)  # every request is computed, never answered from the embedding cache


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def embed(path: Path, texts: list[str], **settings: object) -> tuple[dict, np.ndarray]:
    with run_server(model_settings(path, **settings), cache=NO_CACHE) as server, server.client() as client:
        info = client.get("/info").json()
        response = client.post("/embed", json={"inputs": texts, "truncate": True})
        assert response.status_code == 200, response.text
        return info, np.array(response.json())


def test_auto_serves_float16_on_cuda_within_0_999_of_float32_on_cpu(bge_large_shaped):
    info, on_gpu = embed(bge_large_shaped, TEXTS, device="auto", dtype="auto", engine="auto")
    assert info["model_dtype"] == "float16"
    assert info["model_device"].startswith("cuda")
    _, on_cpu = embed(bge_large_shaped, TEXTS, device="cpu", dtype="float32", engine="torch")
    agreement = cosines(on_gpu, on_cpu)
    assert agreement.min() >= 0.999, agreement


def test_cuda_vectors_equal_sentence_transformers_float32_on_cpu(bge_large_shaped):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(bge_large_shaped), device="cpu").encode(TEXTS)
    _, on_gpu = embed(bge_large_shaped, TEXTS, device="cuda", dtype="auto")
    agreement = cosines(on_gpu, np.asarray(reference))
    assert agreement.min() >= 0.999, agreement


def test_a_batch_of_5_and_512_tokens_gives_each_input_its_vector_alone(bge_large_shaped):
    info, model = engines.load(model_settings(bge_large_shaped, device="cuda", dtype="auto"))
    assert info.dtype == "float16"
    tokenizer = Tokenizer.from_file(str(bge_large_shaped / "tokenizer.json"))
    tokenizer.no_padding()  # MiniLM's file pads and truncates to 128
    tokenizer.no_truncation()
    short = tokenizer.encode("a short query").ids
    long = tokenizer.encode(LONG).ids[: info.max_input_length - 1] + [tokenizer.token_to_id("[SEP]")]
    assert (len(short), len(long)) == (5, 512)

    def run(batch: list[list[int]]) -> np.ndarray:
        return np.array(list(model.finish(model.launch(model.prepare(batch)))))

    together = run([short, long])
    alone = np.concatenate([run([short]), run([long])])
    agreement = cosines(together, alone)
    assert agreement.min() >= 0.9995, agreement


def test_sparse_on_cuda_agrees_with_float32_on_cpu(random_splade):
    def sparse(**settings: object) -> np.ndarray:
        with run_server(model_settings(random_splade, **settings), cache=NO_CACHE) as server, server.client() as c:
            response = c.post("/embed_sparse", json={"inputs": TEXTS[:3]})
            assert response.status_code == 200, response.text
            dense = np.zeros((3, 30522))
            for row, pairs in enumerate(response.json()):
                for pair in pairs:
                    dense[row, pair["index"]] = pair["value"]
            return dense

    on_gpu, on_cpu = sparse(device="cuda", dtype="auto"), sparse(device="cpu", engine="torch")
    assert on_gpu.any(axis=1).all()
    agreement = cosines(on_gpu, on_cpu)
    assert agreement.min() >= 0.999, agreement


def test_rerank_on_cuda_agrees_with_float32_on_cpu(random_reranker):
    body = {"query": "what do foxes jump over", "texts": TEXTS, "raw_scores": True}

    def scores(**settings: object) -> np.ndarray:
        with run_server(model_settings(random_reranker, **settings), cache=NO_CACHE) as server, server.client() as c:
            response = c.post("/rerank", json=body)
            assert response.status_code == 200, response.text
            ranked = sorted(response.json(), key=lambda r: r["index"])
            return np.array([r["score"] for r in ranked])

    on_gpu, on_cpu = scores(device="cuda", dtype="auto"), scores(device="cpu", engine="torch")
    assert len(on_gpu) == len(TEXTS)
    assert np.abs(on_gpu - on_cpu).max() <= 1e-2 * max(1.0, float(np.abs(on_cpu).max()))


def test_a_batch_budget_the_gpu_cannot_hold_fails_at_start_not_under_load(bge_large_shaped):
    # 2**25 tokens of bge-large in float16: 64 GiB for the embeddings alone, then as much again for each projection.
    too_big = model_settings(bge_large_shaped, device="cuda", dtype="auto", max_batch_tokens=2**25)
    refused = pytest.raises(RuntimeError, match="out of GPU memory.*--max-batch-tokens")
    with refused, run_server(too_big, cache=NO_CACHE):
        pass
    # The failed start left the GPU usable: the same model with the default budget starts and serves.
    info, vectors = embed(bge_large_shaped, TEXTS[:2], device="cuda", dtype="auto")
    assert vectors.shape == (2, 1024)
