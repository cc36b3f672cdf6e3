"""A random-weight model with bge-large-en-v1.5's shape, for GPU benchmarks where the hub is unreachable.

Throughput and latency depend on the shape (layers, widths, sequence length), not on the weights, so a BertModel of
the same configuration measures what the real model would. The tokenizer files are copied from another BERT-vocab
model (all-MiniLM-L6-v2 by default), and the sentence-transformers files declare CLS pooling and normalization, as
bge-large's do.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")

BGE_LARGE: dict[str, Any] = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "max_position_embeddings": 512,
    "vocab_size": 30522,
}
# Same structure at a size that builds in a second: only for checking the command works.
TINY: dict[str, Any] = {
    **BGE_LARGE,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def copy_tokenizer(source: Path, out_dir: Path) -> None:
    """Copy the tokenizer files of the model in ``source`` into ``out_dir``."""
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, out_dir / name)


def make_bge_large_shape(out_dir: Path, tokenizer_from: Path, tiny: bool = False, seed: int = 0) -> Path:
    """Write the model into ``out_dir`` (created) and return it."""
    import torch
    from transformers import BertConfig, BertModel

    shape = TINY if tiny else BGE_LARGE
    torch.manual_seed(seed)
    # With the pooler, as bge-large's checkpoint has one: loaders then find every weight they expect.
    model = BertModel(BertConfig(**shape))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    copy_tokenizer(tokenizer_from, out_dir)
    pooling = {
        "word_embedding_dimension": shape["hidden_size"],
        "pooling_mode_cls_token": True,
        "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (out_dir / "1_Pooling").mkdir(exist_ok=True)
    (out_dir / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (out_dir / "modules.json").write_text(json.dumps(modules, indent=2))
    sbert = {"max_seq_length": shape["max_position_embeddings"], "do_lower_case": True}
    (out_dir / "sentence_bert_config.json").write_text(json.dumps(sbert, indent=2))
    return out_dir
