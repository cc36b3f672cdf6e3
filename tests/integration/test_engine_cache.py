"""Exported and optimized graphs are built once, keyed by the model files' content, rebuilt when damaged (never
served), and a graph the model ships is used instead of an export."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from embedserve import engines
from embedserve.engines.base import InferenceModel
from embedserve.hardware import native_bf16
from tests.conftest import model_settings

pytestmark = pytest.mark.integration

TEXTS = ["A man is eating food.", "hi", "The quick brown fox jumps over the lazy dog. " * 40]


def vectors(model: InferenceModel, reference_model) -> np.ndarray:
    ids = [reference_model.tokenizer(text, truncation=True, max_length=256)["input_ids"] for text in TEXTS]
    rows = np.stack(list(model.finish(model.launch(model.prepare(ids)))))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def load(path: Path, cache: Path, **settings):
    return engines.load(model_settings(path, engine="onnx", engine_cache_dir=str(cache), **settings))


def entries(cache: Path) -> dict[str, Path]:
    return {file.name: file for file in cache.rglob("*.onnx")}


def test_the_graph_is_exported_once_and_reused_by_content_not_path(minilm_path, reference_model, tmp_path, caplog):
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="embedserve.engines.onnx"):
        _, first = load(minilm_path, cache)
    assert "exported" in caplog.text
    built = entries(cache)
    assert set(built) == {"model.onnx", "model.optimized.onnx"}
    stamps = {name: file.stat().st_mtime_ns for name, file in built.items()}
    copy = tmp_path / "same-model-elsewhere"
    copy.mkdir()
    for item in minilm_path.iterdir():
        (copy / item.name).symlink_to(item)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="embedserve.engines.onnx"):
        _, again = load(copy, cache)
    assert "export" not in caplog.text
    assert {name: file.stat().st_mtime_ns for name, file in entries(cache).items()} == stamps
    expected = reference_model.encode(TEXTS)
    assert np.all(np.sum(vectors(first, reference_model) * expected, axis=1) >= 0.9999)
    assert np.all(np.sum(vectors(again, reference_model) * expected, axis=1) >= 0.9999)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "hash missing"])
@pytest.mark.parametrize("name", ["model.onnx", "model.optimized.onnx"])
def test_a_damaged_cached_graph_is_rebuilt_never_served(minilm_path, reference_model, tmp_path, caplog, damage, name):
    cache = tmp_path / "cache"
    load(minilm_path, cache)
    target = entries(cache)[name]
    size = target.stat().st_size
    if damage == "truncated":
        target.write_bytes(target.read_bytes()[: size // 2])
    elif damage == "garbage":
        target.write_bytes(b"\x00not a graph" * 1000)
    else:
        target.with_name(f"{name}.sha256").unlink()
    with caplog.at_level(logging.WARNING, logger="embedserve.engines.cache"):
        _, model = load(minilm_path, cache)
    assert "damaged or incomplete; rebuilding it" in caplog.text
    assert target.stat().st_size > size * 0.9
    assert np.all(np.sum(vectors(model, reference_model) * reference_model.encode(TEXTS), axis=1) >= 0.9999)


def test_a_graph_the_model_ships_is_used_instead_of_an_export(minilm_path, reference_model, tmp_path, caplog):
    load(minilm_path, tmp_path / "first")
    exported = entries(tmp_path / "first")  # an fp32 graph of the same model, as a hub repo ships it
    shipped = tmp_path / "shipping-model"
    (shipped / "onnx").mkdir(parents=True)
    for item in minilm_path.iterdir():
        (shipped / item.name).symlink_to(item)
    (shipped / "onnx" / "model.onnx").write_bytes(exported["model.onnx"].read_bytes())
    cache = tmp_path / "second"
    with caplog.at_level(logging.INFO, logger="embedserve.engines.onnx"):
        _, model = load(shipped, cache)
    assert "using the ONNX graph the model ships: onnx/model.onnx" in caplog.text
    assert "exporting" not in caplog.text
    assert set(entries(cache)) == {"model.optimized.onnx"}  # derived from the shipped graph; nothing exported
    assert np.all(np.sum(vectors(model, reference_model) * reference_model.encode(TEXTS), axis=1) >= 0.9999)


def test_a_damaged_shipped_graph_is_passed_over_and_the_model_exported(minilm_path, reference_model, tmp_path, caplog):
    shipped = tmp_path / "shipping-model"
    (shipped / "onnx").mkdir(parents=True)
    for item in minilm_path.iterdir():
        (shipped / item.name).symlink_to(item)
    (shipped / "onnx" / "model.onnx").write_bytes(b"\x08\x07 half an upload")
    with caplog.at_level(logging.INFO, logger="embedserve.engines.onnx"):
        _, model = load(shipped, tmp_path / "cache")
    assert "exporting the model instead" in caplog.text
    assert np.all(np.sum(vectors(model, reference_model) * reference_model.encode(TEXTS), axis=1) >= 0.9999)


def test_engine_auto_serves_with_torch_when_the_cpu_engine_cannot_start(minilm_path, reference_model, tmp_path, caplog):
    unwritable = tmp_path / "a-file-not-a-directory"
    unwritable.write_text("")
    settings = model_settings(minilm_path, engine="auto", dtype="auto", engine_cache_dir=str(unwritable))
    with caplog.at_level(logging.WARNING, logger="embedserve.engines"):
        info, model = engines.load(settings)
    assert info.engine == "torch"
    assert "cannot serve" in caplog.text
    assert "serving it with torch" in caplog.text
    assert info.dtype == ("bfloat16" if native_bf16() else "float32")  # measured, just not cached
    close = 0.999 if native_bf16() else 0.9999
    assert np.all(np.sum(vectors(model, reference_model) * reference_model.encode(TEXTS), axis=1) >= close)
    with pytest.raises(NotADirectoryError):  # named explicitly, the engine's failure is the answer
        engines.load(model_settings(minilm_path, engine="openvino", engine_cache_dir=str(unwritable)))
