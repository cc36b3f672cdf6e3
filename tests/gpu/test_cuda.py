"""The CUDA path: float16 by default, vectors close to the float32 CPU reference, padding-invariant.
Skipped where torch sees no GPU (CI never has one)."""

from __future__ import annotations

import numpy as np
import pytest

from embedserve.settings import CacheSettings
from tests.conftest import model_settings, run_server

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TEXTS = ["A man is eating food.", "hi", "The quick brown fox jumps over the lazy dog. " * 30, "A man is eating bread."]


def test_float16_on_cuda_matches_the_float32_reference(minilm_path, reference_model):
    off = CacheSettings(cache_bytes=0)  # each text alone must be computed again, not answered from the cache
    with run_server(model_settings(minilm_path, device="cuda"), cache=off) as server, server.client() as client:
        info = client.get("/info").json()
        batched = np.array(client.post("/embed", json={"inputs": TEXTS}).json())
        alone = np.array([client.post("/embed", json={"inputs": t}).json()[0] for t in TEXTS])
    assert info["model_dtype"] == "float16"
    assert info["model_device"].startswith("cuda")
    reference = reference_model.encode(TEXTS)
    assert np.all(np.sum(batched * reference, axis=1) >= 0.999)
    assert np.all(np.sum(batched * alone, axis=1) >= 0.9995)
