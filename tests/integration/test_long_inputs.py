"""Long inputs in chunks (README, "Long inputs"): a 2,000-token input is cut into overlapping chunks of the model's
limit, each chunk computed in the normal batches, and the answer is the length-weighted mean of the chunks computed
alone by sentence-transformers; usage counts every token computed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from tests.conftest import RunningServer, model_settings, run_server

pytestmark = pytest.mark.integration

LONG = " ".join(f"Paragraph {i} tells of river number {i * 7 % 13} and the mill beside it." for i in range(160))
SHORT = "A man is eating food."
OVERLAP = 32
LIMIT = 256
"""MiniLM's maximum input length, special tokens included."""


@pytest.fixture(scope="module")
def server(minilm_path: Path) -> Iterator[RunningServer]:
    """MiniLM with room for two full chunks per forward pass, so a long input's chunks ride several batches."""
    with run_server(model_settings(minilm_path, max_batch_tokens=2 * LIMIT, chunk_overlap=OVERLAP)) as running:
        yield running


def make_chunks(minilm_path: Path, prompt: str = "") -> list[list[int]]:
    """LONG's chunks as the README describes them, made here from the tokenizer alone: windows of the limit less
    [CLS], [SEP] and the prompt, each starting OVERLAP tokens before the previous one ends, the prompt in front."""
    tokenizer = Tokenizer.from_file(str(minilm_path / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    ids = tokenizer.encode(LONG, add_special_tokens=False).ids
    head = tokenizer.encode(prompt, add_special_tokens=False).ids if prompt else []
    room = LIMIT - 2 - len(head)
    starts = range(0, len(ids) - OVERLAP, room - OVERLAP)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    return [[cls, *head, *ids[start : start + room], sep] for start in starts]


@pytest.fixture(scope="module")
def chunks(minilm_path: Path) -> list[list[int]]:
    return make_chunks(minilm_path)


def alone(reference_model, chunk: list[int]) -> np.ndarray:
    """One chunk's vector from sentence-transformers (normalized, as the model's pipeline ends)."""
    ids = torch.tensor([chunk])
    with torch.inference_mode():
        out = reference_model.forward({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out["sentence_embedding"][0].numpy()


def post(server: RunningServer, path: str, body: dict) -> dict | list:
    with server.client() as client:
        response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_2000_token_input_is_the_weighted_mean_of_its_chunks_computed_alone(server, chunks, reference_model):
    assert sum(map(len, chunks)) > 2000
    assert len(chunks) > 8
    batches_before = server.runtime.batches_run
    vector = np.array(post(server, "/embed", {"inputs": [LONG], "chunk": True})[0])
    assert server.runtime.batches_run - batches_before >= len(chunks) // 2  # two chunks fit a batch
    each = np.stack([alone(reference_model, chunk) for chunk in chunks])
    expected = np.average(each, axis=0, weights=[len(chunk) for chunk in chunks])
    expected /= np.linalg.norm(expected)
    assert float(vector @ expected) > 0.99999
    np.testing.assert_allclose(vector, expected, atol=1e-5)


def test_return_chunks_gives_every_chunk_vector_in_text_order(server, chunks, reference_model):
    answer = post(server, "/embed", {"inputs": [SHORT, LONG], "return_chunks": True})
    short, long = (np.array(vectors) for vectors in answer)
    assert short.shape == (1, 384)
    assert long.shape == (len(chunks), 384)
    each = np.stack([alone(reference_model, chunk) for chunk in chunks])
    np.testing.assert_allclose(long, each, atol=1e-5)
    np.testing.assert_allclose(short[0], post(server, "/embed", {"inputs": SHORT})[0], atol=1e-6)


def test_usage_counts_every_token_computed_overlap_and_special_tokens_included(server, chunks):
    chunked = post(server, "/v1/embeddings", {"input": LONG, "model": "minilm", "chunk": True})
    truncated = post(server, "/v1/embeddings", {"input": LONG, "model": "minilm"})
    assert chunked["usage"]["prompt_tokens"] == sum(map(len, chunks))
    assert truncated["usage"]["prompt_tokens"] == LIMIT


def test_an_input_within_the_limit_is_one_chunk_whatever_the_route(server):
    plain = post(server, "/embed", {"inputs": [SHORT, "x"]})
    chunked = post(server, "/v1/embeddings", {"input": [SHORT, "x"], "model": "minilm", "chunk": True})
    np.testing.assert_allclose([item["embedding"] for item in chunked["data"]], plain, atol=1e-6)


def test_dimensions_and_output_dtype_apply_to_the_pooled_vector(server, chunks, reference_model):
    body = {"inputs": LONG, "chunk": True, "dimensions": 64, "output_dtype": "ubinary"}
    bits = np.unpackbits(np.array(post(server, "/embed", body)[0], dtype=np.uint8))
    each = np.stack([alone(reference_model, chunk)[:64] for chunk in chunks])
    each /= np.linalg.norm(each, axis=1, keepdims=True)
    expected = np.average(each, axis=0, weights=[len(chunk) for chunk in chunks])
    np.testing.assert_array_equal(bits.astype(bool), expected > 0)


def test_the_model_setting_chunks_by_default_shows_in_info_and_a_request_can_opt_out(minilm_path, chunks):
    with run_server(model_settings(minilm_path, chunk_long_inputs=True, chunk_overlap=OVERLAP)) as server:
        with server.client() as client:
            info = client.get("/info").json()
        assert (info["chunk_long_inputs"], info["chunk_overlap"]) == (True, OVERLAP)
        default = post(server, "/v1/embeddings", {"input": LONG, "model": "minilm"})
        opted_out = post(server, "/v1/embeddings", {"input": LONG, "model": "minilm", "chunk": False})
    assert default["usage"]["prompt_tokens"] == sum(map(len, chunks))
    assert opted_out["usage"]["prompt_tokens"] == LIMIT


def test_a_prompt_starts_every_chunk(minilm_path, reference_model):
    chunks = make_chunks(minilm_path, "passage: ")
    settings = model_settings(minilm_path, default_prompt="passage: ", chunk_overlap=OVERLAP)
    with run_server(settings) as server:
        answer = post(server, "/v1/embeddings", {"input": LONG, "model": "minilm", "return_chunks": True})
    each = np.stack([alone(reference_model, chunk) for chunk in chunks])
    np.testing.assert_allclose(answer["data"][0]["embedding"], each, atol=1e-5)
    assert answer["usage"]["prompt_tokens"] == sum(map(len, chunks))
