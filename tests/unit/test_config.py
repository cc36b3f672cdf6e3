"""--config files and repeated --model-id: several models, each starting from the model flags."""

from __future__ import annotations

import pytest

from embedserve.cli import parse_settings
from embedserve.settings import SettingsError

pytestmark = pytest.mark.unit


def write(tmp_path, text: str) -> str:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return str(path)


def test_entries_override_the_model_flags_which_serve_as_defaults(tmp_path):
    config = write(
        tmp_path,
        """
models:
  - name: dense
    model_id: /models/dense
    prompts: {query: "query: "}
  - name: rerank
    model_id: org/reranker
    revision: abc123
    kind: rerank
    device: cpu
    max_batch_tokens: 4096
    auto_truncate: false
""",
    )
    settings = parse_settings(["--config", config, "--device", "cuda", "--max-batch-requests", "8"], {})
    dense, rerank = settings.models
    assert (dense.served_name, dense.model_id, dense.device, dense.max_batch_requests) == (
        "dense", "/models/dense", "cuda", 8
    )  # fmt: skip
    assert dense.prompts == {"query": "query: "}
    assert (rerank.kind, rerank.revision, rerank.device, rerank.max_batch_tokens) == ("rerank", "abc123", "cpu", 4096)
    assert rerank.auto_truncate is False
    settings.check()


def test_the_config_can_come_from_the_environment_and_beats_a_model_id_there(tmp_path):
    config = write(tmp_path, "models:\n  - model_id: /models/a\n")
    settings = parse_settings([], {"EMBEDSERVE_CONFIG": config, "MODEL_ID": "/from/docker/env"})
    assert [m.model_id for m in settings.models] == ["/models/a"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: []\n", "at least one entry"),
        ("not_models: 1\n", "`models:` list"),
        ("models:\n  - name: x\n", "needs a model_id"),
        ("models:\n  - model_id: a\n    colour: red\n", "unknown key 'colour'"),
        ("models:\n  - model_id: a\n    max_batch_tokens: lots\n", "max_batch_tokens must be int"),
        ("models:\n  - model_id: a\n    max_batch_tokens: true\n", "max_batch_tokens must be int"),
        ("models:\n  - model_id: a\n    kind: vision\n", "kind must be one of"),
        ("models:\n  - model_id: a\n    prompts: [a, b]\n", "prompts must map names to strings"),
        ("models:\n  - just a string\n", "must be a mapping"),
        ("models: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_config_files_fail_naming_the_entry_and_key(tmp_path, text, message):
    with pytest.raises(SettingsError, match=message):
        parse_settings(["--config", write(tmp_path, text)], {})


def test_a_missing_config_file_names_the_flag(tmp_path):
    with pytest.raises(SettingsError, match="--config"):
        parse_settings(["--config", str(tmp_path / "absent.yaml")], {})


def test_config_and_model_id_flags_are_exclusive(tmp_path):
    config = write(tmp_path, "models:\n  - model_id: a\n")
    with pytest.raises(SettingsError, match="exclusive"):
        parse_settings(["--config", config, "--model-id", "b"], {})


def test_repeated_model_ids_pair_with_served_names_in_order():
    settings = parse_settings(["--model-id", "/m/a", "--model-id", "/m/b", "--served-model-name", "a",
                               "--served-model-name", "b", "--max-batch-tokens", "2048"], {})  # fmt: skip
    assert [(m.model_id, m.served_name, m.max_batch_tokens) for m in settings.models] == [
        ("/m/a", "a", 2048), ("/m/b", "b", 2048)
    ]  # fmt: skip


def test_repeated_model_ids_without_names_are_served_by_id_and_a_name_count_mismatch_fails():
    assert [m.served_name for m in parse_settings(["--model-id", "x", "--model-id", "y"], {}).models] == ["x", "y"]
    with pytest.raises(SettingsError, match="one --served-model-name per --model-id"):
        parse_settings(["--model-id", "x", "--model-id", "y", "--served-model-name", "only-one"], {})


def test_splade_pooling_and_a_non_sparse_kind_contradict(tmp_path):
    with pytest.raises(SettingsError, match="--pooling splade"):
        parse_settings(["--pooling", "splade", "--kind", "rerank"], {}).check()
