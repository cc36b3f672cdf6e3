"""The engine-independent parts of the CPU engines: the derived-file cache, numpy pooling, the agreement texts and
measure, the engine choice and the cores a process may use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedserve import hardware
from embedserve.engines import agreement, choose_engine
from embedserve.engines.arrays import ArrayRunner, pool, sparse_rows
from embedserve.engines.cache import ArtifactCache, content_key
from embedserve.settings import ModelSettings

pytestmark = pytest.mark.unit


def model_dir(root: Path, weights: bytes) -> Path:
    root.mkdir()
    (root / "config.json").write_text('{"model_type": "bert"}')
    (root / "model.safetensors").write_bytes(weights)
    return root


def test_content_key_follows_the_files_content_not_their_path(tmp_path):
    a = content_key(model_dir(tmp_path / "a", b"weights"), "embedding")
    b = content_key(model_dir(tmp_path / "b", b"weights"), "embedding")
    c = content_key(model_dir(tmp_path / "c", b"weightz"), "embedding")
    assert a == b
    assert a != c
    assert a != content_key(tmp_path / "a", "sparse")


def test_the_cache_builds_once_and_rebuilds_damaged_or_unverified_files(tmp_path):
    cache = ArtifactCache(tmp_path, "key")
    builds = []

    def build(target: Path) -> None:
        builds.append(target)
        target.write_bytes(b"graph bytes")

    path = cache.get("model.onnx", build, "graph")
    assert path.read_bytes() == b"graph bytes"
    assert cache.get("model.onnx", build, "graph") == path
    assert len(builds) == 1
    path.write_bytes(b"graph byt")  # a half-written copy
    assert not cache.valid("model.onnx")
    cache.get("model.onnx", build, "graph")
    assert len(builds) == 2
    assert path.read_bytes() == b"graph bytes"
    assert not list(tmp_path.joinpath("key").glob("*.tmp"))


def test_a_failed_build_leaves_nothing_that_could_be_served(tmp_path):
    cache = ArtifactCache(tmp_path, "key")

    def broken(target: Path) -> None:
        target.write_bytes(b"half")
        raise RuntimeError("exporter crashed")

    with pytest.raises(RuntimeError):
        cache.get("model.onnx", broken, "graph")
    assert not cache.valid("model.onnx")
    assert sorted(p.name for p in (tmp_path / "key").iterdir()) == [".lock"]


def test_numpy_pooling_takes_cls_the_masked_mean_or_the_last_real_token():
    hidden = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    lengths = np.array([3, 2])
    mask = np.arange(3) < lengths[:, None]
    np.testing.assert_array_equal(pool(hidden, "cls", mask, lengths), [[0, 1], [6, 7]])
    np.testing.assert_allclose(pool(hidden, "mean", mask, lengths), [[2, 3], [7, 8]])
    np.testing.assert_array_equal(pool(hidden, "last-token", mask, lengths), [[4, 5], [8, 9]])


def test_padding_feeds_only_the_graphs_inputs_with_zero_token_types_for_single_texts():
    runner = ArrayRunner(input_names=["input_ids", "attention_mask"], output="hidden", pooling="cls", pad_id=1,
                         max_len=8)  # fmt: skip
    padded = runner.prepare([[5, 6, 7], [8]])
    assert set(padded.feeds) == {"input_ids", "attention_mask"}
    np.testing.assert_array_equal(padded.feeds["input_ids"], [[5, 6, 7], [8, 1, 1]])
    np.testing.assert_array_equal(padded.feeds["attention_mask"], [[1, 1, 1], [1, 0, 0]])
    multiple = ArrayRunner(input_names=["input_ids", "attention_mask"], output="hidden", pooling="mean", pad_id=1,
                           max_len=8, length_multiple=4)  # fmt: skip
    padded = multiple.prepare([[5, 6, 7], [8]])
    np.testing.assert_array_equal(padded.feeds["input_ids"], [[5, 6, 7, 1], [8, 1, 1, 1]])
    np.testing.assert_array_equal(padded.lengths, [3, 1])
    assert multiple.prepare([[5] * 7, [6]]).feeds["input_ids"].shape == (2, 8)
    assert multiple.prepare([[5] * 3]).feeds["input_ids"].shape == (1, 3)  # alone, an input keeps its length
    with pytest.raises(ValueError, match="past_key_values"):
        ArrayRunner(input_names=["input_ids", "past_key_values"], output="hidden", pooling="cls", pad_id=0, max_len=8)


def test_sparse_rows_keep_the_non_zero_terms_in_index_order():
    (indices, values), (empty, _) = sparse_rows(np.array([[0, 2.5, 0, 1.0], [0, 0, 0, 0]], dtype=np.float32))
    np.testing.assert_array_equal(indices, [1, 3])
    np.testing.assert_array_equal(values, [2.5, 1.0])
    assert len(empty) == 0


def test_the_builtin_agreement_texts_are_many_varied_and_fixed():
    texts = agreement.builtin_texts()
    assert len(texts) >= 256
    assert texts == agreement.builtin_texts()
    words = sorted(len(text.split()) for text in texts)
    assert words[0] <= 4
    assert words[-1] >= 150  # longer than most models' 256 or 512 tokens: truncation is checked too
    assert any(not text.isascii() for text in texts)
    assert len(set(texts)) == len(texts)


def test_measure_compares_every_input_and_reports_mean_and_minimum():
    ids = [[1, 2], [3], [4, 5, 6]]

    def reference(batch):
        return [np.array([1.0, float(len(row))]) for row in batch]

    def candidate(batch):
        return [np.array([1.0, float(len(row))]) if len(row) != 1 else np.array([1.0, 0.0]) for row in batch]

    found = agreement.measure("int8", reference, candidate, ids, sparse=False)
    assert found.texts == 3
    assert found.min_cosine == pytest.approx(1 / np.sqrt(2))
    assert found.mean_cosine == pytest.approx((2 + 1 / np.sqrt(2)) / 3)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"engine": "torch"}, "torch"),
        ({"engine": "onnx"}, "onnx"),
        ({"quantize": "int8"}, "onnx"),
        ({"device": "cuda"}, "torch"),
        ({"device": "cpu"}, "openvino"),
    ],
)
def test_engine_auto_means_torch_on_cuda_and_the_fastest_installed_cpu_engine(settings, expected):
    assert choose_engine(ModelSettings(**settings)) == expected


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("max 100000", 2), ("100000 100000", 1), ("150000 100000", 2), ("800000 100000", 2)],
)
def test_available_cores_are_capped_by_the_cgroup_quota(tmp_path, monkeypatch, cpu_max, expected):
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    monkeypatch.setattr(hardware, "_CGROUP_V2", tmp_path / "cpu.max")
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda _: {0, 1})
    assert hardware.available_cores() == expected
