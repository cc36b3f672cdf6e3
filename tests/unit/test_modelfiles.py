"""Reading sentence-transformers configs: both pooling formats, prompts, limits, and refusals with a reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedserve.engines.modelfiles import read_sentence_transformers_config, resolve_model_dir, snapshot_commit
from embedserve.errors import ModelLoadError
from embedserve.settings import ModelSettings

pytestmark = pytest.mark.unit


def write(path: Path, files: dict[str, object]) -> Path:
    for name, content in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(json.dumps(content))
    return path


def modules(*kinds: str) -> list[dict[str, object]]:
    paths = {"Pooling": "1_Pooling", "Normalize": "2_Normalize", "Dense": "2_Dense"}
    return [{"idx": i, "name": str(i), "path": paths.get(k, ""), "type": f"sentence_transformers.models.{k}"}
            for i, k in enumerate(kinds)]  # fmt: skip


def test_legacy_boolean_pooling_keys(tmp_path):
    config = read_sentence_transformers_config(write(tmp_path, {
        "modules.json": modules("Transformer", "Pooling", "Normalize"),
        "1_Pooling/config.json": {"word_embedding_dimension": 8, "pooling_mode_cls_token": True,
                                  "pooling_mode_mean_tokens": False},
        "sentence_bert_config.json": {"max_seq_length": 128, "do_lower_case": True},
        "config_sentence_transformers.json": {"prompts": {"query": "q: "}, "default_prompt_name": "query"},
    }))  # fmt: skip
    assert config.pooling == "cls"
    assert config.max_seq_length == 128
    assert config.do_lower_case is True
    assert config.prompts == {"query": "q: "}
    assert config.default_prompt_name == "query"


@pytest.mark.parametrize(("mode", "expected"), [("mean", "mean"), ("lasttoken", "last-token"), (["cls"], "cls")])
def test_new_style_pooling_mode(tmp_path, mode, expected):
    path = write(tmp_path, {"modules.json": modules("Transformer", "Pooling"),
                            "1_Pooling/config.json": {"embedding_dimension": 8, "pooling_mode": mode}})  # fmt: skip
    assert read_sentence_transformers_config(path).pooling == expected


def test_no_sentence_transformers_files_means_no_opinion(tmp_path):
    config = read_sentence_transformers_config(tmp_path)
    assert config.pooling is None
    assert config.max_seq_length is None
    assert config.prompts == {}


def test_a_dense_module_after_pooling_is_refused_rather_than_served_wrong(tmp_path):
    path = write(tmp_path, {"modules.json": modules("Transformer", "Pooling", "Dense"),
                            "1_Pooling/config.json": {"pooling_mode": "mean"}})  # fmt: skip
    with pytest.raises(ModelLoadError, match="Dense"):
        read_sentence_transformers_config(path)


def test_an_unsupported_pooling_mode_names_the_override_flag(tmp_path):
    path = write(tmp_path, {"modules.json": modules("Transformer", "Pooling"),
                            "1_Pooling/config.json": {"pooling_mode_max_tokens": True}})  # fmt: skip
    with pytest.raises(ModelLoadError, match="--pooling"):
        read_sentence_transformers_config(path)


def test_a_local_directory_without_a_config_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        resolve_model_dir(ModelSettings(model_id=str(tmp_path)))


def test_a_missing_path_is_not_mistaken_for_a_hub_id(tmp_path):
    with pytest.raises(ModelLoadError, match="not a directory"):
        resolve_model_dir(ModelSettings(model_id=str(tmp_path / "absent")))


def test_a_hugging_face_cache_snapshot_names_its_commit_and_other_directories_none(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert snapshot_commit(tmp_path / "snapshots" / commit) == commit
    assert snapshot_commit(tmp_path / "snapshots" / "main") is None
    assert snapshot_commit(tmp_path / commit) is None
