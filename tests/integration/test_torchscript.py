"""The torch engine's TorchScript trace on a CPU: the same vectors as the eager model, which ``--no-torchscript``
keeps, and a model whose trace fails or differs keeps serving eagerly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import model_settings, run_server

pytestmark = pytest.mark.integration

torch = pytest.importorskip("torch")

TEXTS = ["hi", "a somewhat longer sentence about the weather today", "x y", "one " * 300, "the end"]


def embed(path: Path, **overrides: object) -> tuple[str, np.ndarray]:
    with run_server(model_settings(path, engine="torch", **overrides)) as server, server.client() as client:
        graph = client.get("/info").json()["engine"]["graph"]
        vectors = np.array(client.post("/embed", json={"inputs": TEXTS}).json())
    return graph, vectors


def test_no_torchscript_serves_eagerly_and_the_trace_returns_the_same_vectors(minilm_path, reference_model):
    traced_graph, traced = embed(minilm_path)
    eager_graph, eager = embed(minilm_path, torchscript=False)
    assert (traced_graph, eager_graph) == ("torchscript", "eager")
    np.testing.assert_allclose(traced, eager, atol=1e-6)
    expected = reference_model.encode(TEXTS, normalize_embeddings=True)
    assert float(np.min(np.sum(traced * expected, axis=1))) >= 0.9999


def runner_for(path: Path):
    """The torch engine's own runner for a model, loaded eagerly (the trace is what the tests below take)."""
    from embedserve import engines

    _, runner = engines.load(model_settings(path, engine="torch", torchscript=False))
    return runner


def test_a_model_whose_trace_fails_keeps_its_eager_forward_pass(minilm_path):
    from embedserve.engines.torch.trace import trace

    runner = runner_for(minilm_path)
    eager = runner.encode
    runner.output = "no_such_field"  # the call raises while it is traced
    reason = trace(runner)
    assert reason is not None
    assert reason.startswith("it cannot be traced")
    assert (runner.encode, runner.graph) == (eager, "eager")


def test_the_check_refuses_a_trace_that_differs_in_shape_value_or_nan():
    from embedserve.engines.torch.trace import TOLERANCE, _difference

    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    expected = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    assert _difference(expected, expected.clone(), mask) is None
    padded_only = expected.clone()
    padded_only[0, 2] += 100.0  # a padding position: not compared
    assert _difference(expected, padded_only, mask) is None
    off = expected.clone()
    off[1, 1, 0] += 10 * TOLERANCE * max(1.0, float(expected.abs().max()))
    assert "largest relative difference" in str(_difference(expected, off, mask))
    nan = expected.clone()
    nan[0, 0, 0] = float("nan")
    assert _difference(expected, nan, mask) is not None
    assert "shape" in str(_difference(expected, expected[:, :2], mask))


@pytest.mark.parametrize(("preset", "expected"), [(None, "10000"), ("500", "500")])
def test_torch_openmp_workers_spin_briefly_unless_the_user_chose(minilm_path, preset, expected):
    """In a fresh interpreter: the spin count is in the environment before the first model load imports torch (libgomp
    reads it then), and a user's own value is kept."""
    import os
    import subprocess
    import sys

    script = (
        "import os, sys\n"
        "from embedserve import engines\n"
        "from tests.conftest import model_settings\n"
        "assert 'torch' not in sys.modules\n"
        f"engines.load(model_settings(__import__('pathlib').Path({str(minilm_path)!r}), engine='torch'))\n"
        "print(os.environ['GOMP_SPINCOUNT'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    if preset is not None:
        env["GOMP_SPINCOUNT"] = preset
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parents[2])  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == expected
