"""Encoder families and decoder embedding models: pooling defaults, and padding never changes a vector.

Tiny random models of each architecture are built with ``save_pretrained`` next to the MiniLM tokenizer; the
reference is transformers itself, run on each input alone (no padding at all)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import model_settings, run_server

pytestmark = pytest.mark.integration

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = ["hi", "a somewhat longer sentence about the weather today", "x y", "one " * 40, "the end"]


def reference(path: Path, texts: list[str], pooling: str) -> np.ndarray:
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    rows = []
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=256)
            hidden = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state[0]
            rows.append(hidden[0] if pooling == "cls" else hidden[-1] if pooling == "last-token" else hidden.mean(0))
    return torch.stack(rows).numpy()


@pytest.mark.parametrize(
    ("arch", "pooling"),
    [("roberta", "cls"), ("xlm-roberta", "cls"), ("mpnet", "cls"), ("qwen3", "last-token")],
)
def test_default_pooling_and_padded_batches_equal_each_input_alone(tiny_models, arch, pooling):
    path = tiny_models[arch]
    with run_server(model_settings(path)) as server, server.client() as client:
        info = client.get("/info").json()
        batched = np.array(client.post("/embed", json={"inputs": TEXTS, "normalize": False}).json())
    assert info["model_type"] == {"embedding": {"pooling": pooling}}
    np.testing.assert_allclose(batched, reference(path, TEXTS, pooling), atol=2e-5)


def test_pooling_flag_overrides_the_default(tiny_models):
    path = tiny_models["qwen3"]
    with run_server(model_settings(path, pooling="mean")) as server, server.client() as client:
        batched = np.array(client.post("/embed", json={"inputs": TEXTS, "normalize": False}).json())
    np.testing.assert_allclose(batched, reference(path, TEXTS, "mean"), atol=2e-5)


@pytest.fixture(scope="module")
def prompted_model(minilm_path: Path, tmp_path_factory) -> Path:
    """MiniLM with sentence-transformers prompts: same weights (linked), extra config."""
    path = tmp_path_factory.mktemp("prompted")
    for item in minilm_path.iterdir():
        (path / item.name).symlink_to(item)
    (path / "config_sentence_transformers.json").unlink()
    (path / "config_sentence_transformers.json").write_text(
        '{"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": null}'
    )
    return path


def test_prompt_name_prepends_the_models_prompt(prompted_model, reference_model):
    with run_server(model_settings(prompted_model)) as server, server.client() as client:
        query = np.array(client.post("/embed", json={"inputs": "rain", "prompt_name": "query"}).json()[0])
        openai = client.post("/v1/embeddings", json={"input": "rain", "prompt_name": "passage", "model": "minilm"})
        bad = client.post("/embed", json={"inputs": "rain", "prompt_name": "summary"})
        info = client.get("/info").json()
    expected = reference_model.encode(["query: rain", "passage: rain"])
    assert float(query @ expected[0]) >= 0.9999
    assert float(np.array(openai.json()["data"][0]["embedding"]) @ expected[1]) >= 0.9999
    assert bad.status_code == 422
    assert "passage, query" in bad.json()["error"]
    assert info["prompts"] == {"query": "query: ", "passage": "passage: "}


def test_default_prompt_name_and_default_prompt_apply_when_a_request_names_none(prompted_model, reference_model):
    with run_server(model_settings(prompted_model, default_prompt_name="query")) as server, server.client() as c:
        by_name = np.array(c.post("/embed", json={"inputs": "rain"}).json()[0])
        overridden = np.array(c.post("/embed", json={"inputs": "rain", "prompt_name": "passage"}).json()[0])
    with run_server(model_settings(prompted_model, default_prompt="search: ")) as server, server.client() as c:
        literal = np.array(c.post("/embed", json={"inputs": "rain"}).json()[0])
    expected = reference_model.encode(["query: rain", "passage: rain", "search: rain"])
    assert float(by_name @ expected[0]) >= 0.9999
    assert float(overridden @ expected[1]) >= 0.9999
    assert float(literal @ expected[2]) >= 0.9999


def test_an_unknown_default_prompt_name_fails_start_up_naming_the_flag(prompted_model):
    with (
        pytest.raises(RuntimeError, match="--default-prompt-name 'summary'"),
        run_server(model_settings(prompted_model, default_prompt_name="summary")),
    ):
        pass
